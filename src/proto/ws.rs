//! WebSocket framing driven from buffers.
//!
//! tungstenite's [`WebSocketContext`] keeps the protocol state apart from the stream, so an
//! io_uring task fills [`WsCodec`] with the bytes it read and drains the bytes to write;
//! the codec itself does no IO. Outgoing broadcast frames bypass the context: a server
//! frame is unmasked, so [`binary_frame`] encodes header and body once and the same bytes go
//! to every recipient.

use std::io::{self, Read, Write};

use bytes::Bytes;
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::protocol::frame::{CloseFrame, Frame, FrameHeader};
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tungstenite::{Error as WsError, Message};

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

/// In-memory stream that tungstenite reads from and writes to.
#[derive(Default)]
struct Buffers {
    input: Vec<u8>,
    read_at: usize,
    output: Vec<u8>,
}

impl Read for Buffers {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = &self.input[self.read_at..];
        if available.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.read_at += n;
        if self.read_at == self.input.len() {
            self.input.clear();
            self.read_at = 0;
        }
        Ok(n)
    }
}

impl Write for Buffers {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One WebSocket endpoint's framing state, fed bytes and drained of bytes.
pub struct WsCodec {
    ctx: WebSocketContext,
    io: Buffers,
}

impl WsCodec {
    /// A codec for an upgraded connection; `max_message` bounds both frames and messages.
    pub fn new(role: Role, max_message: usize) -> WsCodec {
        let config = WebSocketConfig::default()
            .max_message_size(Some(max_message))
            .max_frame_size(Some(max_message))
            // Reads are fed from our own buffer; tungstenite's copy starts small (it grows
            // for large messages) so that an idle connection holds little memory.
            .read_buffer_size(256);
        WsCodec {
            ctx: WebSocketContext::new(role, Some(config)),
            io: Buffers::default(),
        }
    }

    /// Releases buffered capacity (call when the connection is idle).
    pub fn shrink(&mut self) {
        if self.io.input.is_empty() {
            self.io.input = Vec::new();
        }
        self.io.output.shrink_to_fit();
    }

    /// Appends bytes read from the socket.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.io.input.extend_from_slice(bytes);
    }

    /// The next complete message, `Ok(None)` when more bytes are needed.
    pub fn poll_message(&mut self) -> Result<Option<Incoming>, CodecError> {
        loop {
            match self.ctx.read(&mut self.io) {
                Ok(Message::Close(frame)) => {
                    return Ok(Some(Incoming::Closed(
                        frame.map(|f| (u16::from(f.code), f.reason.to_string())),
                    )))
                }
                // Pings are answered by the context (the pong lands in the output).
                Ok(Message::Ping(_)) | Ok(Message::Pong(_)) | Ok(Message::Frame(_)) => continue,
                Ok(msg) => return Ok(Some(Incoming::Message(msg))),
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(WsError::ConnectionClosed) | Err(WsError::AlreadyClosed) => {
                    return Ok(Some(Incoming::Closed(None)))
                }
                Err(WsError::Capacity(_)) => return Err(CodecError::TooBig),
                Err(WsError::Utf8(_)) => return Err(CodecError::InvalidUtf8),
                Err(e) => return Err(CodecError::Protocol(e.to_string())),
            }
        }
    }

    /// Queues a message through the context (masked when this is a client).
    pub fn write(&mut self, msg: Message) -> Result<(), CodecError> {
        self.ctx
            .write(&mut self.io, msg)
            .and_then(|_| self.ctx.flush(&mut self.io))
            .map_err(|e| CodecError::Protocol(e.to_string()))
    }

    /// Starts the close handshake from this side.
    pub fn close(&mut self, code: u16, reason: &str) {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.to_owned().into(),
        };
        // Closing twice is harmless; the context refuses and we keep what was queued.
        let _ = self.ctx.close(&mut self.io, Some(frame));
        let _ = self.ctx.flush(&mut self.io);
    }

    /// Bytes the context wants written (pongs, close replies, client frames), if any.
    pub fn take_output(&mut self) -> Option<Bytes> {
        // Replies queued during a read are flushed lazily by tungstenite; flush them now.
        let _ = self.ctx.flush(&mut self.io);
        if self.io.output.is_empty() {
            None
        } else {
            Some(Bytes::from(std::mem::take(&mut self.io.output)))
        }
    }
}

/// Encodes an unmasked binary frame whose body is produced by `body` after a reserved
/// header area, in one allocation. `body` receives a Vec holding [`MAX_SERVER_HEADER`]
/// placeholder bytes and must append to it.
pub fn binary_frame(body: impl FnOnce(Vec<u8>) -> Vec<u8>) -> Bytes {
    frame_after_header(OpCode::Data(Data::Binary), body)
}

/// A masked (client-to-server) binary frame around `body`, in one allocation.
pub fn masked_binary_frame(body: &[u8], mask: [u8; 4]) -> Bytes {
    let mut out = Vec::with_capacity(body.len() + 14);
    write_masked_frame(false, body, mask, &mut out);
    Bytes::from(out)
}

/// Appends a masked (client-to-server) data frame around `body` to `out`: text when
/// `text`, else binary.
pub fn write_masked_frame(text: bool, body: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    let header = FrameHeader {
        opcode: OpCode::Data(if text { Data::Text } else { Data::Binary }),
        mask: Some(mask),
        ..FrameHeader::default()
    };
    let len = body.len() as u64;
    out.reserve(header.len(len) + body.len());
    // Formatting into a Vec cannot fail.
    header.format(len, out).expect("format into Vec");
    let start = out.len();
    out.extend_from_slice(body);
    for (i, b) in out[start..].iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// A masked close frame, as a client sends it.
pub fn masked_close_frame(code: u16, reason: &str, mask: [u8; 4]) -> Bytes {
    let mut body = code.to_be_bytes().to_vec();
    body.extend_from_slice(reason.as_bytes());
    let header = FrameHeader {
        opcode: OpCode::Control(tungstenite::protocol::frame::coding::Control::Close),
        mask: Some(mask),
        ..FrameHeader::default()
    };
    let len = body.len() as u64;
    let mut out = Vec::with_capacity(header.len(len) + body.len());
    header.format(len, &mut out).expect("format into Vec");
    for (i, b) in body.iter().enumerate() {
        out.push(b ^ mask[i & 3]);
    }
    Bytes::from(out)
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

/// An unmasked close frame with a code and a short reason.
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let frame = Frame::close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.to_owned().into(),
    }));
    let mut out = Vec::with_capacity(frame.len());
    // Formatting into a Vec cannot fail.
    frame.format(&mut out).expect("format into Vec");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
