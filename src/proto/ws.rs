//! WebSocket framing driven from buffers, sans-IO.
//!
//! The shard fills [`WsCodec`] with the bytes it read and drains the bytes to write; the
//! codec itself does no IO. Outgoing broadcast frames bypass it: a server frame is
//! unmasked, so [`binary_frame`] encodes header and body once and the same bytes go to
//! every recipient.

use std::io;

use bytes::{Bytes, BytesMut};
use rand::Rng;
use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tungstenite::protocol::frame::{FrameHeader, Utf8Bytes};
use tungstenite::protocol::Role;
use tungstenite::Message;

/// Longest header of an unmasked frame: 2 bytes + 8 bytes of extended length.
pub const MAX_SERVER_HEADER: usize = 10;

/// Close codes corelay sends (RFC 6455 section 7.4.1).
pub mod close {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// Server going away (shutdown).
    pub const GOING_AWAY: u16 = 1001;
    /// Protocol error.
    pub const PROTOCOL: u16 = 1002;
    /// Unsupported data (text on the binary-only `/ws`).
    pub const UNSUPPORTED: u16 = 1003;
    /// Invalid payload data (bad UTF-8, invalid frame).
    pub const INVALID: u16 = 1007;
    /// Policy violation (slow consumer, idle peer).
    pub const POLICY: u16 = 1008;
    /// Message too big.
    pub const TOO_BIG: u16 = 1009;
    /// Try again later (server overloaded).
    pub const TRY_AGAIN: u16 = 1013;
}

/// What reading produced.
#[derive(Debug)]
pub enum Incoming {
    /// A complete data message.
    Message(Message),
    /// The peer started or finished the close handshake (with its code and reason, if
    /// any); stop reading, write what [`WsCodec::take_output`] holds (the close reply) and
    /// close the socket.
    Closed(Option<(u16, String)>),
}

/// Why the codec gave up on a connection; each carries the close code to send.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// A message or frame exceeded the size limit: close with 1009.
    #[error("message too big")]
    TooBig,
    /// Invalid UTF-8 in a text message or close reason: close with 1007.
    #[error("invalid utf-8")]
    InvalidUtf8,
    /// Any other RFC 6455 violation: close with 1002.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl CodecError {
    /// The close code to send for this error.
    pub fn close_code(&self) -> u16 {
        match self {
            CodecError::TooBig => close::TOO_BIG,
            CodecError::InvalidUtf8 => close::INVALID,
            CodecError::Protocol(_) => close::PROTOCOL,
        }
    }
}

/// Masking keys for a client's frames, drawn from the thread's CSPRNG.
///
/// RFC 6455 (section 10.3) requires keys that the application cannot predict, so that a
/// page cannot choose the bytes an intermediary sees (cache poisoning of proxies that do
/// not understand WebSocket). A key stream derived from a time, a port or an address is
/// predictable; this one comes from `rand`'s thread-local generator: ChaCha12 seeded from
/// the OS (getrandom(2)) and reseeded from it every 64 KiB of output. A getrandom call per
/// key would cost a system call for every frame the load generator sends; a seeded
/// ChaCha costs a few nanoseconds per key and is as unpredictable to a peer.
///
/// The handle is empty: one generator per thread serves every connection on it, so a
/// codec stays `Send` and a connection costs no generator state.
#[derive(Debug, Clone, Copy, Default)]
pub struct MaskKeys;

impl MaskKeys {
    /// Keys from the thread's generator.
    ///
    /// # Panics
    ///
    /// The first key drawn on a thread seeds its generator from getrandom(2), which on
    /// Linux blocks until the kernel's pool is initialised and then does not fail; rand
    /// panics if it ever did, rather than mask with a predictable key.
    pub fn new() -> MaskKeys {
        MaskKeys
    }

    /// The next key.
    pub fn next_key(&self) -> [u8; 4] {
        rand::rng().next_u32().to_ne_bytes()
    }
}

/// A fragmented message being assembled.
#[derive(Debug)]
struct Fragments {
    text: bool,
    data: BytesMut,
}

