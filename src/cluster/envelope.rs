//! The envelope a broadcast crosses nodes in: one compact binary message per broadcast,
//! published once on the room's Redis channel and read by every node subscribed to it.
//!
//! ```text
//! version u8 (1) | kind u8 | node u64 LE | members u32 LE | fields of the kind
//! ```
//!
//! `node` is the publishing node's incarnation (a node hears its own publications back and
//! drops them), `members` the room's member count on that node after the broadcast (how the
//! others count the room cluster-wide). Strings are a u16 LE length and UTF-8 bytes, byte
//! strings a u32 LE length and bytes; an event's payload is whatever is left, so that it is
//! read without a copy. The room is the channel's name, not repeated here.
//!
//! | kind | body | fields |
//! |------|------|--------|
//! | 1, 2 | a member's event, JSON or binary | from, event, payload (the rest) |
//! | 3 | a Socket.IO event with buffers inside | from, event, arg |
//! | 4 | an application's emit | event, u16 count, args |
//! | 5 | member joined | player, joined u64 (ms since the Unix epoch) |
//! | 6 | member left | player, reason u8 (0 left, 1 disconnected, 2 kicked) |
//! | 7 | member away | player |
//! | 8 | member back | player, joined u64 |
//! | 9 | hello: a node began to follow the room | — |
//! | 10 | presence: every member the node has in the room, and the room's shared state | u32 count, (player, joined u64) each, flags u8 (1 locked, 2 state, 4 metadata), then state and metadata as byte strings when flagged |
//! | 11 | a host's action | u8 (0 unlock, 1 lock, 2 kick, 3 metadata, 4 state), then the player or the JSON as a byte string |
//!
//! `joined` is when the member joined: the room's host on every node is the member present
//! longest across nodes (`relay/nodes.rs`).
//!
//! An arg is a tag u8 and its bytes: 0 JSON text, 1 binary, 2 JSON with placeholders and
//! then a u16 count of buffers. Anything else, or a length past the end, is not an
//! envelope: the reader drops it and counts it.

use std::sync::Arc;

use bytes::Bytes;

use crate::proto::native::{HostAction, LeaveReason, PayloadKind};
use crate::proto::socketio::Arg;
use crate::relay::{Body, PlayerName};

/// The format's version, first byte of every envelope.
const VERSION: u8 = 1;

/// Bytes before a kind's fields.
const HEADER: usize = 1 + 1 + 8 + 4;

/// What an envelope carries.
#[derive(Debug)]
pub enum Content {
    /// A broadcast to deliver to the room's members here.
    Broadcast(Body),
    /// A node began to follow the room: nodes with members answer with their presence.
    Hello,
    /// Every member the publishing node has in the room, and the room's shared state.
    Presence(Presence),
    /// The room's host (on the publishing node) acted.
    Action(HostAction),
}

/// What a node says of a room when another begins to follow it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Presence {
    /// Its members, by name, with when each joined (ms since the Unix epoch).
    pub members: Vec<(PlayerName, u64)>,
    /// The room is locked by its host.
    pub locked: bool,
    /// The state its host last set.
    pub state: Option<Arc<str>>,
    /// The public metadata its host last set.
    pub metadata: Option<Arc<str>>,
}

/// An envelope read back.
#[derive(Debug)]
pub struct Envelope {
    /// The publishing node's incarnation.
    pub node: u64,
    /// The room's members on that node.
    pub members: u32,
    /// When the member a join or back notice names joined (ms since the Unix epoch); 0
    /// for any other content.
    pub joined: u64,
    /// What it carries.
    pub content: Content,
}

