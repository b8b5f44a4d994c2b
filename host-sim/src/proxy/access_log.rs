//! File access logs with Envoy's text format: `%COMMAND%` operators, `%REQ(header)%` / `%RESP(header)%` with
//! `?alternative` and `:max_length`, `-` for missing values. The supported operators are listed in
//! `OPERATORS`; any other is a configuration error, never a silently empty field.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::headers::HeaderMap;

const OPERATORS: &[&str] = &[
    "RESPONSE_CODE",
    "RESPONSE_CODE_DETAILS",
    "RESPONSE_FLAGS",
    "UPSTREAM_CLUSTER",
    "UPSTREAM_HOST",
    "UPSTREAM_REMOTE_ADDRESS",
    "DOWNSTREAM_REMOTE_ADDRESS",
    "DOWNSTREAM_LOCAL_ADDRESS",
    "PROTOCOL",
    "START_TIME",
    "DURATION",
    "BYTES_RECEIVED",
    "BYTES_SENT",
    "REQUEST_DURATION",
];

/// Everything a log line may refer to.
pub(crate) struct Entry<'a> {
    pub request: &'a HeaderMap,
    pub response: Option<&'a HeaderMap>,
    pub code: u16,
    pub details: &'a str,
    pub cluster: Option<&'a str>,
    pub upstream: Option<SocketAddr>,
    pub downstream_remote: SocketAddr,
    pub downstream_local: SocketAddr,
    pub start: SystemTime,
    pub duration: Duration,
}

/// An access-log line waiting for its stream to end: Envoy logs when a stream completes, and only the end knows
/// the final response code details (a body the upstream broke off, a tunnel the client closed).
pub(crate) struct PendingEntry {
    pub shared: std::sync::Arc<super::Shared>,
    pub listener: usize,
    pub request: HeaderMap,
    pub response: HeaderMap,
    pub code: u16,
    pub cluster: Option<std::sync::Arc<str>>,
    pub upstream: Option<SocketAddr>,
    pub downstream_remote: SocketAddr,
    pub downstream_local: SocketAddr,
    pub start: SystemTime,
    pub started: std::time::Instant,
}

impl PendingEntry {
    /// Writes the line to every access log of the listener.
    pub fn finish(self, details: &str) {
        let entry = Entry {
            request: &self.request,
            response: Some(&self.response),
            code: self.code,
            details,
            cluster: self.cluster.as_deref(),
            upstream: self.upstream,
            downstream_remote: self.downstream_remote,
            downstream_local: self.downstream_local,
            start: self.start,
            duration: self.started.elapsed(),
        };
        for writer in &self.shared.listeners[self.listener].access_logs {
            writer.write(&entry);
        }
    }
}

/// The header names (`?` alternatives) and optional maximum length of `%REQ(...)%` / `%RESP(...)%`.
type HeaderOperator = (Vec<String>, Option<usize>);

enum Piece {
    Text(String),
    Operator(String),
    Request {
        names: Vec<String>,
        max: Option<usize>,
    },
    Response {
        names: Vec<String>,
        max: Option<usize>,
    },
}

fn parse(format: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut rest = format;
    while let Some(start) = rest.find('%') {
        if start > 0 {
            pieces.push(Piece::Text(rest[..start].to_string()));
        }
        let after = &rest[start + 1..];
        let end = after.find('%').ok_or_else(|| {
            format!(
                "unterminated command operator in access log format at {:?}",
                &rest[start..]
            )
        })?;
        let command = &after[..end];
        rest = &after[end + 1..];
        if command.is_empty() {
            pieces.push(Piece::Text("%".to_string()));
            continue;
        }
        let header = |prefix: &str| -> Option<Result<HeaderOperator, String>> {
            let inner = command.strip_prefix(prefix)?;
            let close = inner.find(')')?;
            let names = inner[..close]
                .split('?')
                .map(|n| n.to_ascii_lowercase())
                .collect();
            let max = match inner[close + 1..].strip_prefix(':') {
                Some(len) => match len.parse() {
                    Ok(len) => Some(len),
                    Err(_) => return Some(Err(format!("invalid length in %{command}%"))),
                },
                None if inner[close + 1..].is_empty() => None,
                None => return Some(Err(format!("invalid command operator %{command}%"))),
            };
            Some(Ok((names, max)))
        };
        if let Some(parsed) = header("REQ(") {
            let (names, max) = parsed?;
            pieces.push(Piece::Request { names, max });
        } else if let Some(parsed) = header("RESP(") {
            let (names, max) = parsed?;
            pieces.push(Piece::Response { names, max });
        } else if OPERATORS.contains(&command) {
            pieces.push(Piece::Operator(command.to_string()));
        } else {
            return Err(format!(
                "access log command operator %{command}% is not supported by host-sim (supported: REQ(), RESP(), {})",
                OPERATORS.join(", ")
            ));
        }
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest.to_string()));
    }
    Ok(pieces)
}

