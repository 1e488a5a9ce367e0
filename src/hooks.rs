//! Authorization: the [`Hooks`] application code registers (in the spirit of SocketCluster's
//! middleware) and the `[[auth.rooms]]` rules of the configuration, for both protocols.
//! docs/AUTH.md ("Authorization") is the guide.
//!
//! Native and Socket.IO players meet in the same rooms, so the hooks run where both meet:
//! on the handshake paths (after the token is checked), before a client's join or message
//! reaches the relay, and in the relay's delivery loop for each recipient, on the
//! recipient's shard. A refusal answers the client that asked, with the code `forbidden`
//! and the hook's message, and touches nobody else.
//!
//! Hooks are `Send + Sync` closures shared by every shard (one [`Hooks`] per server, like
//! [`crate::socketio::Namespace`] handlers); each runs on the shard of the connection it is
//! about, so it must not block: it is on the path of every message it sees.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::auth::Identity;
use crate::proto::native::PayloadKind;
use crate::proto::socketio::Arg;
use crate::relay::{Body, PlayerName};

/// A refusal by a hook or a rule: the client is answered with the code `forbidden` and this
/// message (native `Error`, Socket.IO ack or `error` event, or `connect_error`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Forbidden {
    /// What the client is shown; say what the player may do instead.
    pub message: String,
}

impl Forbidden {
    /// A refusal with `message`.
    pub fn new(message: impl Into<String>) -> Forbidden {
        Forbidden {
            message: message.into(),
        }
    }
}

/// A member's message to a room, as hooks see it: the message hook may rewrite its event
/// and payload; the delivery hook reads it.
#[derive(Debug, Clone)]
pub struct Message {
    /// The room's name (on a Socket.IO namespace other than `/`, the relay's room key).
    pub room: String,
    /// The sender's player id (its token's `sub`, or a server-made id).
    pub from: PlayerName,
    /// The application event name.
    pub event: String,
    /// The payload.
    pub payload: Payload,
}

/// A message's payload, as the sender's protocol carried it.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// JSON text (a native `Send` of kind JSON, or a Socket.IO JSON argument).
    Json(Bytes),
    /// Opaque bytes (a native binary `Send`, or a Socket.IO binary argument).
    Binary(Bytes),
    /// A Socket.IO JSON argument holding binary buffers.
    Tree(Arg),
}

impl Message {
    /// The message a member's `body` carries to `room`; `None` for anything but a member's
    /// message (membership notices, application emits).
    pub fn of(room: &str, body: &Body) -> Option<Message> {
        let (from, event, payload) = match body {
            Body::Event {
                from,
                event,
                payload,
                kind,
            } => (
                from,
                event,
                match kind {
                    PayloadKind::Json => Payload::Json(payload.clone()),
                    PayloadKind::Binary => Payload::Binary(payload.clone()),
                },
            ),
            Body::Nested {
                from,
                event,
                payload,
            } => (from, event, Payload::Tree(payload.clone())),
            _ => return None,
        };
        Some(Message {
            room: room.to_owned(),
            from: Arc::clone(from),
            event: event.clone(),
            payload,
        })
    }

    /// The relay's body for this message.
    pub fn into_body(self) -> Body {
        let (event, from) = (self.event, self.from);
        match self.payload {
            Payload::Json(payload) => Body::Event {
                from,
                event,
                payload,
                kind: PayloadKind::Json,
            },
            Payload::Binary(payload) => Body::Event {
                from,
                event,
                payload,
                kind: PayloadKind::Binary,
            },
            Payload::Tree(payload) => Body::Nested {
                from,
                event,
                payload,
            },
        }
    }
}

/// What the message hook decides. To rewrite a message, change it and return `Pass`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Send it (as it now is).
    Pass,
    /// Send it to nobody, and tell the sender nothing (it is answered as if sent).
    Drop,
    /// Send it to nobody, and answer the sender with `forbidden` and this refusal.
    Refuse(Forbidden),
}

type HandshakeHook = dyn Fn(&Identity) -> Result<(), Forbidden> + Send + Sync;
type JoinHook = dyn Fn(&Identity, &str) -> Result<(), Forbidden> + Send + Sync;
type MessageHook = dyn Fn(&Identity, &mut Message) -> Verdict + Send + Sync;
type DeliveryHook = dyn Fn(&Identity, &Message) -> bool + Send + Sync;

