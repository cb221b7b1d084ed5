//! The Garden route table, both ways: a [`Route`] with its parameters is written as a method
//! and request target ([`Route::method`], [`Route::target`]) by the client and read back by the
//! server ([`Route::parse`]). Path segments are percent-encoded (`%xx` only; a `+` stays a
//! `+`); query strings follow form rules (`+` is a space), as the Go client writes them.

use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use std::collections::BTreeMap;
use thiserror::Error;

/// Which of the four current-limits routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    Bandwidth,
    Cpu,
    Disk,
    Memory,
}

impl LimitKind {
    /// The last path segment of its route.
    pub fn name(self) -> &'static str {
        match self {
            LimitKind::Bandwidth => "bandwidth",
            LimitKind::Cpu => "cpu",
            LimitKind::Disk => "disk",
            LimitKind::Memory => "memory",
        }
    }
}

/// Which output stream an attach asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    Stdout,
    Stderr,
}

impl StreamKind {
    pub fn name(self) -> &'static str {
        match self {
            StreamKind::Stdout => "stdout",
            StreamKind::Stderr => "stderr",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Ping,
    Capacity,
    List {
        filter: BTreeMap<String, String>,
    },
    Create,
    Info {
        handle: String,
    },
    BulkInfo {
        handles: Vec<String>,
    },
    BulkMetrics {
        handles: Vec<String>,
    },
    Destroy {
        handle: String,
    },
    Stop {
        handle: String,
    },
    StreamIn {
        handle: String,
        destination: String,
        user: String,
    },
    StreamOut {
        handle: String,
        source: String,
        user: String,
    },
    CurrentLimits {
        handle: String,
        kind: LimitKind,
    },
    NetIn {
        handle: String,
    },
    NetOut {
        handle: String,
    },
    BulkNetOut {
        handle: String,
    },
    /// Hijacked: the raw stdout or stderr of a process, by stream id.
    StreamAttach {
        handle: String,
        process_id: String,
        stream_id: String,
        kind: StreamKind,
    },
    /// Hijacked: start a process (status 201).
    Run {
        handle: String,
    },
    /// Hijacked: connect to a running process (status 200).
    Attach {
        handle: String,
        process_id: String,
    },
    SetGraceTime {
        handle: String,
    },
    Properties {
        handle: String,
    },
    Property {
        handle: String,
        key: String,
    },
    SetProperty {
        handle: String,
        key: String,
    },
    RemoveProperty {
        handle: String,
        key: String,
    },
    Metrics {
        handle: String,
    },
}

impl Route {
    /// The routes whose connection the server takes over after the response head.
    pub fn is_hijack(&self) -> bool {
        matches!(
            self,
            Route::Run { .. } | Route::Attach { .. } | Route::StreamAttach { .. }
        )
    }

    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Route::Ping => "Ping",
            Route::Capacity => "Capacity",
            Route::List { .. } => "List",
            Route::Create => "Create",
            Route::Info { .. } => "Info",
            Route::BulkInfo { .. } => "BulkInfo",
            Route::BulkMetrics { .. } => "BulkMetrics",
            Route::Destroy { .. } => "Destroy",
            Route::Stop { .. } => "Stop",
            Route::StreamIn { .. } => "StreamIn",
            Route::StreamOut { .. } => "StreamOut",
            Route::CurrentLimits { .. } => "CurrentLimits",
            Route::NetIn { .. } => "NetIn",
            Route::NetOut { .. } => "NetOut",
            Route::BulkNetOut { .. } => "BulkNetOut",
            Route::StreamAttach {
                kind: StreamKind::Stdout,
                ..
            } => "Stdout",
            Route::StreamAttach {
                kind: StreamKind::Stderr,
                ..
            } => "Stderr",
            Route::Run { .. } => "Run",
            Route::Attach { .. } => "Attach",
            Route::SetGraceTime { .. } => "SetGraceTime",
            Route::Properties { .. } => "Properties",
            Route::Property { .. } => "Property",
            Route::SetProperty { .. } => "SetProperty",
            Route::RemoveProperty { .. } => "RemoveProperty",
            Route::Metrics { .. } => "Metrics",
        }
    }

    /// The container the route names, if any (for log lines).
    pub fn handle(&self) -> Option<&str> {
        use Route::*;
        match self {
            Info { handle }
            | Destroy { handle }
            | Stop { handle }
            | StreamIn { handle, .. }
            | StreamOut { handle, .. }
            | CurrentLimits { handle, .. }
            | NetIn { handle }
            | NetOut { handle }
            | BulkNetOut { handle }
            | StreamAttach { handle, .. }
            | Run { handle }
            | Attach { handle, .. }
            | SetGraceTime { handle }
            | Properties { handle }
            | Property { handle, .. }
            | SetProperty { handle, .. }
            | RemoveProperty { handle, .. }
            | Metrics { handle } => Some(handle),
            Ping | Capacity | List { .. } | Create | BulkInfo { .. } | BulkMetrics { .. } => None,
        }
    }

    /// The HTTP method of the route.
    pub fn method(&self) -> &'static str {
        use Route::*;
        match self {
            Create | NetIn { .. } | NetOut { .. } | BulkNetOut { .. } | Run { .. } => "POST",
            Destroy { .. } | RemoveProperty { .. } => "DELETE",
            Stop { .. } | StreamIn { .. } | SetGraceTime { .. } | SetProperty { .. } => "PUT",
            Ping
            | Capacity
            | List { .. }
            | Info { .. }
            | BulkInfo { .. }
            | BulkMetrics { .. }
            | StreamOut { .. }
            | CurrentLimits { .. }
            | StreamAttach { .. }
            | Attach { .. }
            | Properties { .. }
            | Property { .. }
            | Metrics { .. } => "GET",
        }
    }

    /// The request target (path and query) that [`Route::parse`] reads back as this route.
    pub fn target(&self) -> String {
        use Route::*;
        let container = |handle: &str, rest: &str| format!("/containers/{}{rest}", segment(handle));
        match self {
            Ping => "/ping".into(),
            Capacity => "/capacity".into(),
            List { filter } if filter.is_empty() => "/containers".into(),
            List { filter } => format!(
                "/containers?{}",
                query(filter.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            ),
            Create => "/containers".into(),
            BulkInfo { handles } => {
                format!(
                    "/containers/bulk_info?{}",
                    query([("handles", handles.join(",").as_str())])
                )
            }
            BulkMetrics { handles } => format!(
                "/containers/bulk_metrics?{}",
                query([("handles", handles.join(",").as_str())])
            ),
            Destroy { handle } => container(handle, ""),
            Info { handle } => container(handle, "/info"),
            Stop { handle } => container(handle, "/stop"),
            StreamIn {
                handle,
                destination,
                user,
            } => container(
                handle,
                &format!(
                    "/files?{}",
                    query([("destination", destination.as_str()), ("user", user)])
                ),
            ),
            StreamOut {
                handle,
                source,
                user,
            } => container(
                handle,
                &format!(
                    "/files?{}",
                    query([("source", source.as_str()), ("user", user)])
                ),
            ),
            CurrentLimits { handle, kind } => {
                container(handle, &format!("/limits/{}", kind.name()))
            }
            NetIn { handle } => container(handle, "/net/in"),
            NetOut { handle } => container(handle, "/net/out"),
            BulkNetOut { handle } => container(handle, "/net/out/bulk"),
            Run { handle } => container(handle, "/processes"),
            Attach { handle, process_id } => {
                container(handle, &format!("/processes/{}", segment(process_id)))
            }
            StreamAttach {
                handle,
                process_id,
                stream_id,
                kind,
            } => container(
                handle,
                &format!(
                    "/processes/{}/attaches/{}/{}",
                    segment(process_id),
                    segment(stream_id),
                    kind.name()
                ),
            ),
            SetGraceTime { handle } => container(handle, "/grace_time"),
            Properties { handle } => container(handle, "/properties"),
            Property { handle, key }
            | SetProperty { handle, key }
            | RemoveProperty { handle, key } => {
                container(handle, &format!("/properties/{}", segment(key)))
            }
            Metrics { handle } => container(handle, "/metrics"),
        }
    }

    /// Matches a request's method and target (`/path?query`) to a route.
    pub fn parse(method: &str, target: &str) -> Result<Route, RouteError> {
        route(method, target)
    }
}

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

