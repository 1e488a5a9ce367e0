//! HTTP/1.1 request heads and the answers corelay gives before a WebSocket upgrade.
//!
//! Sans-IO: [`parse_request`] is fed the bytes read so far and tells "need more" apart from
//! "bad peer", in the manner of mini-redis' `check`/`parse`.

use std::fmt::Write as _;

/// Most headers a request may carry; more is treated as malformed (431-style abuse).
const MAX_HEADERS: usize = 32;

/// A parsed request head.
#[derive(Debug, Clone)]
pub struct Request {
    /// Method, e.g. `GET`.
    pub method: String,
    /// Path without the query string, e.g. `/ws`.
    pub path: String,
    /// Query string without the `?`, possibly empty.
    pub query: String,
    /// Headers with lower-cased names, in order.
    pub headers: Vec<(String, String)>,
}

/// Why a request cannot be served. Each maps to one HTTP status.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HttpError {
    /// Not HTTP/1.1, bad syntax, too many headers: answer 400 and close.
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// The head is longer than the configured limit: answer 400 and close.
    #[error("request head too large")]
    TooLarge,
    /// A WebSocket upgrade was expected but the headers are wrong: answer 400 and close.
    #[error("bad websocket upgrade: {0}")]
    BadUpgrade(&'static str),
    /// No route for this path: answer 404 and close.
    #[error("not found")]
    NotFound,
}

impl HttpError {
    /// The status line answered for this error.
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            HttpError::NotFound => (404, "Not Found"),
            _ => (400, "Bad Request"),
        }
    }
}

/// Parses a request head from `buf`. `Ok(None)`: need more bytes. On success, also returns
/// how many bytes the head took (a body or WebSocket frames may follow).
pub fn parse_request(buf: &[u8], max_head: usize) -> Result<Option<(Request, usize)>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) => {
            if buf.len() > max_head {
                Err(HttpError::TooLarge)
            } else {
                Ok(None)
            }
        }
        Ok(httparse::Status::Complete(len)) => {
            if len > max_head {
                return Err(HttpError::TooLarge);
            }
            if req.version != Some(1) {
                return Err(HttpError::Malformed("only HTTP/1.1 is served"));
            }
            let target = req.path.ok_or(HttpError::Malformed("no target"))?;
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            let headers = req
                .headers
                .iter()
                .map(|h| {
                    let value = std::str::from_utf8(h.value)
                        .map_err(|_| HttpError::Malformed("header value is not UTF-8"))?;
                    Ok((h.name.to_ascii_lowercase(), value.trim().to_owned()))
                })
                .collect::<Result<Vec<_>, HttpError>>()?;
            Ok(Some((
                Request {
                    method: req.method.unwrap_or_default().to_owned(),
                    path: path.to_owned(),
                    query: query.to_owned(),
                    headers,
                },
                len,
            )))
        }
        Err(httparse::Error::TooManyHeaders) => Err(HttpError::Malformed("too many headers")),
        Err(_) => Err(HttpError::Malformed("bad request syntax")),
    }
}

impl Request {
    /// First value of a header, by lower-case name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// Whether the request asks for a WebSocket upgrade at all.
    pub fn wants_upgrade(&self) -> bool {
        self.header_has_token("upgrade", "websocket")
    }

    /// Checks an RFC 6455 upgrade request and returns its `Sec-WebSocket-Key`.
    pub fn websocket_key(&self) -> Result<&str, HttpError> {
        if self.method != "GET" {
            return Err(HttpError::BadUpgrade("method must be GET"));
        }
        if !self.wants_upgrade() {
            return Err(HttpError::BadUpgrade("missing Upgrade: websocket"));
        }
        if !self.header_has_token("connection", "upgrade") {
            return Err(HttpError::BadUpgrade("missing Connection: Upgrade"));
        }
        if self.header("sec-websocket-version") != Some("13") {
            return Err(HttpError::BadUpgrade("Sec-WebSocket-Version must be 13"));
        }
        match self.header("sec-websocket-key") {
            Some(key) if !key.is_empty() => Ok(key),
            _ => Err(HttpError::BadUpgrade("missing Sec-WebSocket-Key")),
        }
    }

    /// The declared body length, if any.
    pub fn content_length(&self) -> Result<usize, HttpError> {
        match self.header("content-length") {
            None => Ok(0),
            Some(v) => v
                .parse()
                .map_err(|_| HttpError::Malformed("bad Content-Length")),
        }
    }
}

/// The `101 Switching Protocols` answer to a valid upgrade.
pub fn upgrade_response(key: &str) -> Vec<u8> {
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    )
    .into_bytes()
}

/// A complete response with a body; `extra` lines are `Name: value` pairs.
pub fn response(
    status: u16,
    reason: &str,
    content_type: &str,
    extra: &[(&str, &str)],
    body: &[u8],
    keep_alive: bool,
) -> Vec<u8> {
    let mut head = format!("HTTP/1.1 {status} {reason}\r\n");
    // Writing into a String cannot fail.
    let _ = write!(
        head,
        "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in extra {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    head.push_str(if keep_alive {
        "Connection: keep-alive\r\n\r\n"
    } else {
        "Connection: close\r\n\r\n"
    });
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

/// The answer to an [`HttpError`], after which the connection closes.
pub fn error_response(err: &HttpError) -> Vec<u8> {
    let (status, reason) = err.status();
    response(
        status,
        reason,
        "text/plain",
        &[],
        format!("{err}\n").as_bytes(),
        false,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &[u8] = b"GET /ws?x=1 HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

    #[test]
    fn parses_an_upgrade_and_answers_with_the_rfc_accept_key() {
        let (req, len) = parse_request(UPGRADE, 8192).unwrap().unwrap();
        assert_eq!(len, UPGRADE.len());
        assert_eq!(req.path, "/ws");
        assert_eq!(req.query, "x=1");
        let key = req.websocket_key().unwrap();
        let resp = String::from_utf8(upgrade_response(key)).unwrap();
        // The example key and accept value of RFC 6455 section 1.3.
        assert!(resp.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
    }

    #[test]
    fn partial_heads_ask_for_more_and_oversized_ones_fail() {
        assert!(parse_request(&UPGRADE[..20], 8192).unwrap().is_none());
        assert_eq!(
            parse_request(&UPGRADE[..20], 10).unwrap_err(),
            HttpError::TooLarge
        );
    }

    #[test]
    fn malformed_requests_are_errors() {
        assert!(parse_request(b"\x00\x01garbage\r\n\r\n", 8192).is_err());
        assert!(parse_request(b"GET / HTTP/1.0\r\n\r\n", 8192).is_err());
        let (req, _) = parse_request(b"GET /ws HTTP/1.1\r\nHost: a\r\n\r\n", 8192)
            .unwrap()
            .unwrap();
        assert!(matches!(req.websocket_key(), Err(HttpError::BadUpgrade(_))));
    }

    #[test]
    fn responses_carry_length_and_status() {
        let r = String::from_utf8(error_response(&HttpError::NotFound)).unwrap();
        assert!(r.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(r.contains("Content-Length: 10\r\n"));
    }

    #[test]
    fn random_bytes_never_panic_the_parser() {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        for i in 0..20_000 {
            let mut bytes = UPGRADE.to_vec();
            for _ in 0..(i % 8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let at = (x as usize) % bytes.len();
                bytes[at] = (x >> 32) as u8;
            }
            bytes.truncate((x >> 40) as usize % (bytes.len() + 1));
            if let Ok(Some((req, len))) = parse_request(&bytes, 8192) {
                assert!(len <= bytes.len());
                let _ = req.websocket_key();
            }
        }
    }
}
