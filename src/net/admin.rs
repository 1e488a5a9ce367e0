//! The operator's dashboard at `/admin` (docs/OPERATIONS.md, "Dashboard"): a page, its
//! script and style (embedded in the binary: no CDN, works offline), a live feed over a
//! WebSocket ([`feed`]), a JSON API under `/admin/api/`, and three actions: kick a player,
//! close a room, start a drain.
//!
//! Every path needs the operator's token (`admin.token`): `Authorization: Bearer <token>`,
//! or the cookie the login form sets, a digest of the token (`HttpOnly`, `SameSite=Strict`)
//! so that the cookie is never the token itself. Both are compared in constant time
//! ([`crate::auth::constant_time_eq`]). With no token configured every path answers 404, as
//! an unknown path does. A browser's request that changes something, and the feed's
//! upgrade, must come from the dashboard's own origin (`Origin` matches `Host`).
//!
//! Any shard serves the dashboard. Figures are read from every shard's counters, which the
//! shards write without locks; rooms and members are gathered from the shards over the mesh
//! when asked, and actions travel the same way to the shard that holds the player or the
//! room (`relay/admin.rs`). A Socket.IO player kicked on another shard is ended there by
//! that shard's [`AdminEndpoint`], whose timer the relay fires.

pub mod feed;

use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use self::feed::{AdminFeed, ANSWER_TIMEOUT, INBOX_LIMITS, MAX_VIEW_MESSAGE};
use super::engineio::EngineEndpoint;
use super::front::{self, Head, Next, ReadBody, Route};
use super::websocket::WebSocket;
use crate::auth::constant_time_eq;
use crate::config::AdminConfig;
use crate::proto::http::{self, HttpError, Request};
use crate::relay::{Drained, Outbox, PlayerId, RoomsFilter, MAX_ROOMS_PAGE};
use crate::shard::{Connection, Cx, Ended, Endpoint, Shard, Step};

/// The dashboard's page.
pub const ADMIN_PATH: &str = "/admin";
/// The login form's target (POST).
pub const LOGIN_PATH: &str = "/admin/login";
/// Forgets the login cookie (POST).
pub const LOGOUT_PATH: &str = "/admin/logout";
/// The page's script.
pub const SCRIPT_PATH: &str = "/admin/app.js";
/// The page's style.
pub const STYLE_PATH: &str = "/admin/app.css";
/// The live feed (WebSocket).
pub const FEED_PATH: &str = "/admin/feed";
/// The figures, once (GET).
pub const STATS_PATH: &str = "/admin/api/stats";
/// A page of the rooms table (GET `?search=&page=`).
pub const ROOMS_PATH: &str = "/admin/api/rooms";
/// One room and its members (GET `?key=`).
pub const ROOM_PATH: &str = "/admin/api/room";
/// Kicks a player (POST `{"player": "<id>"}`).
pub const KICK_PATH: &str = "/admin/api/kick";
/// Closes a room (POST `{"room": "<key>"}`).
pub const CLOSE_ROOM_PATH: &str = "/admin/api/close-room";
/// Starts a drain (POST).
pub const DRAIN_PATH: &str = "/admin/api/drain";

/// Every path the dashboard serves, for the front's routes.
pub const ADMIN_PATHS: [&str; 12] = [
    ADMIN_PATH,
    LOGIN_PATH,
    LOGOUT_PATH,
    SCRIPT_PATH,
    STYLE_PATH,
    FEED_PATH,
    STATS_PATH,
    ROOMS_PATH,
    ROOM_PATH,
    KICK_PATH,
    CLOSE_ROOM_PATH,
    DRAIN_PATH,
];

/// The login cookie's name.
pub const COOKIE: &str = "corelay_admin";

/// Largest request body read: a login form or an action's JSON is a few dozen bytes.
const MAX_BODY: usize = 4096;

static PAGE: &str = include_str!("admin/page/index.html");
static LOGIN_PAGE: &str = include_str!("admin/page/login.html");
static SCRIPT: &str = include_str!("admin/page/app.js");
static STYLE: &str = include_str!("admin/page/app.css");