/// One WebSocket endpoint's framing state, fed bytes and drained of bytes.
///
/// Frame headers are parsed and written by tungstenite ([`FrameHeader`]); the rest of RFC
/// 6455's reading rules are here: masking by role, reserved bits and opcodes, control
/// frame limits, fragmentation, UTF-8 of text messages and close reasons, close codes,
/// size limits, ping answers and the close echo. A payload is unmasked in place and handed
/// out as a slice of the bytes read (no copy), and a codec between messages holds no
/// buffer at all, so an idle connection costs only this struct.
#[derive(Debug)]
pub struct WsCodec {
    role: Role,
    max_message: usize,
    input: BytesMut,
    fragments: Option<Box<Fragments>>,
    output: Vec<u8>,
    /// A close frame came in: nothing after it is read.
    closed: bool,
    /// This side sent a close frame through [`WsCodec::close`]: the peer's close is its
    /// answer, not to be echoed.
    close_sent: bool,
    /// Masking keys for a client's frames.
    mask: MaskKeys,
}

impl WsCodec {
    /// A codec for an upgraded connection; `max_message` bounds both frames and messages.
    pub fn new(role: Role, max_message: usize) -> WsCodec {
        WsCodec {
            role,
            max_message,
            input: BytesMut::new(),
            fragments: None,
            output: Vec::new(),
            closed: false,
            close_sent: false,
            mask: MaskKeys::new(),
        }
    }

    /// Releases buffered capacity (call when the connection is idle).
    pub fn shrink(&mut self) {
        if self.input.is_empty() {
            self.input = BytesMut::new();
        }
        if self.output.is_empty() {
            self.output = Vec::new();
        }
    }

