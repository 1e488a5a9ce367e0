//! HTTP/1.x request heads, the answers corelay gives before a WebSocket upgrade, and the
//! CORS/Origin policy of `cors_origins`.
//!
//! Sans-IO: [`parse_request`] is fed the bytes read so far and tells "need more" apart from
//! "bad peer", in the manner of mini-redis' `check`/`parse`.
//!
//! Requests are served over HTTP/1.1 and HTTP/1.0 (nginx talks 1.0 to its upstreams unless
//! told otherwise); only a WebSocket upgrade needs 1.1. corelay reads no chunked bodies, so
//! a request with `Transfer-Encoding`, or whose length is ambiguous (several
//! `Content-Length`s, a list, anything but digits), is refused: a proxy in front could
//! read its body differently and smuggle a second request past it.

use std::borrow::Cow;
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
    /// The minor version of HTTP/1.x: 0 or 1.
    pub minor_version: u8,
}

/// Why a request cannot be served. Each maps to one HTTP status.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HttpError {
    /// Not HTTP/1.x, bad syntax, too many headers, an ambiguous body length: answer 400
    /// and close.
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
    /// A WebSocket upgrade from a browser origin outside `cors_origins`: answer 403 and
    /// close.
    #[error("origin not allowed")]
    ForbiddenOrigin,
}

impl HttpError {
    /// The status line answered for this error.
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            HttpError::NotFound => (404, "Not Found"),
            HttpError::ForbiddenOrigin => (403, "Forbidden"),
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
            let minor_version = match req.version {
                Some(v @ (0 | 1)) => v,
                _ => return Err(HttpError::Malformed("only HTTP/1.0 and 1.1 are served")),
            };
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
            check_framing(&headers)?;
            Ok(Some((
                Request {
                    method: req.method.unwrap_or_default().to_owned(),
                    path: path.to_owned(),
                    query: query.to_owned(),
                    headers,
                    minor_version,
                },
                len,
            )))
        }
        Err(httparse::Error::TooManyHeaders) => Err(HttpError::Malformed("too many headers")),
        Err(_) => Err(HttpError::Malformed("bad request syntax")),
    }
}

/// Refuses what could frame the body differently for corelay and a proxy in front of it:
/// any `Transfer-Encoding` (corelay reads no chunked bodies, and RFC 9112 section 6.1 says
/// a server that cannot must not guess), and a `Content-Length` that is repeated, a list or
/// not plain digits.
fn check_framing(headers: &[(String, String)]) -> Result<(), HttpError> {
    if headers.iter().any(|(n, _)| n == "transfer-encoding") {
        return Err(HttpError::Malformed("Transfer-Encoding is not served"));
    }
    let mut lengths = headers.iter().filter(|(n, _)| n == "content-length");
    if let Some((_, value)) = lengths.next() {
        if lengths.next().is_some() {
            return Err(HttpError::Malformed("more than one Content-Length"));
        }
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(HttpError::Malformed("bad Content-Length"));
        }
    }
    Ok(())
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

    /// Whether the connection stays open after the answer: HTTP/1.1 unless the client says
    /// `Connection: close`, HTTP/1.0 only if it says `Connection: keep-alive` (RFC 9112
    /// section 9.3).
    pub fn keep_alive(&self) -> bool {
        if self.header_has_token("connection", "close") {
            return false;
        }
        self.minor_version >= 1 || self.header_has_token("connection", "keep-alive")
    }

    /// Checks an RFC 6455 upgrade request and returns its `Sec-WebSocket-Key`.
    pub fn websocket_key(&self) -> Result<&str, HttpError> {
        if self.method != "GET" {
            return Err(HttpError::BadUpgrade("method must be GET"));
        }
        if self.minor_version < 1 {
            // RFC 6455 section 4.1: the opening handshake is an HTTP/1.1 request.
            return Err(HttpError::BadUpgrade("WebSocket needs HTTP/1.1"));
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

    /// The value of cookie `name` from the `Cookie` headers, if sent.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == "cookie")
            .flat_map(|(_, v)| v.split(';'))
            .find_map(|pair| {
                let (key, value) = pair.trim().split_once('=')?;
                (key == name).then_some(value)
            })
    }

    /// The declared body length, if any (its form was checked by [`parse_request`]; a
    /// value too large for `usize` is still an error).
    pub fn content_length(&self) -> Result<usize, HttpError> {
        match self.header("content-length") {
            None => Ok(0),
            Some(v) => v
                .parse()
                .map_err(|_| HttpError::Malformed("bad Content-Length")),
        }
    }
}