/// Checks a format at configuration time.
pub(crate) fn check_format(format: &str) -> Result<(), String> {
    parse(format).map(|_| ())
}

/// An open access log: the parsed format and the file, shared by all workers.
pub(crate) struct AccessLogWriter {
    pieces: Vec<Piece>,
    file: Arc<Mutex<File>>,
}

impl AccessLogWriter {
    pub fn open(path: &Path, format: &str) -> Result<Self, String> {
        let pieces = parse(format)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|error| format!("cannot open access log {}: {error}", path.display()))?;
        Ok(AccessLogWriter {
            pieces,
            file: Arc::new(Mutex::new(file)),
        })
    }

    pub fn write(&self, entry: &Entry<'_>) {
        let line = render(&self.pieces, entry);
        let mut file = self
            .file
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Err(error) = file.write_all(line.as_bytes()) {
            tracing::warn!(%error, "writing the access log failed");
        }
    }
}

fn render(pieces: &[Piece], entry: &Entry<'_>) -> String {
    let mut line = String::new();
    for piece in pieces {
        match piece {
            Piece::Text(text) => line.push_str(text),
            Piece::Request { names, max } => {
                push_header(&mut line, Some(entry.request), names, *max)
            }
            Piece::Response { names, max } => push_header(&mut line, entry.response, names, *max),
            Piece::Operator(op) => {
                let value = match op.as_str() {
                    "RESPONSE_CODE" => entry.code.to_string(),
                    "RESPONSE_CODE_DETAILS" => entry.details.to_string(),
                    "RESPONSE_FLAGS" => "-".to_string(),
                    "UPSTREAM_CLUSTER" => entry.cluster.unwrap_or("-").to_string(),
                    "UPSTREAM_HOST" | "UPSTREAM_REMOTE_ADDRESS" => entry
                        .upstream
                        .map_or_else(|| "-".to_string(), |a| a.to_string()),
                    "DOWNSTREAM_REMOTE_ADDRESS" => entry.downstream_remote.to_string(),
                    "DOWNSTREAM_LOCAL_ADDRESS" => entry.downstream_local.to_string(),
                    "PROTOCOL" => "HTTP/1.1".to_string(),
                    "START_TIME" => format_time(entry.start),
                    "DURATION" | "REQUEST_DURATION" => entry.duration.as_millis().to_string(),
                    // Byte counts are not tracked yet (README: known differences).
                    _ => "0".to_string(),
                };
                line.push_str(&value);
            }
        }
    }
    line
}

fn push_header(line: &mut String, map: Option<&HeaderMap>, names: &[String], max: Option<usize>) {
    let value = map.and_then(|map| {
        names.iter().find_map(|name| {
            let key = if name == "host" {
                ":authority"
            } else {
                name.as_str()
            };
            map.get(key)
        })
    });
    match value {
        Some(value) => {
            let text = String::from_utf8_lossy(value);
            let text: String = match max {
                Some(max) => text.chars().take(max).collect(),
                None => text.into_owned(),
            };
            line.push_str(&text);
        }
        None => line.push('-'),
    }
}

/// RFC 3339 UTC with milliseconds, as Envoy's default `%START_TIME%`.
fn format_time(time: SystemTime) -> String {
    let since = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (hour, minute, second) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{:03}Z",
        since.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_envoy() {
        let mut request = HeaderMap::new();
        request.add(":authority", "a.test");
        request.add("x-case-id", "case-1");
        let entry = Entry {
            request: &request,
            response: None,
            code: 403,
            details: "dfp_denied.host_not_allowed",
            cluster: None,
            upstream: None,
            downstream_remote: "127.0.0.1:5000".parse().expect("addr"),
            downstream_local: "127.0.0.1:10000".parse().expect("addr"),
            start: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            duration: Duration::from_millis(7),
        };
        let pieces = parse("%REQ(X-CASE-ID)% %RESPONSE_CODE% %UPSTREAM_CLUSTER% %RESPONSE_CODE_DETAILS% %REQ(HOST):1% %RESP(X)% 100%%\n")
            .expect("valid format");
        assert_eq!(
            render(&pieces, &entry),
            "case-1 403 - dfp_denied.host_not_allowed a - 100%\n"
        );
        assert_eq!(format_time(entry.start), "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn unknown_operators_are_rejected() {
        let error = check_format("%REQ(A)% %FILTER_STATE(x)%").expect_err("unsupported");
        assert!(
            error.contains("%FILTER_STATE(x)% is not supported"),
            "{error}"
        );
        assert!(check_format("%REQ(A").is_err());
    }
}