/// The authorization hooks of a server and its `[[auth.rooms]]` rules. Built with
/// [`Hooks::new`] and the `on_*` methods, passed to
/// [`crate::Server::start_with_hooks`]; the rules are added from the configuration.
///
/// ```
/// use corelay::hooks::{Forbidden, Hooks, Payload, Verdict};
///
/// let hooks = Hooks::new()
///     .on_handshake(|who| match who.claims.get("banned") {
///         Some(_) => Err(Forbidden::new("banned")),
///         None => Ok(()),
///     })
///     .on_join(|who, room| {
///         if room.starts_with("admin-") && who.claims.get("role").and_then(|r| r.as_str()) != Some("admin") {
///             return Err(Forbidden::new("admins only"));
///         }
///         Ok(())
///     })
///     .on_message(|_who, msg| match msg.event.as_str() {
///         "cheat" => Verdict::Refuse(Forbidden::new("no cheating")),
///         "noise" => Verdict::Drop,
///         "chat" => {
///             msg.payload = Payload::Json(r#""(filtered)""#.into());
///             Verdict::Pass
///         }
///         _ => Verdict::Pass,
///     })
///     .on_delivery(|recipient, msg| msg.event != "secret" || recipient.is_authenticated());
/// ```
#[derive(Default, Clone)]
pub struct Hooks {
    handshake: Option<Arc<HandshakeHook>>,
    join: Option<Arc<JoinHook>>,
    message: Option<Arc<MessageHook>>,
    delivery: Option<Arc<DeliveryHook>>,
    rules: Vec<RoomRule>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("handshake", &self.handshake.is_some())
            .field("join", &self.join.is_some())
            .field("message", &self.message.is_some())
            .field("delivery", &self.delivery.is_some())
            .field("rules", &self.rules)
            .finish()
    }
}

impl Hooks {
    /// No hooks: everything is allowed (but for the configuration's rules).
    pub fn new() -> Hooks {
        Hooks::default()
    }

    /// Runs after a connection's token is checked (or found absent): `Err` refuses the
    /// connection (native: `Error` `forbidden` then close 1008; Socket.IO: CONNECT_ERROR).
    pub fn on_handshake(
        mut self,
        f: impl Fn(&Identity) -> Result<(), Forbidden> + Send + Sync + 'static,
    ) -> Hooks {
        self.handshake = Some(Arc::new(f));
        self
    }

    /// Runs when a client asks to join a room (native `Join`, Socket.IO `join`), with the
    /// room's name: `Err` refuses the join. Joins made by application code
    /// ([`crate::socketio::Socket::join`]) are not asked.
    pub fn on_join(
        mut self,
        f: impl Fn(&Identity, &str) -> Result<(), Forbidden> + Send + Sync + 'static,
    ) -> Hooks {
        self.join = Some(Arc::new(f));
        self
    }

    /// Runs on every message a client sends into a room (native `Send`, Socket.IO `to`),
    /// once, on the sender's shard: it may pass it, rewrite it (change `event` or
    /// `payload`, then pass), drop it silently or refuse it to its sender.
    pub fn on_message(
        mut self,
        f: impl Fn(&Identity, &mut Message) -> Verdict + Send + Sync + 'static,
    ) -> Hooks {
        self.message = Some(Arc::new(f));
        self
    }

    /// Runs for each recipient of a member's message, on the recipient's shard: `false`
    /// keeps the message from that recipient (nobody is told). Membership notices and
    /// application emits are not filtered. With no delivery hook, delivery costs nothing
    /// more than without hooks.
    pub fn on_delivery(
        mut self,
        f: impl Fn(&Identity, &Message) -> bool + Send + Sync + 'static,
    ) -> Hooks {
        self.delivery = Some(Arc::new(f));
        self
    }

    /// Adds the configuration's `[[auth.rooms]]` rules, checked before the hooks.
    pub fn with_rules(mut self, rules: &[RoomRule]) -> Hooks {
        self.rules.extend_from_slice(rules);
        self
    }

    /// Whether a connection of `who` may be made.
    pub fn check_handshake(&self, who: &Identity) -> Result<(), Forbidden> {
        match &self.handshake {
            Some(f) => f(who),
            None => Ok(()),
        }
    }