/// CORS headers for a request with `origin` (its `Origin` header), per `cors_origins`
/// (`allowed`):
/// - empty (the default): none, as socket.io without its `cors` option; browsers then keep
///   pages of other origins from reading the answers;
/// - with `"*"`: `Access-Control-Allow-Origin: *`, never with credentials (a page anywhere
///   could otherwise act with the visitor's cookies);
/// - a list: an origin in it is echoed, with credentials; `Vary: Origin` in every answer,
///   so that a cache never serves one origin's answer to another.
pub fn cors_headers(allowed: &[String], origin: Option<&str>) -> Vec<(&'static str, String)> {
    let mut headers = Vec::new();
    if allowed.is_empty() {
        return headers;
    }
    if allowed.iter().any(|a| a == "*") {
        headers.push(("Access-Control-Allow-Origin", "*".to_owned()));
        return headers;
    }
    if let Some(o) = origin.filter(|o| listed(allowed, o)) {
        headers.push(("Access-Control-Allow-Origin", o.to_owned()));
        headers.push(("Access-Control-Allow-Credentials", "true".to_owned()));
    }
    headers.push(("Vary", "Origin".to_owned()));
    headers
}

/// Whether a WebSocket upgrade with `origin` (its `Origin` header) may go on, per
/// `cors_origins` (`allowed`). Browsers apply no CORS to WebSockets, so this check is what
/// keeps a page of another origin from opening one with the visitor's cookies: with an
/// allow-list (without `"*"`), an `Origin` outside it is refused. A request without
/// `Origin` comes from no browser (native clients, load generators) and passes, as does
/// every request when no list is configured.
pub fn origin_may_upgrade(allowed: &[String], origin: Option<&str>) -> bool {
    match origin {
        None => true,
        Some(o) => allowed.is_empty() || allowed.iter().any(|a| a == "*") || listed(allowed, o),
    }
}