/// What the browser may load and connect to: the dashboard's own files and feed, nothing
/// else (no inline script, no other origin, no framing).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The digest of `token` the login cookie carries: a stolen cookie is not the token (it
/// does not work as a `Bearer`), and a new token invalidates every cookie.
pub fn cookie_value(token: &str) -> String {
    let digest = Sha256::new()
        .chain_update(b"corelay admin cookie\0")
        .chain_update(token.as_bytes())
        .finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The dashboard's settings and state on one shard, shared by its route and connections.
struct Admin {
    token: Option<Box<str>>,
    cookie: Box<str>,
    endpoint: Rc<AdminEndpoint>,
}

/// The dashboard's endpoint on one shard: it ends the Socket.IO sessions of players kicked
/// here (the relay fires its timer; see [`crate::relay::Relay::take_kicked_sessions`]).
pub struct AdminEndpoint {
    engine: Rc<EngineEndpoint>,
}

impl AdminEndpoint {
    /// The endpoint, ending sessions of `engine`.
    pub fn new(engine: Rc<EngineEndpoint>) -> Rc<AdminEndpoint> {
        Rc::new(AdminEndpoint { engine })
    }

    /// Ends the sessions of the Socket.IO players the relay kicked.
    fn end_kicked(&self, shard: &Shard) {
        let players = shard.relay.borrow_mut().take_kicked_sessions();
        if !players.is_empty() {
            self.engine.kick(&players);
        }
    }
}

impl Endpoint for AdminEndpoint {
    fn on_timer(&self, shard: &Rc<Shard>, _key: u64, _now: Instant) {
        self.end_kicked(shard);
    }
}

/// The route of every dashboard path ([`ADMIN_PATHS`]).
pub struct AdminRoute {
    admin: Rc<Admin>,
}

impl AdminRoute {
    /// The dashboard of `config` (off, every path 404, without a token), its kicks of
    /// Socket.IO players ended by `endpoint`.
    pub fn new(config: &AdminConfig, endpoint: Rc<AdminEndpoint>) -> AdminRoute {
        let token = config.token.as_deref();
        AdminRoute {
            admin: Rc::new(Admin {
                token: token.map(Box::from),
                cookie: token.map(cookie_value).unwrap_or_default().into(),
                endpoint,
            }),
        }
    }
}

/// An answer to a dashboard request.
struct Answer {
    status: u16,
    content_type: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Answer {
        Answer {
            status,
            content_type,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    fn json(status: u16, value: &Value) -> Answer {
        Answer::new(status, "application/json", value.to_string())
    }

    fn error(status: u16, message: &str) -> Answer {
        Answer::json(status, &json!({ "error": message }))
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Answer {
        self.headers.push((name, value.into()));
        self
    }

    /// Queues the answer and goes on to `next`.
    fn send(self, cx: &mut Cx<'_>, next: Next, leftover: Vec<u8>) -> Step {
        let reason = match self.status {
            200 => "OK",
            202 => "Accepted",
            303 => "See Other",
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            413 => "Payload Too Large",
            415 => "Unsupported Media Type",
            _ => "Gateway Timeout",
        };
        let mut headers: Vec<(&str, &str)> = vec![
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
            // Not `no-referrer`: under it a browser sends `Origin: null` with the login
            // form, which the origin check refuses.
            ("Referrer-Policy", "same-origin"),
            ("X-Frame-Options", "DENY"),
            ("Content-Security-Policy", CSP),
        ];
        headers.extend(self.headers.iter().map(|(n, v)| (*n, v.as_str())));
        let bytes = http::response(
            self.status,
            reason,
            self.content_type,
            &headers,
            &self.body,
            next.keep_alive,
        );
        let _ = cx.out.push(Bytes::from(bytes));
        next.step(leftover)
    }
}

/// Whether a browser's request comes from the dashboard's own origin: no `Origin` (not a
/// browser, or a same-origin GET), or one naming the `Host` the request was sent to.
fn same_origin(request: &Request) -> bool {
    let Some(origin) = request.header("origin") else {
        return true;
    };
    let Some(host) = request.header("host") else {
        return false;
    };
    let named = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    named.is_some_and(|h| h.eq_ignore_ascii_case(host))
}

/// The login page, with `note` (escaped) above the form.
fn login_page(note: &str) -> String {
    let escaped: String = note
        .chars()
        .map(|c| match c {
            '<' => "&lt;".to_owned(),
            '>' => "&gt;".to_owned(),
            '&' => "&amp;".to_owned(),
            '"' => "&quot;".to_owned(),
            c => c.to_string(),
        })
        .collect();
    LOGIN_PAGE.replace("<!--note-->", &escaped)
}

impl Admin {
    /// Whether the request carries the token or the login cookie.
    fn authorized(&self, request: &Request) -> bool {
        let Some(token) = &self.token else {
            return false;
        };
        if let Some(value) = request.header("authorization") {
            let (scheme, given) = value.trim().split_once(' ').unwrap_or((value, ""));
            return scheme.eq_ignore_ascii_case("bearer")
                && constant_time_eq(token.as_bytes(), given.trim().as_bytes());
        }
        request
            .cookie(COOKIE)
            .is_some_and(|given| constant_time_eq(self.cookie.as_bytes(), given.as_bytes()))
    }

    /// The answer to a request without the token: the login form for the page, a JSON
    /// error for the rest.
    fn unauthorized(&self, request: &Request) -> Answer {
        let answer = if request.path == ADMIN_PATH {
            Answer::new(401, "text/html; charset=utf-8", login_page(""))
        } else {
            Answer::error(401, "the admin token is missing or wrong")
        };
        answer.header("WWW-Authenticate", "Bearer realm=\"corelay admin\"")
    }

    /// A request whose body (if any) has been read.
    fn serve(
        self: &Rc<Self>,
        cx: &mut Cx<'_>,
        request: Request,
        body: &[u8],
        next: Next,
        leftover: Vec<u8>,
    ) -> Step {
        let post = request.method == "POST";
        if post && !same_origin(&request) {
            return Answer::error(403, "cross-origin request refused").send(cx, next, leftover);
        }
        if request.path == LOGIN_PATH || request.path == LOGOUT_PATH {
            if !post {
                return Answer::error(405, "use POST").send(cx, next, leftover);
            }
            return self.login(&request, body).send(cx, next, leftover);
        }
        if request.path == STYLE_PATH && request.method == "GET" {
            // The login form wears it too; it holds nothing but looks.
            let css = "text/css; charset=utf-8";
            return Answer::new(200, css, STYLE).send(cx, next, leftover);
        }
        if !self.authorized(&request) {
            return self.unauthorized(&request).send(cx, next, leftover);
        }
        let wants_post = [KICK_PATH, CLOSE_ROOM_PATH, DRAIN_PATH].contains(&request.path.as_str());
        if post != wants_post || !(post || request.method == "GET") {
            let method = if wants_post { "use POST" } else { "use GET" };
            return Answer::error(405, method).send(cx, next, leftover);
        }
        let html = "text/html; charset=utf-8";
        let ask = match request.path.as_str() {
            ADMIN_PATH => return Answer::new(200, html, PAGE).send(cx, next, leftover),
            SCRIPT_PATH => {
                let js = "text/javascript; charset=utf-8";
                return Answer::new(200, js, SCRIPT).send(cx, next, leftover);
            }
            STATS_PATH => {
                let (value, _) = feed::stats(cx.shard, None, cx.now);
                return Answer::json(200, &value).send(cx, next, leftover);
            }
            DRAIN_PATH => return self.drain(cx).send(cx, next, leftover),
            ROOMS_PATH => {
                let search = http::form_value(&request.query, "search").unwrap_or_default();
                let page = http::form_value(&request.query, "page")
                    .and_then(|p| p.parse::<u32>().ok())
                    .unwrap_or(0);
                if page > MAX_ROOMS_PAGE || search.len() > cx.shard.config.max_name_len {
                    let bad = Answer::error(400, "page or search out of bounds");
                    return bad.send(cx, next, leftover);
                }
                Ask::Rooms(RoomsFilter { search, page })
            }
            ROOM_PATH => match http::form_value(&request.query, "key") {
                Some(key) if !key.is_empty() => Ask::Room(key),
                _ => return Answer::error(400, "say which room: ?key=").send(cx, next, leftover),
            },
            KICK_PATH | CLOSE_ROOM_PATH => match action(&request, body) {
                Ok(ask) => ask,
                Err(answer) => return answer.send(cx, next, leftover),
            },
            _ => return self.feed(cx, &request, next, leftover),
        };
        let waiting = Waiting {
            admin: Rc::clone(self),
            inbox: Rc::new(Outbox::with_overflow_frame(INBOX_LIMITS, None)),
            ask: Some(ask),
            next: Some(next),
            pipelined: leftover,
        };
        Step::Upgrade(Box::new(waiting), Vec::new())
    }

    /// `POST /admin/login` (a form with `token`): the cookie on success, the form again
    /// otherwise. `POST /admin/logout`: the cookie forgotten.
    fn login(&self, request: &Request, body: &[u8]) -> Answer {
        let secure = request
            .header("x-forwarded-proto")
            .is_some_and(|p| p.eq_ignore_ascii_case("https"));
        let attributes = format!(
            "Path={ADMIN_PATH}; HttpOnly; SameSite=Strict{}",
            if secure { "; Secure" } else { "" }
        );
        let home = |answer: Answer| answer.header("Location", ADMIN_PATH);
        if request.path == LOGOUT_PATH {
            let forget = format!("{COOKIE}=; Max-Age=0; {attributes}");
            return home(Answer::new(303, "text/plain", "")).header("Set-Cookie", forget);
        }
        let Some(token) = &self.token else {
            return Answer::error(404, "not found");
        };
        let given = std::str::from_utf8(body)
            .ok()
            .and_then(|form| http::form_value(form, "token"))
            .unwrap_or_default();
        if !constant_time_eq(token.as_bytes(), given.as_bytes()) {
            let page = login_page("That is not the admin token.");
            return Answer::new(401, "text/html; charset=utf-8", page);
        }
        let cookie = format!("{COOKIE}={}; {attributes}", self.cookie);
        home(Answer::new(303, "text/plain", "")).header("Set-Cookie", cookie)
    }

    /// `POST /admin/api/drain`: asks every shard to drain, once (asked twice, a drain
    /// closes what is left at once: that is for a second signal, not a second click).
    fn drain(&self, cx: &Cx<'_>) -> Answer {
        let already = cx.shard.shutting_down();
        if !already {
            cx.shard.control().request_shutdown();
        }
        Answer::json(202, &json!({ "draining": true, "already": already }))
    }

    /// `GET /admin/feed`: the live feed, on the dashboard's own origin only.
    fn feed(&self, cx: &mut Cx<'_>, request: &Request, next: Next, leftover: Vec<u8>) -> Step {
        if !same_origin(request) {
            return Answer::error(403, "cross-origin feed refused").send(cx, next, leftover);
        }
        let started = cx.now;
        front::accept_upgrade(cx, request, leftover, started, |cx, _| {
            Box::new(WebSocket::new(
                AdminFeed::new(cx.shard, cx.now),
                MAX_VIEW_MESSAGE,
            ))
        })
    }
}

/// An action's target from its JSON body: `{"player": "<id>"}` or `{"room": "<key>"}`.
fn action(request: &Request, body: &[u8]) -> Result<Ask, Answer> {
    // A cross-site form cannot send JSON without a preflight, which is never answered.
    let json_type = request
        .header("content-type")
        .is_some_and(|t| t.trim().starts_with("application/json"));
    if !json_type {
        return Err(Answer::error(
            415,
            "send JSON (Content-Type: application/json)",
        ));
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|_| Answer::error(400, "the body is not JSON"))?;
    if request.path == KICK_PATH {
        // Ids are sent as text: they exceed the integers JavaScript holds exactly.
        let player = match &value["player"] {
            Value::String(s) => s.parse::<PlayerId>().ok(),
            v => v.as_u64(),
        };
        return player
            .map(Ask::Kick)
            .ok_or_else(|| Answer::error(400, "say which player: {\"player\": \"<id>\"}"));
    }
    match value["room"].as_str() {
        Some(room) if !room.is_empty() => Ok(Ask::Close(room.to_owned())),
        _ => Err(Answer::error(400, "say which room: {\"room\": \"<key>\"}")),
    }
}

impl Route for AdminRoute {
    fn serve(&self, cx: &mut Cx<'_>, request: Request, head: Head<'_>) -> Step {
        if self.admin.token.is_none() {
            // Off: as if the paths did not exist.
            return front::refuse(cx, &HttpError::NotFound);
        }
        let next = Next::of(&request, &head);
        if request.method != "POST" {
            return self.admin.serve(cx, request, &[], next, head.leftover);
        }
        let length = match request.content_length() {
            Ok(n) if n <= MAX_BODY => n,
            Ok(_) => {
                let too_big = Answer::error(413, "the body is too large");
                let close = Next {
                    keep_alive: false,
                    ..next
                };
                return too_big.send(cx, close, Vec::new());
            }
            Err(e) => return front::refuse(cx, &e),
        };
        let admin = Rc::clone(&self.admin);
        let reading = ReadBody::new(
            length,
            Box::new(move |cx, body, rest| admin.serve(cx, request, &body, next, rest)),
        );
        Step::Upgrade(Box::new(reading), head.leftover)
    }
}

/// What a request asks of the shards.
enum Ask {
    Rooms(RoomsFilter),
    Room(String),
    Kick(PlayerId),
    Close(String),
}

/// A request waiting for the shards' answer ([`ANSWER_TIMEOUT`] at most).
struct Waiting {
    admin: Rc<Admin>,
    inbox: Rc<Outbox>,
    ask: Option<Ask>,
    next: Option<Next>,
    /// Bytes of a request pipelined after this one, kept for after the answer.
    pipelined: Vec<u8>,
}

impl Waiting {
    fn try_answer(&mut self, cx: &mut Cx<'_>) -> Step {
        let mut frames = Vec::new();
        if self.inbox.drain(&mut frames) != Drained::Frames {
            return Step::Continue;
        }
        let Some(next) = self.next.take() else {
            return Step::Continue;
        };
        cx.shard.stop_waking(&self.inbox);
        cx.set_deadline(None);
        let value: Value = frames
            .first()
            .and_then(|f| serde_json::from_slice(f).ok())
            .unwrap_or(Value::Null);
        let found = match value["kind"].as_str() {
            Some("room") => value["found"].as_bool(),
            Some("kick") => value["kicked"].as_bool(),
            Some("close") => value["closed"].as_bool(),
            _ => Some(true),
        };
        let status = if found == Some(false) { 404 } else { 200 };
        Answer::json(status, &value).send(cx, next, std::mem::take(&mut self.pipelined))
    }
}

impl Connection for Waiting {
    fn on_open(&mut self, cx: &mut Cx<'_>) -> Step {
        cx.shard.wake_on(&self.inbox, cx.id);
        cx.set_deadline(Some(cx.now + ANSWER_TIMEOUT));
        if let Some(ask) = self.ask.take() {
            {
                let mut relay = cx.shard.relay.borrow_mut();
                let _query = match ask {
                    Ask::Rooms(filter) => relay.admin_rooms(filter, &self.inbox),
                    Ask::Room(key) => relay.admin_room(&key, &self.inbox),
                    Ask::Kick(player) => relay.admin_kick(player, &self.inbox, cx.now),
                    Ask::Close(key) => relay.admin_close_room(&key, &self.inbox, cx.now),
                };
            }
            // A Socket.IO player kicked on this shard: its session ends now.
            self.admin.endpoint.end_kicked(cx.shard);
        }
        self.try_answer(cx)
    }

    fn on_data(&mut self, _cx: &mut Cx<'_>, data: &[u8]) -> Step {
        self.pipelined.extend_from_slice(data);
        Step::Continue
    }

    fn on_wake(&mut self, cx: &mut Cx<'_>) -> Step {
        self.try_answer(cx)
    }

    fn on_timeout(&mut self, cx: &mut Cx<'_>) -> Step {
        let Some(next) = self.next.take() else {
            return Step::Continue;
        };
        cx.shard.stop_waking(&self.inbox);
        let late = Answer::error(504, "a shard did not answer in time");
        late.send(cx, next, std::mem::take(&mut self.pipelined))
    }

    fn on_eof(&mut self, _cx: &mut Cx<'_>) -> Step {
        Step::Close { linger: false }
    }

    fn on_shutdown(&mut self, _cx: &mut Cx<'_>) -> Step {
        Step::Close { linger: false }
    }

    fn on_close(&mut self, cx: &mut Cx<'_>, _why: Ended) {
        cx.shard.stop_waking(&self.inbox);
    }
}