    /// Whether `who` may join `room`: every matching rule, then the join hook.
    pub fn check_join(&self, who: &Identity, room: &str) -> Result<(), Forbidden> {
        for rule in self.rules.iter().filter(|r| r.matches(room)) {
            if !rule.admits(who) {
                return Err(Forbidden::new(format!(
                    "room {room} requires the claim {}",
                    rule.claim
                )));
            }
        }
        match &self.join {
            Some(f) => f(who, room),
            None => Ok(()),
        }
    }

    /// What becomes of a member's message `body` to `room` from `who`: `Ok(Some(body))` to
    /// send (maybe rewritten), `Ok(None)` to drop silently, `Err` to refuse to the sender.
    /// A body that is no member's message passes untouched.
    pub fn check_message(
        &self,
        who: &Identity,
        room: &str,
        body: Body,
    ) -> Result<Option<Body>, Forbidden> {
        for rule in self.rules.iter().filter(|r| r.matches(room)) {
            if rule.read_only_for(who) {
                return Err(Forbidden::new(format!(
                    "{} members may not send to {room}",
                    rule.claim_value(who).unwrap_or_default()
                )));
            }
        }
        let Some(hook) = &self.message else {
            return Ok(Some(body));
        };
        let Some(mut message) = Message::of(room, &body) else {
            return Ok(Some(body));
        };
        match hook(who, &mut message) {
            Verdict::Pass => Ok(Some(message.into_body())),
            Verdict::Drop => Ok(None),
            Verdict::Refuse(why) => Err(why),
        }
    }

    /// The delivery hook, if one is set (the relay skips all of its work when not).
    pub fn delivery(&self) -> Option<&DeliveryHook> {
        self.delivery.as_deref()
    }
}

/// One `[[auth.rooms]]` rule: rooms whose name matches `room` admit only players whose
/// token carries `claim` with one of `values`, and members whose `claim` is one of
/// `read_only` may join but not send.
///
/// ```toml
/// [[auth.rooms]]
/// room = "match-*"
/// claim = "role"
/// values = ["player", "spectator"]
/// read_only = ["spectator"]
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomRule {
    /// Room-name pattern: `*` matches any run of characters (`match-*`, `*-lobby`, `*`).
    pub room: String,
    /// The claim the token must carry (a string, or an array of strings of which one
    /// counts).
    pub claim: String,
    /// The values that admit a player; empty: any value of the claim does.
    #[serde(default)]
    pub values: Vec<String>,
    /// The values whose members may join but not send into the room.
    #[serde(default)]
    pub read_only: Vec<String>,
}

impl RoomRule {
    /// Whether the rule is about `room`.
    pub fn matches(&self, room: &str) -> bool {
        glob_match(&self.room, room)
    }

    /// The claim's values in `who`'s token (none for an anonymous player).
    fn values_of<'a>(&self, who: &'a Identity) -> impl Iterator<Item = &'a str> {
        let claim = who.claims.get(&self.claim);
        let one = claim.and_then(Value::as_str);
        let many = claim
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str);
        one.into_iter().chain(many)
    }

    fn admits(&self, who: &Identity) -> bool {
        let mut values = self.values_of(who).peekable();
        if self.values.is_empty() {
            return values.peek().is_some();
        }
        values.any(|v| self.values.iter().any(|allowed| allowed == v))
    }

    fn read_only_for(&self, who: &Identity) -> bool {
        self.claim_value(who).is_some()
    }

    /// The first of `who`'s claim values that is read-only here.
    fn claim_value<'a>(&self, who: &'a Identity) -> Option<&'a str> {
        self.values_of(who)
            .find(|v| self.read_only.iter().any(|ro| ro == v))
    }

    /// Why the rule cannot work, for the configuration check.
    pub fn problem(&self) -> Option<String> {
        if self.room.is_empty() {
            return Some("an [[auth.rooms]] rule has an empty room pattern".into());
        }
        if self.claim.is_empty() {
            return Some(format!(
                "the [[auth.rooms]] rule for {} names no claim",
                self.room
            ));
        }
        None
    }
}

