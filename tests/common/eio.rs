//! Raw Engine.IO and Socket.IO over real sockets, no client library: HTTP requests for
//! long-polling, and a WebSocket with the codec the server uses.

use std::net::SocketAddr;
use std::time::Duration;

use corelay::client::Stream;
use corelay::proto::ws::{masked_binary_frame, Incoming, WsCodec};
use tungstenite::protocol::Role;
use tungstenite::Message;

/// The long-polling handshake target.
pub const EIO: &str = "/socket.io/?EIO=4&transport=polling";

/// The WebSocket handshake target.
pub const EIO_WS: &str = "/socket.io/?EIO=4&transport=websocket";

/// One HTTP response.
pub struct Response {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// Sends one request on a new connection (`Connection: close`) and reads the response.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    extra: &str,
    body: &str,
) -> Response {
    let s = Stream::new(glommio::net::TcpStream::connect(addr).await.unwrap());
    let req = format!(
        "{method} {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n{extra}\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&all).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Response {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

/// Reads `n` responses from a keep-alive connection (each with a Content-Length).
pub async fn responses(s: &Stream, n: usize) -> Vec<Response> {
    let mut all = Vec::new();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while out.len() < n {
        let text = String::from_utf8_lossy(&all).into_owned();
        if let Some((head, rest)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if rest.len() >= length {
                out.push(Response {
                    status: head.split_whitespace().nth(1).unwrap().parse().unwrap(),
                    head: head.to_owned(),
                    body: rest[..length].to_owned(),
                });
                all = rest.as_bytes()[length..].to_vec();
                continue;
            }
        }
        let read = s.read(&mut buf).await.unwrap();
        assert!(read > 0, "closed after {} responses", out.len());
        all.extend_from_slice(&buf[..read]);
    }
    out
}

/// The sid of an Engine.IO open packet (`0{"sid":..}`).
pub fn sid_of(open: &str) -> String {
    assert!(open.starts_with('0'), "{open}");
    let v: serde_json::Value = serde_json::from_str(&open[1..]).unwrap();
    v["sid"].as_str().unwrap().to_owned()
}

/// Opens a WebSocket to `target`, with a codec holding what came after the handshake.
pub async fn ws_connect(addr: SocketAddr, target: &str) -> (Stream, WsCodec) {
    let s = Stream::new(glommio::net::TcpStream::connect(addr).await.unwrap());
    let leftover = corelay::client::upgrade(&s, "test", target).await.unwrap();
    let mut codec = WsCodec::new(Role::Client, 1 << 20);
    codec.feed(&leftover);
    (s, codec)
}

/// Sends a text message.
pub async fn ws_send(s: &Stream, text: &str) {
    let mut frame = masked_binary_frame(text.as_bytes(), [1, 2, 3, 4]).to_vec();
    frame[0] = 0x81;
    s.write_all(&frame).await.unwrap();
}

/// The next text message, or `None` once the server closed (a close frame or EOF). Fails
/// the test when neither comes within 5 s, so that a test expecting a close cannot pass
/// on silence.
pub async fn ws_recv(s: &Stream, codec: &mut WsCodec) -> Option<String> {
    ws_next(s, codec).await.ok()
}

/// The next text message (`Ok`), or the server's close (`Err` with its close code; `None`
/// for an EOF or a stream the codec refuses), within 5 s.
pub async fn ws_next(s: &Stream, codec: &mut WsCodec) -> Result<String, Option<u16>> {
    ws_next_within(s, codec, Duration::from_secs(5)).await
}

/// [`ws_next`], failing the test if nothing comes within `limit`.
pub async fn ws_next_within(
    s: &Stream,
    codec: &mut WsCodec,
    limit: Duration,
) -> Result<String, Option<u16>> {
    let mut buf = [0u8; 4096];
    loop {
        match codec.poll_message() {
            Ok(Some(Incoming::Message(Message::Text(t)))) => return Ok(t.to_string()),
            Ok(Some(Incoming::Message(_))) => continue,
            Ok(Some(Incoming::Closed(close))) => return Err(close.map(|(code, _)| code)),
            Err(_) => return Err(None),
            Ok(None) => {}
        }
        let read = glommio::timer::timeout(limit, async { Ok(s.read(&mut buf).await) })
            .await
            .expect("a message or the close in time");
        match read {
            Ok(n) if n > 0 => codec.feed(&buf[..n]),
            _ => return Err(None),
        }
    }
}

/// Sends a binary message.
pub async fn ws_send_binary(s: &Stream, data: &[u8]) {
    let frame = masked_binary_frame(data, [1, 2, 3, 4]);
    s.write_all(&frame).await.unwrap();
}

/// A Socket.IO session on a WebSocket, connected to namespace `nsp` (`"/"` or
/// `"/chat"`); returns the socket id the server answered with.
pub async fn sio_connect(addr: SocketAddr, nsp: &str) -> (Stream, WsCodec, String) {
    let (s, mut codec) = ws_connect(addr, EIO_WS).await;
    let open = ws_recv(&s, &mut codec).await.expect("open packet");
    assert!(open.starts_with('0'), "{open}");
    let prefix = if nsp == "/" {
        String::new()
    } else {
        format!("{nsp},")
    };
    ws_send(&s, &format!("40{prefix}")).await;
    let answer = ws_recv(&s, &mut codec).await.expect("CONNECT answer");
    let data = answer
        .strip_prefix(&format!("40{prefix}"))
        .unwrap_or_else(|| panic!("CONNECT answer on {nsp}: {answer}"));
    let v: serde_json::Value = serde_json::from_str(data).unwrap();
    let id = v["sid"].as_str().expect("socket id").to_owned();
    (s, codec, id)
}

/// A Socket.IO session on a WebSocket whose CONNECT (main namespace) carries `auth`;
/// returns the answer as sent, a CONNECT or a CONNECT_ERROR.
pub async fn sio_connect_auth(
    addr: SocketAddr,
    auth: serde_json::Value,
) -> (Stream, WsCodec, String) {
    let (s, mut codec) = ws_connect(addr, EIO_WS).await;
    let open = ws_recv(&s, &mut codec).await.expect("open packet");
    assert!(open.starts_with('0'), "{open}");
    ws_send(&s, &format!("40{auth}")).await;
    let answer = sio_next(&s, &mut codec).await.expect("CONNECT answer");
    (s, codec, answer)
}

/// The next text message that is not a ping (pings are answered), within 5 s; `None` once
/// the server closed.
pub async fn sio_next(s: &Stream, codec: &mut WsCodec) -> Option<String> {
    loop {
        let text = ws_recv(s, codec).await?;
        if text == "2" {
            ws_send(s, "3").await;
            continue;
        }
        return Some(text);
    }
}

/// The data of a Socket.IO text message `prefix<json>`.
pub fn data(message: &str, prefix: &str) -> serde_json::Value {
    let json = message
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("expected {prefix}..., got {message}"));
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{message}: {e}"))
}

/// Skips messages until one starts with `prefix` (member notices, pings and the like).
pub async fn next_starting(s: &Stream, codec: &mut WsCodec, prefix: &str) -> String {
    loop {
        let message = sio_next(s, codec)
            .await
            .unwrap_or_else(|| panic!("closed while waiting for {prefix}..."));
        if message.starts_with(prefix) {
            return message;
        }
    }
}

/// Whether `offset` is a socket.io recovery offset as the server writes them: its room's
/// 8-hex-digit tag and the event's number in hex, 9 to 24 lowercase hex digits in all.
pub fn is_offset(offset: &str) -> bool {
    (9..=24).contains(&offset.len())
        && offset
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Fails the test unless `v` is a recovery offset string ([`is_offset`]).
pub fn assert_offset(v: &serde_json::Value) {
    let offset = v
        .as_str()
        .unwrap_or_else(|| panic!("offset is no string: {v}"));
    assert!(is_offset(offset), "not an offset: {offset:?}");
}

/// A room broadcast to a socket.io client (connection state recovery on) split into the
/// message as it was before recovery and its trailing offset argument, which is checked:
/// `42["hit",{"n":1},"alice","2868a0621f"]` gives `42["hit",{"n":1},"alice"]` and
/// `2868a0621f`. The rest is kept byte for byte, so tests still compare the exact wire.
pub fn split_offset(message: &str) -> (String, String) {
    let body = message
        .strip_suffix("\"]")
        .unwrap_or_else(|| panic!("no trailing offset in {message}"));
    let (rest, offset) = body
        .rsplit_once(",\"")
        .unwrap_or_else(|| panic!("no trailing offset in {message}"));
    assert!(is_offset(offset), "no trailing offset in {message}");
    (format!("{rest}]"), offset.to_owned())
}

/// [`split_offset`]'s message without its (checked) offset.
pub fn without_offset(message: &str) -> String {
    split_offset(message).0
}

/// The data of a Socket.IO room broadcast `prefix<json>` without its trailing offset,
/// which must be there and be one ([`assert_offset`]).
pub fn broadcast_data(message: &str, prefix: &str) -> serde_json::Value {
    let mut v = data(message, prefix);
    let args = v
        .as_array_mut()
        .unwrap_or_else(|| panic!("no event array: {message}"));
    let offset = args
        .pop()
        .unwrap_or_else(|| panic!("no arguments: {message}"));
    assert_offset(&offset);
    v
}

/// The data of a CONNECT answer `40<nsp,>{..}`: with connection state recovery on (the
/// default) a `sid` and a `pid` (`<hex player>.<secret>`), checked here; the `sid` is
/// returned. `prefix` is the namespace's (`""` for the main one, `"/chat,"` else).
pub fn connected_sid(answer: &str, prefix: &str) -> String {
    let v = data(answer, &format!("40{prefix}"));
    let sid = v["sid"]
        .as_str()
        .unwrap_or_else(|| panic!("no sid in {answer}"));
    let pid = v["pid"]
        .as_str()
        .unwrap_or_else(|| panic!("no pid in {answer}"));
    let (player, secret) = pid.split_once('.').unwrap_or_else(|| panic!("pid {pid:?}"));
    let hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
    assert!(hex(player) && hex(secret), "pid {pid:?}");
    // The pid names the socket's player, whose id in decimal is the socket id.
    assert_eq!(
        u64::from_str_radix(player, 16).ok(),
        sid.parse::<u64>().ok(),
        "pid {pid:?} and sid {sid:?}"
    );
    sid.to_owned()
}