/// `body` from node `node`, whose room has `members` members there, as an envelope; `None`
/// for a body that does not cross ([`crate::relay::crosses`]). `joined` is when the member
/// a join or back notice names joined.
pub fn encode(node: u64, members: u32, joined: u64, body: &Body) -> Option<Vec<u8>> {
    // The kind byte is written once the body has said which it is; the capacity is the
    // header and the largest fields (names and args are small beside a payload).
    let payload = match body {
        Body::Event { payload, .. } => payload.len(),
        _ => 0,
    };
    let mut out = header(0, node, members, 64 + payload);
    let kind = match body {
        Body::Event {
            from,
            event,
            payload,
            kind,
        } => {
            put_str(&mut out, from);
            put_str(&mut out, event);
            out.extend_from_slice(payload);
            match kind {
                PayloadKind::Json => 1,
                PayloadKind::Binary => 2,
            }
        }
        Body::Nested {
            from,
            event,
            payload,
        } => {
            put_str(&mut out, from);
            put_str(&mut out, event);
            put_arg(&mut out, payload);
            3
        }
        Body::Emit { event, args } => {
            put_str(&mut out, event);
            out.extend_from_slice(&(args.len().min(usize::from(u16::MAX)) as u16).to_le_bytes());
            for arg in args.iter().take(usize::from(u16::MAX)) {
                put_arg(&mut out, arg);
            }
            4
        }
        Body::MemberJoined { player, .. } => {
            put_str(&mut out, player);
            out.extend_from_slice(&joined.to_le_bytes());
            5
        }
        Body::MemberLeft { player, reason, .. } => {
            put_str(&mut out, player);
            out.push(match reason {
                LeaveReason::Left => 0,
                LeaveReason::Disconnected => 1,
                LeaveReason::Kicked => 2,
            });
            6
        }
        Body::MemberAway { player } => {
            put_str(&mut out, player);
            7
        }
        Body::MemberBack { player } => {
            put_str(&mut out, player);
            out.extend_from_slice(&joined.to_le_bytes());
            8
        }
        Body::Host { .. } => return None,
    };
    out[1] = kind;
    Some(out)
}

/// A hello from node `node`.
pub fn encode_hello(node: u64) -> Vec<u8> {
    header(9, node, 0, 0)
}

/// The presence of node `node` in a room.
pub fn encode_presence(node: u64, p: &Presence) -> Vec<u8> {
    let text = |t: &Option<Arc<str>>| t.as_ref().map_or(0, |t| 4 + t.len());
    let size = 5
        + p.members.iter().map(|(n, _)| 10 + n.len()).sum::<usize>()
        + text(&p.state)
        + text(&p.metadata);
    let mut out = header(10, node, p.members.len() as u32, size);
    out.extend_from_slice(&(p.members.len() as u32).to_le_bytes());
    for (name, joined) in &p.members {
        put_str(&mut out, name);
        out.extend_from_slice(&joined.to_le_bytes());
    }
    let flags =
        u8::from(p.locked) | u8::from(p.state.is_some()) << 1 | u8::from(p.metadata.is_some()) << 2;
    out.push(flags);
    for t in [&p.state, &p.metadata].into_iter().flatten() {
        put_bytes(&mut out, t.as_bytes());
    }
    out
}

/// Node `node`'s host of a room did `action`.
pub fn encode_action(node: u64, action: &HostAction) -> Vec<u8> {
    let (code, text): (u8, &str) = match action {
        HostAction::Lock { locked: false } => (0, ""),
        HostAction::Lock { locked: true } => (1, ""),
        HostAction::Kick { player } => (2, player),
        HostAction::SetMetadata { metadata } => (3, metadata),
        HostAction::SetState { state } => (4, state),
    };
    let mut out = header(11, node, 0, 5 + text.len());
    out.push(code);
    put_bytes(&mut out, text.as_bytes());
    out
}

fn header(kind: u8, node: u64, members: u32, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + size);
    out.push(VERSION);
    out.push(kind);
    out.extend_from_slice(&node.to_le_bytes());
    out.extend_from_slice(&members.to_le_bytes());
    out
}

/// First byte of a numbered envelope: a broadcast that went through its room's stream
/// (history on, docs/SCALING.md "History and resume across nodes").
///
/// ```text
/// 2 | seq u64 LE | token u64 LE | envelope
/// ```
///
/// The publishing node writes the token (its home's handle on the broadcast it waits to
/// hear back) and the envelope; the stream's script puts the number in front.
pub const NUMBERED: u8 = 2;

/// What a node hands the stream's script for `envelope`, whose broadcast its home knows
/// by `token`.
pub fn for_stream(token: u64, envelope: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + envelope.len());
    out.extend_from_slice(&token.to_le_bytes());
    out.extend_from_slice(envelope);
    out
}

