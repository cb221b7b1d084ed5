//! `Client` and `Container`, after garden's Go interfaces of the same names.

use crate::error::Error;
use crate::process::{Process, ProcessIo};
use crate::transport::{empty_body, error_from, json_body, read_body, ReaderBody, Target};
use bytes::Bytes;
use http_body_util::BodyExt;
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::io::AsyncRead;
use trellis_core::api::{
    BandwidthLimits, Capacity, ContainerInfo, ContainerInfoEntry, ContainerMetricsEntry,
    ContainerSpec, CpuLimits, DiskLimits, HandleBody, HandlesBody, MemoryLimits, Metrics,
    NetInRequest, NetInResponse, NetOutRule, ProcessSpec, PropertyValue, StopRequest,
};

/// Characters escaped in a path segment: everything but unreserved and a few safe marks. A `/`
/// is escaped too, so a handle or key can never add path segments.
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'+')
    .add(b'\\')
    .add(b'^')
    .add(b'|')
    .add(b'[')
    .add(b']');

pub(crate) fn segment(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

fn query(pairs: &[(&str, &str)]) -> String {
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        serializer.append_pair(k, v);
    }
    serializer.finish()
}

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

    async fn call_raw(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, Error> {
        let (content_type, body) = match body {
            Some(bytes) => (Some("application/json"), json_body(bytes)),
            None => (None, empty_body()),
        };
        let response = self
            .target
            .request(method, path, content_type, body)
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
        method: &str,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<T, Error> {
        let body = body.map(|b| serde_json::to_vec(b).unwrap_or_default());
        let bytes = self.call_raw(method, path, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| Error::BadResponse {
            status: 200,
            detail: format!("{e}"),
        })
    }

    pub async fn ping(&self) -> Result<(), Error> {
        self.call::<serde_json::Value>("GET", "/ping", None::<&()>)
            .await
            .map(|_| ())
    }

    pub async fn capacity(&self) -> Result<Capacity, Error> {
        self.call("GET", "/capacity", None::<&()>).await
    }

    pub async fn create(&self, spec: ContainerSpec) -> Result<Container, Error> {
        let created: HandleBody = self.call("POST", "/containers", Some(&spec)).await?;
        Ok(self.container(created.handle))
    }

    pub async fn destroy(&self, handle: &str) -> Result<(), Error> {
        self.call::<serde_json::Value>(
            "DELETE",
            &format!("/containers/{}", segment(handle)),
            None::<&()>,
        )
        .await
        .map(|_| ())
    }

    /// Containers whose properties match every pair of `filter`.
    pub async fn containers(
        &self,
        filter: &BTreeMap<String, String>,
    ) -> Result<Vec<Container>, Error> {
        let mut path = "/containers".to_string();
        if !filter.is_empty() {
            let pairs: Vec<(&str, &str)> = filter
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            path.push('?');
            path.push_str(&query(&pairs));
        }
        let body: HandlesBody = self.call("GET", &path, None::<&()>).await?;
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
        let path = format!(
            "/containers/bulk_info?{}",
            query(&[("handles", &handles.join(","))])
        );
        self.call("GET", &path, None::<&()>).await
    }

    pub async fn bulk_metrics(
        &self,
        handles: &[&str],
    ) -> Result<BTreeMap<String, ContainerMetricsEntry>, Error> {
        let path = format!(
            "/containers/bulk_metrics?{}",
            query(&[("handles", &handles.join(","))])
        );
        self.call("GET", &path, None::<&()>).await
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

    fn path(&self, rest: &str) -> String {
        format!("/containers/{}{rest}", segment(&self.handle))
    }

    async fn done(
        &self,
        method: &str,
        rest: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<(), Error> {
        self.client
            .call::<serde_json::Value>(method, &self.path(rest), body)
            .await
            .map(|_| ())
    }

    pub async fn stop(&self, kill: bool) -> Result<(), Error> {
        self.done("PUT", "/stop", Some(&StopRequest { kill })).await
    }

    pub async fn info(&self) -> Result<ContainerInfo, Error> {
        self.client
            .call("GET", &self.path("/info"), None::<&()>)
            .await
    }

    pub async fn stream_in(&self, spec: StreamInSpec) -> Result<(), Error> {
        let path = self.path(&format!(
            "/files?{}",
            query(&[("destination", &spec.path), ("user", &spec.user)])
        ));
        let body = ReaderBody::new(spec.tar).boxed_unsync();
        let response = self
            .client
            .target
            .request("PUT", &path, Some("application/x-tar"), body)
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
        let path = self.path(&format!(
            "/files?{}",
            query(&[("source", &spec.path), ("user", &spec.user)])
        ));
        let response = self
            .client
            .target
            .request("GET", &path, None, empty_body())
            .await?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            let (status, body) = read_body(response).await?;
            return Err(error_from(status, &body));
        }
        Ok(crate::process::BodyReader::new(response.into_body()))
    }

    pub async fn current_bandwidth_limits(&self) -> Result<BandwidthLimits, Error> {
        self.client
            .call("GET", &self.path("/limits/bandwidth"), None::<&()>)
            .await
    }

    pub async fn current_cpu_limits(&self) -> Result<CpuLimits, Error> {
        self.client
            .call("GET", &self.path("/limits/cpu"), None::<&()>)
            .await
    }

    pub async fn current_disk_limits(&self) -> Result<DiskLimits, Error> {
        self.client
            .call("GET", &self.path("/limits/disk"), None::<&()>)
            .await
    }

    pub async fn current_memory_limits(&self) -> Result<MemoryLimits, Error> {
        self.client
            .call("GET", &self.path("/limits/memory"), None::<&()>)
            .await
    }

    /// Maps `host_port` (0: one from the pool) to `container_port` (0: the same number).
    pub async fn net_in(&self, host_port: u32, container_port: u32) -> Result<(u32, u32), Error> {
        let request = NetInRequest {
            handle: self.handle.clone(),
            host_port,
            container_port,
        };
        let response: NetInResponse = self
            .client
            .call("POST", &self.path("/net/in"), Some(&request))
            .await?;
        Ok((response.host_port, response.container_port))
    }

    pub async fn net_out(&self, rule: &NetOutRule) -> Result<(), Error> {
        self.done("POST", "/net/out", Some(rule)).await
    }

    pub async fn bulk_net_out(&self, rules: &[NetOutRule]) -> Result<(), Error> {
        self.done("POST", "/net/out/bulk", Some(rules)).await
    }

    pub async fn run(&self, spec: ProcessSpec, io: ProcessIo) -> Result<Process, Error> {
        let body = serde_json::to_vec(&spec).unwrap_or_default();
        let hijacked = self
            .client
            .target
            .hijack("POST", &self.path("/processes"), Some(body))
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
        let path = self.path(&format!("/processes/{}", segment(process_id)));
        let hijacked = self.client.target.hijack("GET", &path, None).await?;
        Process::start(
            self.client.target.clone(),
            self.handle.clone(),
            hijacked,
            io,
        )
        .await
    }

    pub async fn metrics(&self) -> Result<Metrics, Error> {
        self.client
            .call("GET", &self.path("/metrics"), None::<&()>)
            .await
    }

    pub async fn set_grace_time(&self, grace: Duration) -> Result<(), Error> {
        let nanos = i64::try_from(grace.as_nanos()).unwrap_or(i64::MAX);
        self.done("PUT", "/grace_time", Some(&nanos)).await
    }

    pub async fn properties(&self) -> Result<BTreeMap<String, String>, Error> {
        self.client
            .call("GET", &self.path("/properties"), None::<&()>)
            .await
    }

    pub async fn property(&self, key: &str) -> Result<String, Error> {
        let value: PropertyValue = self
            .client
            .call(
                "GET",
                &self.path(&format!("/properties/{}", segment(key))),
                None::<&()>,
            )
            .await?;
        Ok(value.value)
    }

    pub async fn set_property(&self, key: &str, value: &str) -> Result<(), Error> {
        let body = PropertyValue {
            value: value.to_string(),
        };
        self.done("PUT", &format!("/properties/{}", segment(key)), Some(&body))
            .await
    }

    pub async fn remove_property(&self, key: &str) -> Result<(), Error> {
        self.done(
            "DELETE",
            &format!("/properties/{}", segment(key)),
            None::<&()>,
        )
        .await
    }
}