fn segment(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

fn query<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        serializer.append_pair(k, v);
    }
    serializer.finish()
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RouteError {
    #[error("no route for {method} {path}")]
    NotFound { method: String, path: String },
    #[error("method {method} is not allowed for {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error("malformed request path {path}: {reason}")]
    BadPath { path: String, reason: String },
}

impl RouteError {
    pub fn http_status(&self) -> u16 {
        match self {
            RouteError::NotFound { .. } => 404,
            RouteError::MethodNotAllowed { .. } => 405,
            RouteError::BadPath { .. } => 400,
        }
    }
}

/// Decodes `%xx` escapes in one path segment. `+` is left alone.
fn decode_segment(raw: &str, path: &str) -> Result<String, RouteError> {
    let bad = |reason: &str| RouteError::BadPath {
        path: path.to_string(),
        reason: reason.to_string(),
    };
    let bytes = raw.as_bytes();
    if let Some(i) = raw.find('%') {
        // Reject malformed escapes instead of passing them through silently.
        let mut at = i;
        while at < bytes.len() {
            if bytes[at] == b'%' {
                let ok = bytes.len() >= at + 3
                    && bytes[at + 1].is_ascii_hexdigit()
                    && bytes[at + 2].is_ascii_hexdigit();
                if !ok {
                    return Err(bad("malformed percent escape"));
                }
                at += 3;
            } else {
                at += 1;
            }
        }
    }
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| bad("not valid UTF-8 once decoded"))
}