/// A numbered envelope's number, token and envelope; `None` when `bytes` is not one.
pub fn numbered(bytes: &Bytes) -> Option<(u64, u64, Bytes)> {
    if bytes.first() != Some(&NUMBERED) || bytes.len() < 17 {
        return None;
    }
    let seq = u64::from_le_bytes(bytes[1..9].try_into().ok()?);
    let token = u64::from_le_bytes(bytes[9..17].try_into().ok()?);
    Some((seq, token, bytes.slice(17..)))
}

/// The node that published `bytes`, read without decoding the rest (a node drops its own
/// publications before anything else).
pub fn node_of(bytes: &[u8]) -> Option<u64> {
    (bytes.first() == Some(&VERSION))
        .then(|| bytes.get(2..10)?.try_into().ok().map(u64::from_le_bytes))
        .flatten()
}

/// Reads an envelope; `None` when `bytes` is not one. Payloads are slices of `bytes`.
pub fn decode(bytes: &Bytes) -> Option<Envelope> {
    let mut r = Reader { bytes, at: 0 };
    if r.u8()? != VERSION {
        return None;
    }
    let kind = r.u8()?;
    let node = u64::from_le_bytes(r.take(8)?.as_ref().try_into().ok()?);
    let members = u32::from_le_bytes(r.take(4)?.as_ref().try_into().ok()?);
    let mut joined = 0;
    let content = match kind {
        1 | 2 => {
            let from = r.name()?;
            let event = r.string()?;
            let payload = r.rest();
            let kind = if kind == 1 {
                PayloadKind::Json
            } else {
                PayloadKind::Binary
            };
            Content::Broadcast(Body::Event {
                from,
                event,
                payload,
                kind,
            })
        }
        3 => Content::Broadcast(Body::Nested {
            from: r.name()?,
            event: r.string()?,
            payload: r.arg()?,
        }),
        4 => {
            let event = r.string()?;
            let count = r.u16()?;
            let args = (0..count).map(|_| r.arg()).collect::<Option<Vec<_>>>()?;
            Content::Broadcast(Body::Emit { event, args })
        }
        5 => {
            let player = r.name()?;
            joined = r.u64()?;
            Content::Broadcast(Body::MemberJoined { player, members })
        }
        6 => {
            let player = r.name()?;
            let reason = match r.u8()? {
                0 => LeaveReason::Left,
                1 => LeaveReason::Disconnected,
                2 => LeaveReason::Kicked,
                _ => return None,
            };
            Content::Broadcast(Body::MemberLeft {
                player,
                members,
                reason,
            })
        }
        7 => Content::Broadcast(Body::MemberAway { player: r.name()? }),
        8 => {
            let player = r.name()?;
            joined = r.u64()?;
            Content::Broadcast(Body::MemberBack { player })
        }
        9 => Content::Hello,
        10 => {
            let count = r.u32()?;
            // Each member takes at least its ten bytes: a count past that is a lie.
            if count as usize > r.left() / 10 {
                return None;
            }
            let members = (0..count)
                .map(|_| Some((r.name()?, r.u64()?)))
                .collect::<Option<Vec<_>>>()?;
            let flags = r.u8()?;
            if flags > 7 {
                return None;
            }
            let state = if flags & 2 != 0 {
                Some(r.text()?)
            } else {
                None
            };
            let metadata = if flags & 4 != 0 {
                Some(r.text()?)
            } else {
                None
            };
            Content::Presence(Presence {
                members,
                locked: flags & 1 != 0,
                state,
                metadata,
            })
        }
        11 => {
            let code = r.u8()?;
            let text = r.text()?.to_string();
            Content::Action(match code {
                0 | 1 if text.is_empty() => HostAction::Lock { locked: code == 1 },
                2 if !text.is_empty() => HostAction::Kick { player: text },
                3 => HostAction::SetMetadata { metadata: text },
                4 => HostAction::SetState { state: text },
                _ => return None,
            })
        }
        _ => return None,
    };
    if r.left() != 0 {
        return None;
    }
    Some(Envelope {
        node,
        members,
        joined,
        content,
    })
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Names are bounded far below 64 KiB (`max_name_len`, token subjects); a longer one is
    // cut at a character boundary rather than mis-framed.
    let mut end = s.len().min(usize::from(u16::MAX));
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&(end as u16).to_le_bytes());
    out.extend_from_slice(&s.as_bytes()[..end]);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