/// Whether `origin` is in `allowed` (scheme and host are case-insensitive, RFC 6454).
fn listed(allowed: &[String], origin: &str) -> bool {
    allowed.iter().any(|a| a.eq_ignore_ascii_case(origin))
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

/// Decodes `%XX` escapes and `+` (a space in form encoding), as query strings and
/// `application/x-www-form-urlencoded` bodies carry text; borrows when there is nothing to
/// decode. `None` for a bad escape or text that is not UTF-8.
pub fn form_decode(text: &str) -> Option<Cow<'_, str>> {
    if !text.bytes().any(|b| b == b'%' || b == b'+') {
        return Some(Cow::Borrowed(text));
    }
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let high = bytes.get(i + 1).and_then(|&b| hex_value(b))?;
                let low = bytes.get(i + 2).and_then(|&b| hex_value(b))?;
                decoded.push(high << 4 | low);
                i += 3;
            }
            b'+' => {
                decoded.push(b' ');
                i += 1;
            }
            other => {
                decoded.push(other);
                i += 1;
            }
        }
    }
    String::from_utf8(decoded).ok().map(Cow::Owned)
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// The decoded value of `name` in a query string or form body (`a=1&b=two`): the first
/// one given, `None` when absent or badly escaped.
pub fn form_value(form: &str, name: &str) -> Option<String> {
    form.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (form_decode(key)?.as_ref() == name).then(|| form_decode(value).map(Cow::into_owned))?
    })
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

    fn parse(head: &str) -> Result<Request, HttpError> {
        parse_request(head.as_bytes(), 8192).map(|r| r.expect("a complete head").0)
    }

    #[test]
    fn malformed_requests_are_errors() {
        assert!(parse_request(b"\x00\x01garbage\r\n\r\n", 8192).is_err());
        assert!(parse_request(b"GET / HTTP/2.0\r\n\r\n", 8192).is_err());
        let (req, _) = parse_request(b"GET /ws HTTP/1.1\r\nHost: a\r\n\r\n", 8192)
            .unwrap()
            .unwrap();
        assert!(matches!(req.websocket_key(), Err(HttpError::BadUpgrade(_))));
    }

    #[test]
    fn ambiguous_body_lengths_are_refused() {
        for head in [
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: identity\r\n\r\n",
            "GET / HTTP/1.0\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 30\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: \r\n\r\n",
        ] {
            assert!(
                matches!(parse(head), Err(HttpError::Malformed(_))),
                "{head:?}"
            );
        }
        let one = parse("POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\n").unwrap();
        assert_eq!(one.content_length(), Ok(3));
        let none = parse("GET / HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(none.content_length(), Ok(0));
    }

    #[test]
    fn http_1_0_is_served_closing_unless_kept_alive_but_cannot_upgrade() {
        let plain = parse("GET /socket.io/ HTTP/1.0\r\n\r\n").unwrap();
        assert_eq!(plain.minor_version, 0);
        assert!(!plain.keep_alive());
        let kept = parse("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").unwrap();
        assert!(kept.keep_alive());
        assert!(parse("GET / HTTP/1.1\r\n\r\n").unwrap().keep_alive());
        assert!(!parse("GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap()
            .keep_alive());
        let upgrade_1_0 = std::str::from_utf8(UPGRADE)
            .unwrap()
            .replace("HTTP/1.1", "HTTP/1.0");
        assert!(matches!(
            parse(&upgrade_1_0).unwrap().websocket_key(),
            Err(HttpError::BadUpgrade(_))
        ));
    }

    #[test]
    fn cors_headers_follow_the_configured_origins() {
        let names = |h: Vec<(&'static str, String)>| -> Vec<String> {
            h.into_iter().map(|(n, v)| format!("{n}: {v}")).collect()
        };
        let game = Some("https://game.example");
        // None configured: no headers, whatever the origin.
        assert!(cors_headers(&[], game).is_empty());
        // "*": a wildcard, never with credentials.
        let any = vec!["*".to_owned()];
        assert_eq!(
            names(cors_headers(&any, game)),
            ["Access-Control-Allow-Origin: *"]
        );
        // A list: the listed origin echoed with credentials; others get only Vary.
        let list = vec!["https://game.example".to_owned()];
        assert_eq!(
            names(cors_headers(&list, game)),
            [
                "Access-Control-Allow-Origin: https://game.example",
                "Access-Control-Allow-Credentials: true",
                "Vary: Origin"
            ]
        );
        assert_eq!(
            names(cors_headers(&list, Some("https://evil.example"))),
            ["Vary: Origin"]
        );
        assert_eq!(names(cors_headers(&list, None)), ["Vary: Origin"]);
    }

    #[test]
    fn upgrades_from_unlisted_origins_are_refused_only_under_an_allow_list() {
        let evil = Some("https://evil.example");
        assert!(origin_may_upgrade(&[], evil));
        assert!(origin_may_upgrade(&["*".to_owned()], evil));
        let list = vec!["https://game.example".to_owned()];
        assert!(!origin_may_upgrade(&list, evil));
        assert!(origin_may_upgrade(&list, Some("https://GAME.example")));
        // No Origin: no browser, so no page to protect the visitor from.
        assert!(origin_may_upgrade(&list, None));
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

    #[test]
    fn forms_and_cookies_are_read_by_name() {
        assert_eq!(
            form_value("a=1&token=x%2By+z&b", "token").as_deref(),
            Some("x+y z")
        );
        assert_eq!(form_value("b&a=", "a").as_deref(), Some(""));
        assert_eq!(form_value("a=%zz", "a"), None);
        assert_eq!(form_value("a=1", "token"), None);
        assert_eq!(form_decode("%C3%A9").as_deref(), Some("\u{e9}"));
        assert_eq!(form_decode("%FF"), None, "not UTF-8");
        let head = b"GET / HTTP/1.1\r\nCookie: a=1; corelay_admin=abc\r\nCookie: b=2\r\n\r\n";
        let (req, _) = parse_request(head, 1024).unwrap().unwrap();
        assert_eq!(req.cookie("corelay_admin"), Some("abc"));
        assert_eq!(req.cookie("b"), Some("2"));
        assert_eq!(req.cookie("corelay"), None);
    }
}