    /// Appends bytes read from the socket.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.input.is_empty() {
            // Exactly sized: once its messages are taken, nothing stays allocated.
            self.input = BytesMut::from(bytes);
        } else {
            self.input.extend_from_slice(bytes);
        }
    }

    /// The next complete message, `Ok(None)` when more bytes are needed.
    pub fn poll_message(&mut self) -> Result<Option<Incoming>, CodecError> {
        loop {
            if self.closed {
                return Ok(None);
            }
            let mut cursor = io::Cursor::new(&self.input[..]);
            let (header, len) = match FrameHeader::parse(&mut cursor) {
                Ok(Some(h)) => h,
                Ok(None) => return Ok(None),
                Err(e) => return Err(CodecError::Protocol(e.to_string())),
            };
            let header_len = cursor.position() as usize;
            if len > self.max_message as u64 {
                return Err(CodecError::TooBig);
            }
            let len = len as usize;
            if header.rsv1 || header.rsv2 || header.rsv3 {
                return Err(CodecError::Protocol("reserved bits set".into()));
            }
            match (self.role, header.mask.is_some()) {
                (Role::Server, false) => {
                    return Err(CodecError::Protocol("unmasked frame from a client".into()))
                }
                (Role::Client, true) => {
                    return Err(CodecError::Protocol("masked frame from a server".into()))
                }
                _ => {}
            }
            if let OpCode::Control(_) = header.opcode {
                if !header.is_final {
                    return Err(CodecError::Protocol("fragmented control frame".into()));
                }
                if len > 125 {
                    return Err(CodecError::Protocol("control frame too long".into()));
                }
            }
            if self.input.len() < header_len + len {
                self.input.reserve(header_len + len - self.input.len());
                return Ok(None);
            }
            let _ = self.input.split_to(header_len);
            let mut payload = self.input.split_to(len);
            if let Some(mask) = header.mask {
                for (i, b) in payload.iter_mut().enumerate() {
                    *b ^= mask[i & 3];
                }
            }
            if let Some(message) = self.frame(header.opcode, header.is_final, payload)? {
                return Ok(Some(message));
            }
        }
    }

    /// Handles one whole frame; a complete message or close comes back.
    fn frame(
        &mut self,
        opcode: OpCode,
        fin: bool,
        payload: BytesMut,
    ) -> Result<Option<Incoming>, CodecError> {
        match opcode {
            OpCode::Control(Control::Ping) => {
                self.write_frame(OpCode::Control(Control::Pong), &payload);
                Ok(None)
            }
            OpCode::Control(Control::Pong) => Ok(None),
            OpCode::Control(Control::Close) => self.close_received(&payload).map(Some),
            OpCode::Control(Control::Reserved(_)) | OpCode::Data(Data::Reserved(_)) => {
                Err(CodecError::Protocol("reserved opcode".into()))
            }
            OpCode::Data(Data::Continue) => {
                let Some(mut f) = self.fragments.take() else {
                    return Err(CodecError::Protocol("continuation of no message".into()));
                };
                if f.data.len() + payload.len() > self.max_message {
                    return Err(CodecError::TooBig);
                }
                f.data.extend_from_slice(&payload);
                if fin {
                    message(f.text, f.data).map(Some)
                } else {
                    self.fragments = Some(f);
                    Ok(None)
                }
            }
            OpCode::Data(kind @ (Data::Text | Data::Binary)) => {
                if self.fragments.is_some() {
                    return Err(CodecError::Protocol(
                        "new message inside a fragmented one".into(),
                    ));
                }
                let text = kind == Data::Text;
                if fin {
                    message(text, payload).map(Some)
                } else {
                    self.fragments = Some(Box::new(Fragments {
                        text,
                        data: payload,
                    }));
                    Ok(None)
                }
            }
        }
    }

    fn close_received(&mut self, payload: &[u8]) -> Result<Incoming, CodecError> {
        let close = match payload {
            [] => None,
            [_] => return Err(CodecError::Protocol("close payload of one byte".into())),
            [hi, lo, reason @ ..] => {
                let code = u16::from_be_bytes([*hi, *lo]);
                if !CloseCode::from(code).is_allowed() {
                    return Err(CodecError::Protocol(format!("close code {code}")));
                }
                let reason = std::str::from_utf8(reason).map_err(|_| CodecError::InvalidUtf8)?;
                Some((code, reason.to_owned()))
            }
        };
        self.closed = true;
        if !self.close_sent {
            // Echo the close: its code (none for none), no reason.
            let body = close.as_ref().map(|(c, _)| c.to_be_bytes().to_vec());
            self.write_frame(
                OpCode::Control(Control::Close),
                body.as_deref().unwrap_or(&[]),
            );
            self.close_sent = true;
        }
        Ok(Incoming::Closed(close))
    }

    /// Appends one frame to the output, masked when this is a client.
    fn write_frame(&mut self, opcode: OpCode, body: &[u8]) {
        let mask = match self.role {
            Role::Client => Some(self.mask.next_key()),
            Role::Server => None,
        };
        write_frame(opcode, body, mask, &mut self.output);
    }

    /// Queues a data message (masked when this is a client).
    pub fn write(&mut self, msg: Message) -> Result<(), CodecError> {
        match msg {
            Message::Text(t) => self.write_frame(OpCode::Data(Data::Text), t.as_bytes()),
            Message::Binary(b) => self.write_frame(OpCode::Data(Data::Binary), &b),
            Message::Ping(p) => self.write_frame(OpCode::Control(Control::Ping), &p),
            Message::Pong(p) => self.write_frame(OpCode::Control(Control::Pong), &p),
            Message::Close(c) => {
                let (code, reason) = c.map_or((close::NORMAL, String::new()), |f| {
                    (u16::from(f.code), f.reason.to_string())
                });
                self.close(code, &reason);
            }
            Message::Frame(_) => {
                return Err(CodecError::Protocol("raw frames are not written".into()))
            }
        }
        Ok(())
    }

    /// Starts the close handshake from this side.
    pub fn close(&mut self, code: u16, reason: &str) {
        if self.close_sent {
            return;
        }
        self.close_sent = true;
        self.write_frame(OpCode::Control(Control::Close), &close_body(code, reason));
    }

    /// Bytes to be written (pongs, close replies, a client's frames), if any.
    pub fn take_output(&mut self) -> Option<Bytes> {
        if self.output.is_empty() {
            None
        } else {
            Some(Bytes::from(std::mem::take(&mut self.output)))
        }
    }
}