fn put_arg(out: &mut Vec<u8>, arg: &Arg) {
    match arg {
        Arg::Json(value) => {
            out.push(0);
            put_bytes(out, value.to_string().as_bytes());
        }
        Arg::Binary(b) => {
            out.push(1);
            put_bytes(out, b);
        }
        Arg::Tree { value, attachments } => {
            out.push(2);
            put_bytes(out, value.to_string().as_bytes());
            out.extend_from_slice(&(attachments.len() as u16).to_le_bytes());
            for a in attachments {
                put_bytes(out, a);
            }
        }
    }
}

struct Reader<'a> {
    bytes: &'a Bytes,
    at: usize,
}

impl Reader<'_> {
    fn left(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn take(&mut self, n: usize) -> Option<Bytes> {
        if n > self.left() {
            return None;
        }
        let b = self.bytes.slice(self.at..self.at + n);
        self.at += n;
        Some(b)
    }

    fn rest(&mut self) -> Bytes {
        let b = self.bytes.slice(self.at..);
        self.at = self.bytes.len();
        b
    }

    fn u8(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.at)?;
        self.at += 1;
        Some(b)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.as_ref().try_into().ok()?))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.as_ref().try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.as_ref().try_into().ok()?))
    }

    /// A byte string (u32 length) of UTF-8 text.
    fn text(&mut self) -> Option<Arc<str>> {
        let n = self.u32()? as usize;
        std::str::from_utf8(&self.take(n)?).ok().map(Arc::from)
    }

    fn string(&mut self) -> Option<String> {
        let n = self.u16()?;
        String::from_utf8(self.take(usize::from(n))?.to_vec()).ok()
    }

    fn name(&mut self) -> Option<PlayerName> {
        self.string().map(Arc::from)
    }

    fn json(&mut self) -> Option<serde_json::Value> {
        let n = self.u32()? as usize;
        serde_json::from_slice(&self.take(n)?).ok()
    }

    fn arg(&mut self) -> Option<Arg> {
        match self.u8()? {
            0 => Some(Arg::Json(self.json()?)),
            1 => {
                let n = self.u32()? as usize;
                Some(Arg::Binary(self.take(n)?))
            }
            2 => {
                let value = self.json()?;
                let count = self.u16()?;
                let attachments = (0..count)
                    .map(|_| {
                        let n = self.u32()? as usize;
                        self.take(n)
                    })
                    .collect::<Option<Vec<_>>>()?;
                Some(Arg::Tree { value, attachments })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(body: Body) -> Body {
        let bytes = Bytes::from(encode(7, 3, 42, &body).unwrap());
        assert_eq!(node_of(&bytes), Some(7));
        let e = decode(&bytes).unwrap();
        assert_eq!((e.node, e.members), (7, 3));
        match e.content {
            Content::Broadcast(b) => b,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_crossing_body_comes_back_as_it_went() {
        let name: PlayerName = "alice".into();
        let cases = [
            Body::Event {
                from: Arc::clone(&name),
                event: "move".into(),
                payload: Bytes::from_static(b"{\"x\":1}"),
                kind: PayloadKind::Json,
            },
            Body::Event {
                from: Arc::clone(&name),
                event: "raw".into(),
                payload: Bytes::from_static(&[0, 255, 1]),
                kind: PayloadKind::Binary,
            },
            Body::Nested {
                from: Arc::clone(&name),
                event: "frame".into(),
                payload: Arg::Tree {
                    value: serde_json::json!({"f": crate::proto::socketio::placeholder(0)}),
                    attachments: vec![Bytes::from_static(b"\x01\x02")],
                },
            },
            Body::Emit {
                event: "tick".into(),
                args: vec![
                    Arg::Json(serde_json::json!([1, "two"])),
                    Arg::Binary(Bytes::from_static(b"bin")),
                ],
            },
            Body::MemberJoined {
                player: Arc::clone(&name),
                members: 3,
            },
            Body::MemberLeft {
                player: Arc::clone(&name),
                members: 3,
                reason: LeaveReason::Kicked,
            },
            Body::MemberAway {
                player: Arc::clone(&name),
            },
            Body::MemberBack {
                player: Arc::clone(&name),
            },
        ];
        for body in cases {
            let back = round_trip(body.clone());
            assert_eq!(format!("{back:?}"), format!("{body:?}"));
        }
        assert!(encode(
            1,
            1,
            0,
            &Body::Host {
                player: name,
                state: None
            }
        )
        .is_none());
    }

    #[test]
    fn an_event_costs_fourteen_bytes_plus_its_names_and_payload() {
        let body = Body::Event {
            from: "p1".into(),
            event: "m".into(),
            payload: Bytes::from_static(&[0; 32]),
            kind: PayloadKind::Binary,
        };
        assert_eq!(
            encode(1, 1, 0, &body).unwrap().len(),
            HEADER + 2 + 2 + 2 + 1 + 32
        );
    }

    #[test]
    fn a_numbered_envelope_carries_its_number_and_token_before_the_envelope() {
        let envelope = encode_hello(7);
        let mut bytes = vec![NUMBERED];
        bytes.extend_from_slice(&5_000_000_000u64.to_le_bytes());
        bytes.extend_from_slice(&for_stream(42, &envelope));
        let (seq, token, inner) = numbered(&Bytes::from(bytes.clone())).unwrap();
        assert_eq!((seq, token, &inner[..]), (5_000_000_000, 42, &envelope[..]));
        assert_eq!(node_of(&inner), Some(7));
        assert!(numbered(&Bytes::from(envelope)).is_none(), "not numbered");
        assert!(
            numbered(&Bytes::copy_from_slice(&bytes[..16])).is_none(),
            "short"
        );
    }

    #[test]
    fn hello_and_presence_come_back() {
        let bytes = Bytes::from(encode_hello(9));
        assert!(matches!(decode(&bytes).unwrap().content, Content::Hello));
        for presence in [
            Presence {
                members: vec![("a".into(), 1), ("bé".into(), u64::MAX)],
                locked: true,
                state: Some("{\"round\":3}".into()),
                metadata: None,
            },
            Presence {
                members: vec![],
                locked: false,
                state: None,
                metadata: Some("{}".into()),
            },
        ] {
            let e = decode(&Bytes::from(encode_presence(9, &presence))).unwrap();
            assert_eq!(e.members as usize, presence.members.len());
            match e.content {
                Content::Presence(got) => assert_eq!(got, presence),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn host_actions_come_back() {
        for action in [
            HostAction::Lock { locked: true },
            HostAction::Lock { locked: false },
            HostAction::Kick {
                player: "bob".into(),
            },
            HostAction::SetMetadata {
                metadata: "{\"mode\":\"ctf\"}".into(),
            },
            HostAction::SetState {
                state: "[1,2]".into(),
            },
        ] {
            let e = decode(&Bytes::from(encode_action(5, &action))).unwrap();
            match e.content {
                Content::Action(got) => assert_eq!(got, action),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn anything_else_is_refused_without_a_panic() {
        let good = encode(
            1,
            1,
            0,
            &Body::MemberLeft {
                player: "p".into(),
                members: 1,
                reason: LeaveReason::Left,
            },
        )
        .unwrap();
        // Every truncation of a fixed-size envelope is refused, as are trailing bytes, a
        // wrong version, an unknown kind and an unknown reason.
        for end in 0..good.len() {
            assert!(
                decode(&Bytes::copy_from_slice(&good[..end])).is_none(),
                "{end}"
            );
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(decode(&Bytes::from(longer)).is_none());
        for (at, value) in [(0, 2), (1, 99), (good.len() - 1, 7)] {
            let mut bad = good.clone();
            bad[at] = value;
            assert!(decode(&Bytes::from(bad)).is_none(), "byte {at}");
        }
        // A presence claiming more names than it could hold.
        let mut lie = encode_presence(1, &Presence::default());
        lie[HEADER..HEADER + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&Bytes::from(lie)).is_none());
        // Random bytes.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2_000 {
            let len = (x % 40) as usize;
            let mut b = vec![VERSION];
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b.push(x as u8);
            }
            let _ = decode(&Bytes::from(b));
        }
    }
}
