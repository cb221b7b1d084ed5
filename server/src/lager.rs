//! `--log-format lager`: log lines as Cloud Foundry's lager writes them (gdn logs this way), one
//! JSON object a line, so that tools reading gdn's logs read Trellis's.
//!
//! gdn's own lines (lager's "pretty" sink, `--log-time-format rfc3339`):
//! `{"timestamp":"2026-01-02T03:04:05.123456789Z","level":"info","source":"trellis",
//! "message":"trellis.request.create","data":{...}}`; lager's original shape
//! (`unix-epoch`): `{"timestamp":"1767323045.123456789","source":"trellis",
//! "message":"…","log_level":1,"data":{...}}`. The message is the component, the names of the
//! enclosing spans and the event's text made into a lager action (`listening (tcp)` becomes
//! `listening-tcp`); the data are the fields of the spans and the event. Lager has no warning
//! level: warnings are `info`, with `"warning":true` in their data.

use clap::ValueEnum;
use serde_json::{Map, Value};
use std::fmt::Write as _;
use std::io::Write;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// lager's `source`, and the first part of each message.
const COMPONENT: &str = "trellis";

/// How lager lines carry their time (lager's `--time-format` choices in CF components).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TimeFormat {
    /// `"2026-01-02T03:04:05.123456789Z"` with `"level":"info"` (gdn's lines).
    Rfc3339,
    /// `"1767323045.123456789"` (seconds since 1970) with `"log_level":1`.
    UnixEpoch,
}

/// Writes each event as one lager line to `out`.
pub struct LagerLayer<W> {
    time_format: TimeFormat,
    out: Mutex<W>,
}

impl<W: Write> LagerLayer<W> {
    pub fn new(time_format: TimeFormat, out: W) -> Self {
        LagerLayer {
            time_format,
            out: Mutex::new(out),
        }
    }
}

/// A span's fields, kept for the events inside it.
struct SpanData(Map<String, Value>);

impl<S, W> Layer<S> for LagerLayer<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: Write + Send + 'static,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanData(fields.0));
        }
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: Context<'_, S>,
    ) {
        if let Some(span) = ctx.span(id) {
            let mut extensions = span.extensions_mut();
            if let Some(SpanData(data)) = extensions.get_mut::<SpanData>() {
                let mut fields = Fields::default();
                values.record(&mut fields);
                data.extend(fields.0);
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut data = Map::new();
        let mut message = String::from(COMPONENT);
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                message.push('.');
                message.push_str(span.name());
                if let Some(SpanData(fields)) = span.extensions().get::<SpanData>() {
                    data.extend(fields.clone());
                }
            }
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let text = match fields.0.remove("message") {
            Some(Value::String(text)) => text,
            Some(other) => other.to_string(),
            None => String::new(),
        };
        data.extend(fields.0);
        let action = action(&text);
        if !action.is_empty() {
            message.push('.');
            message.push_str(&action);
        }
        let level = *event.metadata().level();
        if level == Level::WARN {
            data.insert("warning".into(), Value::Bool(true));
        }
        let line = line(self.time_format, SystemTime::now(), level, &message, data);
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        // Nowhere to report a failed log write.
        let _ = out.write_all(line.as_bytes());
        let _ = out.flush();
    }
}

/// One lager line, newline included.
fn line(
    time_format: TimeFormat,
    now: SystemTime,
    level: Level,
    message: &str,
    data: Map<String, Value>,
) -> String {
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (name, number) = lager_level(level);
    let message = Value::from(message);
    let data = Value::Object(data);
    match time_format {
        TimeFormat::Rfc3339 => format!(
            "{{\"timestamp\":\"{}\",\"level\":\"{name}\",\"source\":\"{COMPONENT}\",\"message\":{message},\"data\":{data}}}\n",
            rfc3339_nano(since_epoch)
        ),
        TimeFormat::UnixEpoch => format!(
            "{{\"timestamp\":\"{}.{:09}\",\"source\":\"{COMPONENT}\",\"message\":{message},\"log_level\":{number},\"data\":{data}}}\n",
            since_epoch.as_secs(),
            since_epoch.subsec_nanos()
        ),
    }
}

/// lager's level name and number (debug 0, info 1, error 2, fatal 3).
fn lager_level(level: Level) -> (&'static str, u8) {
    match level {
        Level::TRACE | Level::DEBUG => ("debug", 0),
        Level::INFO | Level::WARN => ("info", 1),
        Level::ERROR => ("error", 2),
    }
}

/// A lager action: lower case words joined by `-` (`listening (tcp)` → `listening-tcp`).
fn action(text: &str) -> String {
    let mut action = String::new();
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        if !action.is_empty() {
            action.push('-');
        }
        action.extend(word.chars().flat_map(char::to_lowercase));
    }
    action
}

/// `2026-01-02T03:04:05.123456789Z`, as lager writes UTC times.
fn rfc3339_nano(since_epoch: std::time::Duration) -> String {
    let secs = since_epoch.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    let mut out = String::new();
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        since_epoch.subsec_nanos()
    );
    out
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Field values as JSON: numbers and booleans as themselves, the rest as text.
#[derive(Default)]
struct Fields(Map<String, Value>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().into(), Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0
            .insert(field.name().into(), Value::String(value.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn times_are_written_as_lager_writes_them() {
        let at = UNIX_EPOCH + Duration::new(1_767_323_045, 123_456_789);
        let line = line(
            TimeFormat::Rfc3339,
            at,
            Level::INFO,
            "trellis.x",
            Map::new(),
        );
        assert_eq!(
            line,
            "{\"timestamp\":\"2026-01-02T03:04:05.123456789Z\",\"level\":\"info\",\"source\":\"trellis\",\"message\":\"trellis.x\",\"data\":{}}\n"
        );
        let line = line_of(TimeFormat::UnixEpoch, at);
        assert_eq!(line["timestamp"], "1767323045.123456789");
        assert_eq!(line["log_level"], 2);
        assert_eq!(
            rfc3339_nano(Duration::ZERO),
            "1970-01-01T00:00:00.000000000Z"
        );
        // A leap day.
        assert_eq!(
            rfc3339_nano(Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000000000Z"
        );
    }

    fn line_of(format: TimeFormat, at: SystemTime) -> Value {
        serde_json::from_str(&line(format, at, Level::ERROR, "m", Map::new())).expect("json")
    }

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn events_carry_their_spans_names_and_fields() {
        let out = Shared::default();
        let subscriber =
            tracing_subscriber::registry().with(LagerLayer::new(TimeFormat::Rfc3339, out.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("request", id = 7u64, handle = "h1");
            let _enter = span.enter();
            tracing::warn!(status = 500u64, error = "boom", "Request failed (twice)");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).expect("utf-8");
        let line: Value = serde_json::from_str(text.trim_end()).expect("one json line");
        assert_eq!(line["source"], "trellis");
        assert_eq!(line["level"], "info");
        assert_eq!(line["message"], "trellis.request.request-failed-twice");
        assert_eq!(
            line["data"],
            serde_json::json!({"id": 7, "handle": "h1", "status": 500, "error": "boom", "warning": true})
        );
    }
}