/// A complete data message.
fn message(text: bool, data: BytesMut) -> Result<Incoming, CodecError> {
    let data = data.freeze();
    let msg = if text {
        Message::Text(Utf8Bytes::try_from(data).map_err(|_| CodecError::InvalidUtf8)?)
    } else {
        Message::Binary(data)
    };
    Ok(Incoming::Message(msg))
}

/// Encodes an unmasked binary frame whose body is produced by `body` after a reserved
/// header area, in one allocation. `body` receives a Vec holding [`MAX_SERVER_HEADER`]
/// placeholder bytes and must append to it.
pub fn binary_frame(body: impl FnOnce(Vec<u8>) -> Vec<u8>) -> Bytes {
    frame_after_header(OpCode::Data(Data::Binary), body)
}

/// A masked (client-to-server) binary frame around `body`, in one allocation.
pub fn masked_binary_frame(body: &[u8], mask: [u8; 4]) -> Bytes {
    let mut out = Vec::new();
    write_masked_frame(false, body, mask, &mut out);
    Bytes::from(out)
}

/// Appends a masked (client-to-server) data frame around `body` to `out`: text when
/// `text`, else binary.
pub fn write_masked_frame(text: bool, body: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    let opcode = OpCode::Data(if text { Data::Text } else { Data::Binary });
    write_frame(opcode, body, Some(mask), out);
}

/// A masked close frame, as a client sends it.
pub fn masked_close_frame(code: u16, reason: &str, mask: [u8; 4]) -> Bytes {
    let mut out = Vec::new();
    let body = close_body(code, reason);
    write_frame(OpCode::Control(Control::Close), &body, Some(mask), &mut out);
    Bytes::from(out)
}

/// Appends one frame around `body` to `out`, masked with `mask` if given.
fn write_frame(opcode: OpCode, body: &[u8], mask: Option<[u8; 4]>, out: &mut Vec<u8>) {
    let header = FrameHeader {
        opcode,
        mask,
        ..FrameHeader::default()
    };
    let len = body.len() as u64;
    out.reserve(header.len(len) + body.len());
    // Formatting into a Vec cannot fail.
    header.format(len, out).expect("format into Vec");
    let start = out.len();
    out.extend_from_slice(body);
    if let Some(mask) = mask {
        for (i, b) in out[start..].iter_mut().enumerate() {
            *b ^= mask[i & 3];
        }
    }
}

/// The body of a close frame: the code, then the reason cut at a character boundary to
/// the 123 bytes a control frame has room for.
fn close_body(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut body = Vec::with_capacity(2 + end);
    body.extend_from_slice(&code.to_be_bytes());
    body.extend_from_slice(&reason.as_bytes()[..end]);
    body
}

/// Like [`binary_frame`], for a text frame; the caller guarantees UTF-8.
pub fn text_frame(body: impl FnOnce(Vec<u8>) -> Vec<u8>) -> Bytes {
    frame_after_header(OpCode::Data(Data::Text), body)
}

fn frame_after_header(opcode: OpCode, body: impl FnOnce(Vec<u8>) -> Vec<u8>) -> Bytes {
    let mut buf = body(vec![0u8; MAX_SERVER_HEADER]);
    let len = (buf.len() - MAX_SERVER_HEADER) as u64;
    let header = FrameHeader {
        opcode,
        ..FrameHeader::default()
    };
    let hlen = header.len(len);
    let start = MAX_SERVER_HEADER - hlen;
    // Writing a header into a slice of exactly its length cannot fail.
    header
        .format(len, &mut &mut buf[start..MAX_SERVER_HEADER])
        .expect("header fits its reserved room");
    Bytes::from(buf).slice(start..)
}

/// The close frame that ends a slow consumer's connection: `close_frame(close::POLICY,
/// "slow consumer")`, built once, so that queueing it allocates nothing.
pub static SLOW_CONSUMER_CLOSE: Bytes = Bytes::from_static(&[
    0x88, 15, 0x03, 0xf0, b's', b'l', b'o', b'w', b' ', b'c', b'o', b'n', b's', b'u', b'm', b'e',
    b'r',
]);