/// Form-decodes a query string. For each key only the first value counts (as with Go's
/// `Query().Get`).
pub fn parse_query(query: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        map.entry(k.into_owned()).or_insert_with(|| v.into_owned());
    }
    map
}

/// Splits `handles=a,b,c`; an empty or missing value is an empty list.
fn handle_list(query: &BTreeMap<String, String>) -> Vec<String> {
    match query.get("handles") {
        Some(v) if !v.is_empty() => v.split(',').map(str::to_string).collect(),
        _ => Vec::new(),
    }
}

fn route(method: &str, target: &str) -> Result<Route, RouteError> {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, q),
        None => (target, ""),
    };
    // Fragments never reach a server from a conforming client; drop one if sent.
    let query = query.split('#').next().unwrap_or_default();
    let not_found = || RouteError::NotFound {
        method: method.to_string(),
        path: path.to_string(),
    };
    let wrong_method = || RouteError::MethodNotAllowed {
        method: method.to_string(),
        path: path.to_string(),
    };
    let Some(rest) = path.strip_prefix('/') else {
        return Err(not_found());
    };
    let raw: Vec<&str> = rest.split('/').collect();
    let mut seg = Vec::with_capacity(raw.len());
    for r in &raw {
        seg.push(decode_segment(r, path)?);
    }
    let s: Vec<&str> = seg.iter().map(String::as_str).collect();
    let q = || parse_query(query);
    let h = |i: usize| seg[i].clone();

    // Each arm: the route for a path shape, by method.
    macro_rules! by_method {
        ($($m:literal => $r:expr),+ $(,)?) => {
            match method {
                $($m => Ok($r),)+
                _ => Err(wrong_method()),
            }
        };
    }
    match s.as_slice() {
        ["ping"] => by_method!("GET" => Route::Ping),
        ["capacity"] => by_method!("GET" => Route::Capacity),
        ["containers"] => by_method!(
            "GET" => Route::List { filter: q() },
            "POST" => Route::Create,
        ),
        ["containers", "bulk_info"] => by_method!(
            "GET" => Route::BulkInfo { handles: handle_list(&q()) },
            "DELETE" => Route::Destroy { handle: h(1) },
        ),
        ["containers", "bulk_metrics"] => by_method!(
            "GET" => Route::BulkMetrics { handles: handle_list(&q()) },
            "DELETE" => Route::Destroy { handle: h(1) },
        ),
        ["containers", _] => by_method!("DELETE" => Route::Destroy { handle: h(1) }),
        ["containers", _, "info"] => by_method!("GET" => Route::Info { handle: h(1) }),
        ["containers", _, "stop"] => by_method!("PUT" => Route::Stop { handle: h(1) }),
        ["containers", _, "files"] => {
            let q = q();
            let get = |k: &str| q.get(k).cloned().unwrap_or_default();
            by_method!(
                "PUT" => Route::StreamIn { handle: h(1), destination: get("destination"), user: get("user") },
                "GET" => Route::StreamOut { handle: h(1), source: get("source"), user: get("user") },
            )
        }
        ["containers", _, "limits", kind] => {
            let kind = match *kind {
                "bandwidth" => LimitKind::Bandwidth,
                "cpu" => LimitKind::Cpu,
                "disk" => LimitKind::Disk,
                "memory" => LimitKind::Memory,
                _ => return Err(not_found()),
            };
            by_method!("GET" => Route::CurrentLimits { handle: h(1), kind })
        }
        ["containers", _, "net", "in"] => by_method!("POST" => Route::NetIn { handle: h(1) }),
        ["containers", _, "net", "out"] => by_method!("POST" => Route::NetOut { handle: h(1) }),
        ["containers", _, "net", "out", "bulk"] => {
            by_method!("POST" => Route::BulkNetOut { handle: h(1) })
        }
        ["containers", _, "processes"] => by_method!("POST" => Route::Run { handle: h(1) }),
        ["containers", _, "processes", _] => by_method!(
            "GET" => Route::Attach { handle: h(1), process_id: h(3) }
        ),
        ["containers", _, "processes", _, "attaches", _, stream] => {
            let kind = match *stream {
                "stdout" => StreamKind::Stdout,
                "stderr" => StreamKind::Stderr,
                _ => return Err(not_found()),
            };
            by_method!("GET" => Route::StreamAttach {
                handle: h(1),
                process_id: h(3),
                stream_id: h(5),
                kind,
            })
        }
        ["containers", _, "grace_time"] => {
            by_method!("PUT" => Route::SetGraceTime { handle: h(1) })
        }
        ["containers", _, "properties"] => {
            by_method!("GET" => Route::Properties { handle: h(1) })
        }
        ["containers", _, "properties", _] => by_method!(
            "GET" => Route::Property { handle: h(1), key: h(3) },
            "PUT" => Route::SetProperty { handle: h(1), key: h(3) },
            "DELETE" => Route::RemoveProperty { handle: h(1), key: h(3) },
        ),
        ["containers", _, "metrics"] => by_method!("GET" => Route::Metrics { handle: h(1) }),
        _ => Err(not_found()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_decode_parameters() {
        assert_eq!(route("GET", "/ping"), Ok(Route::Ping));
        assert_eq!(
            route("GET", "/containers?a+b=c%26d%3De&app=web&app=other"),
            Ok(Route::List {
                filter: [("a b", "c&d=e"), ("app", "web")]
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            })
        );
        assert_eq!(
            route("GET", "/containers/my%20handle+x/info"),
            Ok(Route::Info {
                handle: "my handle+x".into()
            })
        );
        assert_eq!(
            route("GET", "/containers/bulk_info?handles=h1%2Ch2"),
            Ok(Route::BulkInfo {
                handles: vec!["h1".into(), "h2".into()]
            })
        );
        assert_eq!(
            route("GET", "/containers/bulk_metrics"),
            Ok(Route::BulkMetrics { handles: vec![] })
        );
        assert_eq!(
            route(
                "PUT",
                "/containers/h/files?destination=%2Ftmp%2Fdest+dir&user=root"
            ),
            Ok(Route::StreamIn {
                handle: "h".into(),
                destination: "/tmp/dest dir".into(),
                user: "root".into()
            })
        );
        assert_eq!(
            route("GET", "/containers/h/processes/p/attaches/7/stderr"),
            Ok(Route::StreamAttach {
                handle: "h".into(),
                process_id: "p".into(),
                stream_id: "7".into(),
                kind: StreamKind::Stderr
            })
        );
        assert!(route("POST", "/containers/h/processes")
            .unwrap()
            .is_hijack());
    }

    #[test]
    fn unknown_routes_and_methods() {
        assert_eq!(route("GET", "/nope").unwrap_err().http_status(), 404);
        assert_eq!(route("POST", "/ping").unwrap_err().http_status(), 405);
        assert_eq!(
            route("GET", "/containers/h/properties/x/y%20z")
                .unwrap_err()
                .http_status(),
            404
        );
        assert_eq!(
            route("GET", "/containers/%zz/info")
                .unwrap_err()
                .http_status(),
            400
        );
        assert_eq!(
            route("GET", "/containers/%ff/info")
                .unwrap_err()
                .http_status(),
            400
        );
        assert_eq!(route("GET", "").unwrap_err().http_status(), 404);
    }

    mod round_trip {
        use super::*;
        use proptest::prelude::*;

        fn text() -> impl Strategy<Value = String> {
            // Any characters, with the ones that matter to paths and queries made likely.
            prop_oneof![any::<String>(), "[a-z0-9 /%+?#&=.,_-]{0,12}",]
        }

        /// Handles in a bulk list: Go joins them with commas, so none may hold one, and an
        /// empty name would vanish.
        fn listed_handles() -> impl Strategy<Value = Vec<String>> {
            prop::collection::vec("[^,]{1,10}", 0..4)
        }

        fn a_route() -> impl Strategy<Value = Route> {
            let limit = prop_oneof![
                Just(LimitKind::Bandwidth),
                Just(LimitKind::Cpu),
                Just(LimitKind::Disk),
                Just(LimitKind::Memory)
            ];
            let stream = prop_oneof![Just(StreamKind::Stdout), Just(StreamKind::Stderr)];
            prop_oneof![
                Just(Route::Ping),
                Just(Route::Capacity),
                Just(Route::Create),
                prop::collection::btree_map(text(), text(), 0..4)
                    .prop_map(|filter| Route::List { filter }),
                listed_handles().prop_map(|handles| Route::BulkInfo { handles }),
                listed_handles().prop_map(|handles| Route::BulkMetrics { handles }),
                text().prop_map(|handle| Route::Info { handle }),
                text().prop_map(|handle| Route::Destroy { handle }),
                text().prop_map(|handle| Route::Stop { handle }),
                (text(), text(), text()).prop_map(|(handle, destination, user)| {
                    Route::StreamIn {
                        handle,
                        destination,
                        user,
                    }
                }),
                (text(), text(), text()).prop_map(|(handle, source, user)| Route::StreamOut {
                    handle,
                    source,
                    user
                }),
                (text(), limit).prop_map(|(handle, kind)| Route::CurrentLimits { handle, kind }),
                text().prop_map(|handle| Route::NetIn { handle }),
                text().prop_map(|handle| Route::NetOut { handle }),
                text().prop_map(|handle| Route::BulkNetOut { handle }),
                (text(), text(), text(), stream).prop_map(
                    |(handle, process_id, stream_id, kind)| Route::StreamAttach {
                        handle,
                        process_id,
                        stream_id,
                        kind
                    }
                ),
                text().prop_map(|handle| Route::Run { handle }),
                (text(), text())
                    .prop_map(|(handle, process_id)| Route::Attach { handle, process_id }),
                text().prop_map(|handle| Route::SetGraceTime { handle }),
                text().prop_map(|handle| Route::Properties { handle }),
                (text(), text()).prop_map(|(handle, key)| Route::Property { handle, key }),
                (text(), text()).prop_map(|(handle, key)| Route::SetProperty { handle, key }),
                (text(), text()).prop_map(|(handle, key)| Route::RemoveProperty { handle, key }),
                text().prop_map(|handle| Route::Metrics { handle }),
            ]
        }

        proptest! {
            /// What the client writes, the server reads back as the same route.
            #[test]
            fn every_route_reads_back_as_written(route in a_route()) {
                let read = Route::parse(route.method(), &route.target());
                prop_assert_eq!(read, Ok(route));
            }
        }
    }
}
