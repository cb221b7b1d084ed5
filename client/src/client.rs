//! `Client` and `Container`, after garden's Go interfaces of the same names.

use crate::error::Error;
use crate::process::{Process, ProcessIo};
use crate::transport::{empty_body, error_from, json_body, read_body, ReaderBody, Target};
use bytes::Bytes;
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::io::AsyncRead;
use trellis_core::api::{
    BandwidthLimits, Capacity, ContainerInfo, ContainerSpec, CpuLimits, DiskLimits, MemoryLimits,
    Metrics, NetInResponse, NetOutRule, ProcessSpec,
};
use trellis_proto::messages::{
    ContainerInfoEntry, ContainerMetricsEntry, HandleBody, HandlesBody, NetInRequest,
    PropertyValue, StopRequest,
};
use trellis_proto::{LimitKind, Route};

/// A connection-less handle on a Garden server: every call opens its own connection.
#[derive(Debug, Clone)]
pub struct Client {
    target: Target,
}

impl Client {
    pub fn new(target: Target) -> Client {
        Client { target }
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    async fn call_raw(&self, route: &Route, body: Option<Vec<u8>>) -> Result<Bytes, Error> {
        let (content_type, body) = match body {
            Some(bytes) => (Some("application/json"), json_body(bytes)),
            None => (None, empty_body()),
        };
        let response = self
            .target
            .request(route.method(), &route.target(), content_type, body)
            .await?;
        let (status, body) = read_body(response).await?;
        if (200..300).contains(&status) {
            Ok(body)
        } else {
            Err(error_from(status, &body))
        }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        route: Route,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<T, Error> {
        let body = body.map(|b| serde_json::to_vec(b).unwrap_or_default());
        let bytes = self.call_raw(&route, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| Error::BadResponse {
            status: 200,
            detail: format!("{e}"),
        })
    }

    pub async fn ping(&self) -> Result<(), Error> {
        self.call::<serde_json::Value>(Route::Ping, None::<&()>)
            .await
            .map(|_| ())
    }

    pub async fn capacity(&self) -> Result<Capacity, Error> {
        self.call(Route::Capacity, None::<&()>).await
    }

    pub async fn create(&self, spec: ContainerSpec) -> Result<Container, Error> {
        let created: HandleBody = self.call(Route::Create, Some(&spec)).await?;
        Ok(self.container(created.handle))
    }

    pub async fn destroy(&self, handle: &str) -> Result<(), Error> {
        let route = Route::Destroy {
            handle: handle.to_string(),
        };
        self.call::<serde_json::Value>(route, None::<&()>)
            .await
            .map(|_| ())
    }

    /// Containers whose properties match every pair of `filter`.
    pub async fn containers(
        &self,
        filter: &BTreeMap<String, String>,
    ) -> Result<Vec<Container>, Error> {
        let route = Route::List {
            filter: filter.clone(),
        };
        let body: HandlesBody = self.call(route, None::<&()>).await?;
        Ok(body
            .handles
            .into_iter()
            .map(|h| self.container(h))
            .collect())
    }

    /// Finds a container by handle (through List, as the Go client does).
    pub async fn lookup(&self, handle: &str) -> Result<Container, Error> {
        let all = self.containers(&BTreeMap::new()).await?;
        all.into_iter()
            .find(|c| c.handle == handle)
            .ok_or_else(|| Error::ContainerNotFound {
                handle: handle.to_string(),
            })
    }

    pub async fn bulk_info(
        &self,
        handles: &[&str],
    ) -> Result<BTreeMap<String, ContainerInfoEntry>, Error> {
        let handles = handles.iter().map(|h| h.to_string()).collect();
        self.call(Route::BulkInfo { handles }, None::<&()>).await
    }

    pub async fn bulk_metrics(
        &self,
        handles: &[&str],
    ) -> Result<BTreeMap<String, ContainerMetricsEntry>, Error> {
        let handles = handles.iter().map(|h| h.to_string()).collect();
        self.call(Route::BulkMetrics { handles }, None::<&()>).await
    }

    /// A `Container` for a handle, without checking that it exists (routes report that).
    pub fn container(&self, handle: impl Into<String>) -> Container {
        Container {
            client: self.clone(),
            handle: handle.into(),
        }
    }
}

/// What to stream into a container: a tar stream unpacked at `path` as `user`.
pub struct StreamInSpec {
    pub path: String,
    pub user: String,
    pub tar: Box<dyn AsyncRead + Send + Unpin>,
}

/// What to stream out: a tar of `path` (its contents when it ends in `/`), read as `user`.
#[derive(Debug, Clone, Default)]
pub struct StreamOutSpec {
    pub path: String,
    pub user: String,
}

#[derive(Debug, Clone)]
pub struct Container {
    client: Client,
    handle: String,
}

impl Container {
    pub fn handle(&self) -> &str {
        &self.handle
    }

    async fn done(
        &self,
        route: Route,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<(), Error> {
        self.client
            .call::<serde_json::Value>(route, body)
            .await
            .map(|_| ())
    }

    async fn current_limits<T: DeserializeOwned>(&self, kind: LimitKind) -> Result<T, Error> {
        let route = Route::CurrentLimits {
            handle: self.handle.clone(),
            kind,
        };
        self.client.call(route, None::<&()>).await
    }

    pub async fn stop(&self, kill: bool) -> Result<(), Error> {
        let route = Route::Stop {
            handle: self.handle.clone(),
        };
        self.done(route, Some(&StopRequest { kill })).await
    }

    pub async fn info(&self) -> Result<ContainerInfo, Error> {
        let route = Route::Info {
            handle: self.handle.clone(),
        };
        self.client.call(route, None::<&()>).await
    }

    pub async fn stream_in(&self, spec: StreamInSpec) -> Result<(), Error> {
        let route = Route::StreamIn {
            handle: self.handle.clone(),
            destination: spec.path,
            user: spec.user,
        };
        let body = ReaderBody::new(spec.tar).boxed_unsync();
        let response = self
            .client
            .target
            .request(
                route.method(),
                &route.target(),
                Some("application/x-tar"),
                body,
            )
            .await?;
        let (status, body) = read_body(response).await?;
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(error_from(status, &body))
        }
    }

    /// The tar stream of `spec.path`, read as it arrives.
    pub async fn stream_out(
        &self,
        spec: StreamOutSpec,
    ) -> Result<impl AsyncRead + Send + Unpin, Error> {
        let route = Route::StreamOut {
            handle: self.handle.clone(),
            source: spec.path,
            user: spec.user,
        };
        let response = self
            .client
            .target
            .request(route.method(), &route.target(), None, empty_body())
            .await?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            let (status, body) = read_body(response).await?;
            return Err(error_from(status, &body));
        }
        Ok(crate::process::BodyReader::new(response.into_body()))
    }

    pub async fn current_bandwidth_limits(&self) -> Result<BandwidthLimits, Error> {
        self.current_limits(LimitKind::Bandwidth).await
    }

    pub async fn current_cpu_limits(&self) -> Result<CpuLimits, Error> {
        self.current_limits(LimitKind::Cpu).await
    }

    pub async fn current_disk_limits(&self) -> Result<DiskLimits, Error> {
        self.current_limits(LimitKind::Disk).await
    }

    pub async fn current_memory_limits(&self) -> Result<MemoryLimits, Error> {
        self.current_limits(LimitKind::Memory).await
    }

    /// Maps `host_port` (0: one from the pool) to `container_port` (0: the same number).
    pub async fn net_in(&self, host_port: u32, container_port: u32) -> Result<(u32, u32), Error> {
        let request = NetInRequest {
            handle: self.handle.clone(),
            host_port,
            container_port,
        };
        let route = Route::NetIn {
            handle: self.handle.clone(),
        };
        let response: NetInResponse = self.client.call(route, Some(&request)).await?;
        Ok((response.host_port, response.container_port))
    }

    pub async fn net_out(&self, rule: &NetOutRule) -> Result<(), Error> {
        let route = Route::NetOut {
            handle: self.handle.clone(),
        };
        self.done(route, Some(rule)).await
    }

    pub async fn bulk_net_out(&self, rules: &[NetOutRule]) -> Result<(), Error> {
        let route = Route::BulkNetOut {
            handle: self.handle.clone(),
        };
        self.done(route, Some(rules)).await
    }

    pub async fn run(&self, spec: ProcessSpec, io: ProcessIo) -> Result<Process, Error> {
        let body = serde_json::to_vec(&spec).unwrap_or_default();
        let route = Route::Run {
            handle: self.handle.clone(),
        };
        let hijacked = self
            .client
            .target
            .hijack(route.method(), &route.target(), Some(body))
            .await?;
        Process::start(
            self.client.target.clone(),
            self.handle.clone(),
            hijacked,
            io,
        )
        .await
    }

    pub async fn attach(&self, process_id: &str, io: ProcessIo) -> Result<Process, Error> {
        let route = Route::Attach {
            handle: self.handle.clone(),
            process_id: process_id.to_string(),
        };
        let hijacked = self
            .client
            .target
            .hijack(route.method(), &route.target(), None)
            .await?;
        Process::start(
            self.client.target.clone(),
            self.handle.clone(),
            hijacked,
            io,
        )
        .await
    }

    pub async fn metrics(&self) -> Result<Metrics, Error> {
        let route = Route::Metrics {
            handle: self.handle.clone(),
        };
        self.client.call(route, None::<&()>).await
    }

    pub async fn set_grace_time(&self, grace: Duration) -> Result<(), Error> {
        let nanos = i64::try_from(grace.as_nanos()).unwrap_or(i64::MAX);
        let route = Route::SetGraceTime {
            handle: self.handle.clone(),
        };
        self.done(route, Some(&nanos)).await
    }

    pub async fn properties(&self) -> Result<BTreeMap<String, String>, Error> {
        let route = Route::Properties {
            handle: self.handle.clone(),
        };
        self.client.call(route, None::<&()>).await
    }

    pub async fn property(&self, key: &str) -> Result<String, Error> {
        let route = Route::Property {
            handle: self.handle.clone(),
            key: key.to_string(),
        };
        let value: PropertyValue = self.client.call(route, None::<&()>).await?;
        Ok(value.value)
    }

    pub async fn set_property(&self, key: &str, value: &str) -> Result<(), Error> {
        let body = PropertyValue {
            value: value.to_string(),
        };
        let route = Route::SetProperty {
            handle: self.handle.clone(),
            key: key.to_string(),
        };
        self.done(route, Some(&body)).await
    }

    pub async fn remove_property(&self, key: &str) -> Result<(), Error> {
        let route = Route::RemoveProperty {
            handle: self.handle.clone(),
            key: key.to_string(),
        };
        self.done(route, None::<&()>).await
    }
}