/// An unmasked close frame, as a server sends it; a reason over 123 bytes is cut at a
/// character boundary.
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut out = Vec::new();
    let body = close_body(code, reason);
    write_frame(OpCode::Control(Control::Close), &body, None, &mut out);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Linear complexity of a bit sequence over GF(2) (Berlekamp-Massey): the length of
    /// the shortest linear feedback shift register that generates it.
    fn linear_complexity(bits: &[u8]) -> usize {
        let n = bits.len();
        let (mut b, mut c) = (vec![0u8; n], vec![0u8; n]);
        (b[0], c[0]) = (1, 1);
        // `m`: the step of the last length change, -1 before any.
        let (mut l, mut m) = (0usize, -1isize);
        for i in 0..n {
            let d = (1..=l).fold(bits[i], |d, j| d ^ (c[j] & bits[i - j]));
            if d == 1 {
                let t = c.clone();
                let shift = (i as isize - m) as usize;
                for j in 0..n - shift {
                    c[j + shift] ^= b[j];
                }
                if 2 * l <= i {
                    l = i + 1 - l;
                    m = i as isize;
                    b = t;
                }
            }
        }
        l
    }

    #[test]
    fn mask_keys_follow_no_short_linear_recurrence() {
        // A generator whose state is n bits and whose steps are linear (xorshift, LFSRs:
        // what masks used to come from) makes every output bit obey a linear recurrence of
        // degree <= n, so a few keys predict all later ones; an unpredictable stream of N
        // bits has a linear complexity close to N/2.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let xorshift: Vec<u8> = (0..512)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8 & 1
            })
            .collect();
        assert!(
            linear_complexity(&xorshift) <= 64,
            "the check sees a linear generator"
        );
        let keys = MaskKeys::new();
        for bit in [0, 13, 31] {
            let bits: Vec<u8> = (0..512)
                .map(|_| (u32::from_le_bytes(keys.next_key()) >> bit) as u8 & 1)
                .collect();
            let complexity = linear_complexity(&bits);
            assert!(
                complexity > 200,
                "bit {bit}: linear complexity {complexity}"
            );
        }
    }

    #[test]
    fn two_mask_key_streams_differ() {
        let (a, b) = (MaskKeys::new(), MaskKeys::new());
        let first: Vec<[u8; 4]> = (0..4).map(|_| a.next_key()).collect();
        let second: Vec<[u8; 4]> = (0..4).map(|_| b.next_key()).collect();
        assert_ne!(first, second);
    }

    #[test]
    fn the_slow_consumer_close_is_the_close_frame_it_names() {
        assert_eq!(
            SLOW_CONSUMER_CLOSE,
            close_frame(close::POLICY, "slow consumer")
        );
    }

    #[test]
    fn server_frames_decode_on_a_client_codec() {
        let small = binary_frame(|mut v| {
            v.extend_from_slice(b"hello");
            v
        });
        assert_eq!(small.len(), 2 + 5);
        let big = binary_frame(|mut v| {
            v.extend(std::iter::repeat_n(7u8, 70_000));
            v
        });
        assert_eq!(big.len(), 10 + 70_000);
        let mid = text_frame(|mut v| {
            v.extend(std::iter::repeat_n(b'a', 300));
            v
        });
        assert_eq!(mid.len(), 4 + 300);

        let mut client = WsCodec::new(Role::Client, 1 << 20);
        client.feed(&small);
        client.feed(&big);
        client.feed(&mid);
        let mut got = Vec::new();
        while let Some(Incoming::Message(m)) = client.poll_message().unwrap() {
            got.push(m);
        }
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], Message::Binary(Bytes::from_static(b"hello")));
        assert_eq!(got[1].len(), 70_000);
        assert!(got[2].is_text());
    }

    #[test]
    fn close_reasons_are_cut_to_fit_a_control_frame_at_a_char_boundary() {
        // 'é' is two bytes: 61 of them are 122 bytes, the 62nd would end at 124.
        let long = "é".repeat(100);
        for (frame, masked) in [
            (close_frame(close::PROTOCOL, &long), false),
            (
                masked_close_frame(close::PROTOCOL, &long, [1, 2, 3, 4]),
                true,
            ),
        ] {
            let role = if masked { Role::Server } else { Role::Client };
            let mut peer = WsCodec::new(role, 1 << 20);
            peer.feed(&frame);
            match peer.poll_message().unwrap() {
                Some(Incoming::Closed(Some((code, reason)))) => {
                    assert_eq!(code, close::PROTOCOL);
                    assert_eq!(reason, "é".repeat(61));
                }
                other => panic!("not a close: {other:?}"),
            }
        }
    }

    #[test]
    fn client_frames_reach_a_server_codec_byte_by_byte() {
        let mut client = WsCodec::new(Role::Client, 1 << 20);
        client
            .write(Message::Binary(Bytes::from_static(b"abc")))
            .unwrap();
        let wire = client.take_output().unwrap();
        let mut server = WsCodec::new(Role::Server, 1 << 20);
        for (i, b) in wire.iter().enumerate() {
            server.feed(&[*b]);
            let m = server.poll_message().unwrap();
            if i + 1 < wire.len() {
                assert!(m.is_none());
            } else {
                assert!(
                    matches!(m, Some(Incoming::Message(Message::Binary(ref b))) if b.as_ref() == b"abc")
                );
            }
        }
    }

    #[test]
    fn oversized_messages_are_rejected_with_1009() {
        let mut client = WsCodec::new(Role::Client, 1 << 20);
        client
            .write(Message::Binary(vec![0u8; 2000].into()))
            .unwrap();
        let mut server = WsCodec::new(Role::Server, 1000);
        server.feed(&client.take_output().unwrap());
        let err = server.poll_message().unwrap_err();
        assert_eq!(err.close_code(), close::TOO_BIG);
    }

    #[test]
    fn pings_are_answered_and_close_is_echoed() {
        let mut client = WsCodec::new(Role::Client, 1 << 20);
        client
            .write(Message::Ping(Bytes::from_static(b"p")))
            .unwrap();
        client.close(close::NORMAL, "bye");
        let mut server = WsCodec::new(Role::Server, 1 << 20);
        server.feed(&client.take_output().unwrap());
        assert!(matches!(
            server.poll_message().unwrap(),
            Some(Incoming::Closed(Some((1000, _))))
        ));
        let reply = server.take_output().unwrap();
        // A pong (2 + 1 bytes) and the close echo follow.
        assert_eq!(reply[0], 0x8A);
    }

    #[test]
    fn random_bytes_never_panic_the_server_codec() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..2_000 {
            let mut codec = WsCodec::new(Role::Server, 4096);
            let mut bytes = Vec::new();
            for _ in 0..64 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                bytes.push((x >> 24) as u8);
            }
            // Often start with a plausible masked binary header so deeper states are reached.
            if x % 2 == 0 {
                bytes[0] = 0x82;
                bytes[1] = 0x80 | (bytes[1] & 0x3f);
            }
            for chunk in bytes.chunks(5) {
                codec.feed(chunk);
                match codec.poll_message() {
                    Ok(_) => {}
                    Err(e) => {
                        assert!([close::PROTOCOL, close::INVALID, close::TOO_BIG]
                            .contains(&e.close_code()));
                        break;
                    }
                }
            }
        }
    }

    /// A masked client frame with any header bits, for the rules a peer can break.
    fn raw_frame(first: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut out = vec![first];
        let masked = if mask.is_some() { 0x80 } else { 0 };
        assert!(payload.len() < 126);
        out.push(masked | payload.len() as u8);
        match mask {
            Some(m) => {
                out.extend_from_slice(&m);
                out.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i & 3]));
            }
            None => out.extend_from_slice(payload),
        }
        out
    }

    const M: Option<[u8; 4]> = Some([1, 2, 3, 4]);

    fn server_reads(bytes: &[u8]) -> Result<Vec<Incoming>, CodecError> {
        let mut server = WsCodec::new(Role::Server, 1 << 16);
        server.feed(bytes);
        let mut got = Vec::new();
        while let Some(m) = server.poll_message()? {
            got.push(m);
        }
        Ok(got)
    }

    #[test]
    fn fragments_are_joined_and_control_frames_may_come_between() {
        let mut wire = raw_frame(0x01, b"hel", M); // text, not final
        wire.extend(raw_frame(0x89, b"p", M)); // ping in the middle
        wire.extend(raw_frame(0x80, b"lo", M)); // final continuation
        let mut server = WsCodec::new(Role::Server, 1 << 16);
        server.feed(&wire);
        match server.poll_message().unwrap() {
            Some(Incoming::Message(Message::Text(t))) => assert_eq!(t.as_str(), "hello"),
            other => panic!("{other:?}"),
        }
        // The pong answers the ping, unmasked.
        assert_eq!(&server.take_output().unwrap()[..], &[0x8A, 0x01, b'p']);
    }

    #[test]
    fn protocol_violations_close_with_1002() {
        let cases: [(&str, Vec<u8>); 7] = [
            ("unmasked client frame", raw_frame(0x82, b"x", None)),
            ("reserved bit", raw_frame(0xC2, b"x", M)),
            ("reserved opcode", raw_frame(0x83, b"x", M)),
            ("fragmented ping", raw_frame(0x09, b"x", M)),
            ("continuation of nothing", raw_frame(0x80, b"x", M)),
            ("close with one byte", raw_frame(0x88, b"x", M)),
            (
                "close code 1005",
                raw_frame(0x88, &1005u16.to_be_bytes(), M),
            ),
        ];
        for (what, wire) in cases {
            let err = server_reads(&wire).expect_err(what);
            assert_eq!(err.close_code(), close::PROTOCOL, "{what}");
        }
        let mut interleaved = raw_frame(0x01, b"a", M);
        interleaved.extend(raw_frame(0x81, b"b", M));
        assert_eq!(
            server_reads(&interleaved).unwrap_err().close_code(),
            close::PROTOCOL
        );
        let long_ping = {
            let mut f = vec![0x89, 0x80 | 126, 0, 126];
            f.extend_from_slice(&[0; 4]);
            f.extend_from_slice(&[0; 126]);
            f
        };
        assert_eq!(
            server_reads(&long_ping).unwrap_err().close_code(),
            close::PROTOCOL
        );
    }

    #[test]
    fn invalid_utf8_closes_with_1007_in_text_and_close_reasons() {
        assert_eq!(
            server_reads(&raw_frame(0x81, &[0xff, 0xfe], M))
                .unwrap_err()
                .close_code(),
            close::INVALID
        );
        let mut body = 1000u16.to_be_bytes().to_vec();
        body.extend_from_slice(&[0xff]);
        assert_eq!(
            server_reads(&raw_frame(0x88, &body, M))
                .unwrap_err()
                .close_code(),
            close::INVALID
        );
        // A fragmented text message whose fragments split a character is fine.
        let e_acute = "é".as_bytes();
        let mut wire = raw_frame(0x01, &e_acute[..1], M);
        wire.extend(raw_frame(0x80, &e_acute[1..], M));
        assert!(matches!(
            server_reads(&wire).unwrap()[..],
            [Incoming::Message(Message::Text(ref t))] if t.as_str() == "é"
        ));
    }

    #[test]
    fn nothing_is_read_after_a_close_and_an_idle_codec_holds_no_buffer() {
        let mut wire = raw_frame(0x88, &1001u16.to_be_bytes(), M);
        wire.extend(raw_frame(0x82, b"late", M));
        let mut server = WsCodec::new(Role::Server, 1 << 16);
        server.feed(&wire);
        assert!(matches!(
            server.poll_message().unwrap(),
            Some(Incoming::Closed(Some((1001, _))))
        ));
        assert!(server.poll_message().unwrap().is_none());
        // The echo carries the peer's code.
        let echo = server.take_output().unwrap();
        assert_eq!(&echo[..], &[0x88, 0x02, 0x03, 0xE9]);

        let mut idle = WsCodec::new(Role::Server, 1 << 16);
        idle.feed(&raw_frame(0x82, b"abc", M));
        assert!(idle.poll_message().unwrap().is_some());
        assert_eq!(idle.input.capacity(), 0);
        assert!(idle.fragments.is_none() && idle.output.capacity() == 0);
    }
}
