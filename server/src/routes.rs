//! The Garden route table: method and path (and query) to a [`Route`] with its decoded
//! parameters. Path segments are percent-decoded (`%xx` only; a `+` stays a `+`); query strings
//! follow form rules (`+` is a space), as the Go client writes them.

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

/// Matches a request target (`/path?query`) and method to a route.
pub fn route(method: &str, target: &str) -> Result<Route, RouteError> {
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
}