/// Whether `name` matches `pattern`, where `*` stands for any run of characters. Written
/// here rather than taken from a glob crate: room names are not paths, and this is the
/// whole syntax (a classic greedy match with one backtrack point, linear in practice).
fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while j < n.len() {
        if i < p.len() && p[i] == b'*' {
            star = Some((i, j));
            i += 1;
        } else if i < p.len() && p[i] == n[j] {
            i += 1;
            j += 1;
        } else if let Some((si, sj)) = star {
            // The last `*` takes one more character, and matching resumes after it.
            i = si + 1;
            j = sj + 1;
            star = Some((si, sj + 1));
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Map};

    fn who(claims: Value) -> Identity {
        let Value::Object(claims) = claims else {
            panic!("claims are an object")
        };
        Identity {
            player: Arc::from("p"),
            claims: Arc::new(claims),
            exp: None,
        }
    }

    #[test]
    fn globs_match_runs_of_any_characters() {
        for (p, n) in [
            ("match-*", "match-1"),
            ("match-*", "match-"),
            ("*", "x"),
            ("*-lobby", "eu-lobby"),
            ("a*b*c", "aXbYbc"),
            ("exact", "exact"),
        ] {
            assert!(glob_match(p, n), "{p} {n}");
        }
        for (p, n) in [
            ("match-*", "matc"),
            ("match-*", "lobby"),
            ("exact", "exact2"),
            ("a*c", "ab"),
        ] {
            assert!(!glob_match(p, n), "{p} {n}");
        }
    }

    fn rule() -> RoomRule {
        RoomRule {
            room: "match-*".into(),
            claim: "role".into(),
            values: vec!["player".into(), "spectator".into()],
            read_only: vec!["spectator".into()],
        }
    }

    #[test]
    fn a_rule_admits_by_claim_and_keeps_read_only_members_quiet() {
        let hooks = Hooks::new().with_rules(&[rule()]);
        let body = || Body::Event {
            from: Arc::from("p"),
            event: "e".into(),
            payload: Bytes::from_static(b"1"),
            kind: PayloadKind::Json,
        };
        let anonymous = Identity {
            player: Arc::from("p"),
            claims: Arc::new(Map::new()),
            exp: None,
        };
        assert!(hooks.check_join(&anonymous, "match-1").is_err());
        assert!(hooks.check_join(&anonymous, "lobby").is_ok());
        assert!(hooks
            .check_join(&who(json!({"role": "guest"})), "match-1")
            .is_err());
        let player = who(json!({"role": "player"}));
        let spectator = who(json!({"role": ["spectator"]}));
        assert!(hooks.check_join(&player, "match-1").is_ok());
        assert!(hooks.check_join(&spectator, "match-1").is_ok());
        assert!(hooks
            .check_message(&player, "match-1", body())
            .unwrap()
            .is_some());
        let refused = hooks
            .check_message(&spectator, "match-1", body())
            .unwrap_err();
        assert!(refused.message.contains("spectator"), "{refused}");
        assert!(hooks.check_message(&spectator, "lobby", body()).is_ok());
    }

    #[test]
    fn the_message_hook_rewrites_drops_and_refuses() {
        let hooks = Hooks::new().on_message(|_, m| match m.event.as_str() {
            "drop" => Verdict::Drop,
            "no" => Verdict::Refuse(Forbidden::new("no")),
            _ => {
                m.event = "renamed".into();
                m.payload = Payload::Binary(Bytes::from_static(b"x"));
                Verdict::Pass
            }
        });
        let body = |event: &str| Body::Event {
            from: Arc::from("p"),
            event: event.into(),
            payload: Bytes::from_static(b"1"),
            kind: PayloadKind::Json,
        };
        let who = who(json!({}));
        assert!(hooks
            .check_message(&who, "r", body("drop"))
            .unwrap()
            .is_none());
        assert_eq!(
            hooks.check_message(&who, "r", body("no")).unwrap_err(),
            Forbidden::new("no")
        );
        match hooks.check_message(&who, "r", body("e")).unwrap() {
            Some(Body::Event {
                event,
                payload,
                kind: PayloadKind::Binary,
                ..
            }) => assert_eq!((event.as_str(), &payload[..]), ("renamed", &b"x"[..])),
            other => panic!("{other:?}"),
        }
    }
}
