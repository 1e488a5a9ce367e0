//! The HTTP front: every connection starts here, accepted or handed over by another shard.
//! It reads one request head (within the handshake timeout) and hands the connection to the
//! route of its path: a WebSocket upgrade (`/ws`, echo), or the Engine.IO endpoint. Unknown
//! paths get 404, malformed heads 400, upgrades from origins outside `cors_origins` 403.
//! It also gives the `503` that connections refused at accept (`max_connections`,
//! `max_connections_per_ip`) read before they are closed.

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::proto::http::{self, HttpError, Request};
use crate::shard::{Connection, Cx, Ended, Endpoint, Shard, Step};
use crate::stats::{CloseReason, Refusal};

/// What serves the requests of one path.
pub trait Route {
    /// Serves `request`, whose head has been read. `head` holds the bytes read so far and
    /// lets the route go back to reading heads on a keep-alive connection.
    fn serve(&self, cx: &mut Cx<'_>, request: Request, head: Head<'_>) -> Step;
}

/// Which requests a route takes.
#[derive(Debug, Clone)]
pub enum PathMatch {
    /// This path exactly (and, for a path ending in `/`, the same without it).
    Exact(String),
    /// Every path (the echo server).
    Any,
}

impl PathMatch {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => {
                path == p || (p.ends_with('/') && path == p.trim_end_matches('/'))
            }
            PathMatch::Any => true,
        }
    }
}

/// The routes of a shard's front.
#[derive(Default)]
pub struct Routes {
    routes: Vec<(PathMatch, Rc<dyn Route>)>,
}

impl Routes {
    /// No routes: every request gets 404.
    pub fn new() -> Routes {
        Routes::default()
    }

    /// Adds a route; the first match wins.
    pub fn route(mut self, path: PathMatch, route: Rc<dyn Route>) -> Routes {
        self.routes.push((path, route));
        self
    }

    fn find(&self, path: &str) -> Option<&Rc<dyn Route>> {
        self.routes
            .iter()
            .find(|(m, _)| m.matches(path))
            .map(|(_, r)| r)
    }
}

/// What a route gets besides the request: the bytes read, and the way back to the front.
pub struct Head<'a> {
    /// Everything read from the socket for this request (head and what followed), for a
    /// handoff to another shard.
    pub raw: Vec<u8>,
    /// The bytes past the head.
    pub leftover: Vec<u8>,
    /// When the connection was accepted (or this request's head started).
    pub started: Instant,
    routes: &'a Rc<Routes>,
}

impl Head<'_> {
    /// The routes, to read the next request of a keep-alive connection with
    /// [`HttpHead::new`].
    pub fn routes(&self) -> Rc<Routes> {
        Rc::clone(self.routes)
    }
}

/// What follows a route's answer: the next request of a keep-alive connection, or the
/// close.
pub struct Next {
    /// The connection stays open for another request.
    pub keep_alive: bool,
    /// The routes that request is read with.
    pub routes: Rc<Routes>,
}

impl Next {
    /// What follows the answer to `request`, read with `head`.
    pub fn of(request: &Request, head: &Head<'_>) -> Next {
        Next {
            keep_alive: request.keep_alive(),
            routes: head.routes(),
        }
    }

    /// Goes on after the answer: reads the next request (`leftover` holds what came past
    /// this one), or closes.
    pub fn step(self, leftover: Vec<u8>) -> Step {
        if self.keep_alive {
            Step::Upgrade(Box::new(HttpHead::new(self.routes)), leftover)
        } else {
            Step::Close { linger: true }
        }
    }
}

/// The front endpoint (id 0): the handler every socket starts in.
pub struct Front {
    routes: Rc<Routes>,
}

impl Front {
    /// A front serving `routes`.
    pub fn new(routes: Routes) -> Front {
        Front {
            routes: Rc::new(routes),
        }
    }
}

impl Endpoint for Front {
    fn open(&self, _shard: &Rc<Shard>) -> Option<Box<dyn Connection>> {
        Some(Box::new(HttpHead::new(Rc::clone(&self.routes))))
    }

    fn refusal(&self) -> Option<Bytes> {
        Some(Bytes::from(http::response(
            503,
            "Service Unavailable",
            "text/plain",
            &[],
            b"too many connections\n",
            false,
        )))
    }
}

/// Reads one request head.
pub struct HttpHead {
    routes: Rc<Routes>,
    buf: Vec<u8>,
    started: Instant,
}

impl HttpHead {
    /// A reader of one request head, routed by `routes`.
    pub fn new(routes: Rc<Routes>) -> HttpHead {
        HttpHead {
            routes,
            buf: Vec::new(),
            started: Instant::now(),
        }
    }
}

/// Whether a WebSocket upgrade may go on as far as its `Origin` goes (see
/// [`http::origin_may_upgrade`]); a refusal is counted (`refused.origin`). Every upgrade
/// path asks this before answering `101`; the caller answers `403` when it is `false`.
pub fn origin_allowed(cx: &Cx<'_>, request: &Request) -> bool {
    let allowed = http::origin_may_upgrade(&cx.shard.config.cors_origins, request.header("origin"));
    if !allowed {
        cx.shard.stats.count_refusal(Refusal::Origin);
    }
    allowed
}

/// Answers a WebSocket upgrade request and hands the connection to `open`'s handler with
/// the bytes past the head; a request that is not a valid upgrade, or comes from an origin
/// outside `cors_origins`, is refused.
pub fn upgrade(
    cx: &mut Cx<'_>,
    request: &Request,
    head: Head<'_>,
    open: impl FnOnce(&mut Cx<'_>, Instant) -> Box<dyn Connection>,
) -> Step {
    if !origin_allowed(cx, request) {
        return refuse(cx, &HttpError::ForbiddenOrigin);
    }
    accept_upgrade(cx, request, head.leftover, head.started, open)
}

/// [`upgrade`] without the `cors_origins` check, for a route with an origin policy of its
/// own (the dashboard's feed accepts its own origin only): `leftover` is what was read
/// past the head, `started` when the request began.
pub fn accept_upgrade(
    cx: &mut Cx<'_>,
    request: &Request,
    leftover: Vec<u8>,
    started: Instant,
    open: impl FnOnce(&mut Cx<'_>, Instant) -> Box<dyn Connection>,
) -> Step {
    match request.websocket_key() {
        Ok(key) => {
            let _ = cx.out.push(Bytes::from(http::upgrade_response(key)));
            Step::Upgrade(open(cx, started), leftover)
        }
        Err(e) => refuse(cx, &e),
    }
}

/// What a read body is handed to: the connection, the body, and the bytes that came
/// past it (the start of a keep-alive connection's next request).
pub type BodyThen = Box<dyn FnOnce(&mut Cx<'_>, Vec<u8>, Vec<u8>) -> Step>;

/// Reads a request body of a known length (`Content-Length`, checked against the route's
/// bound by the caller) within the handshake timeout, then hands it on. A peer that stops
/// sending, or goes, is closed.
pub struct ReadBody {
    length: usize,
    body: Vec<u8>,
    then: Option<BodyThen>,
    on_close: Option<Box<dyn FnOnce()>>,
}

impl ReadBody {
    /// A reader of `length` bytes that calls `then` with them.
    pub fn new(length: usize, then: BodyThen) -> ReadBody {
        ReadBody {
            length,
            body: Vec::new(),
            then: Some(then),
            on_close: None,
        }
    }

    /// Also calls `f` when the connection ends, whether or not the body came.
    pub fn on_close(mut self, f: impl FnOnce() + 'static) -> ReadBody {
        self.on_close = Some(Box::new(f));
        self
    }
}

impl Connection for ReadBody {
    fn on_open(&mut self, cx: &mut Cx<'_>) -> Step {
        let timeout = Duration::from_millis(cx.shard.config.handshake_timeout_ms);
        cx.set_deadline(Some(cx.now + timeout));
        self.on_data(cx, &[])
    }

    fn on_data(&mut self, cx: &mut Cx<'_>, data: &[u8]) -> Step {
        self.body.extend_from_slice(data);
        if self.body.len() < self.length {
            return Step::Continue;
        }
        let Some(then) = self.then.take() else {
            return Step::Continue;
        };
        cx.set_deadline(None);
        let rest = self.body.split_off(self.length);
        then(cx, std::mem::take(&mut self.body), rest)
    }

    fn on_timeout(&mut self, _cx: &mut Cx<'_>) -> Step {
        Step::Close { linger: false }
    }

    fn on_eof(&mut self, _cx: &mut Cx<'_>) -> Step {
        Step::Close { linger: false }
    }

    fn on_shutdown(&mut self, _cx: &mut Cx<'_>) -> Step {
        Step::Close { linger: false }
    }

    fn on_close(&mut self, _cx: &mut Cx<'_>, _why: Ended) {
        if let Some(f) = self.on_close.take() {
            f();
        }
    }
}

/// Answers a bad request and closes, counting it (a forbidden origin is counted as a
/// refusal by [`origin_allowed`], not as a bad request).
pub fn refuse(cx: &mut Cx<'_>, err: &HttpError) -> Step {
    if *err != HttpError::ForbiddenOrigin {
        cx.shard.stats.count_close(CloseReason::BadRequest);
        cx.set_close_reason(CloseReason::BadRequest);
    }
    let _ = cx.out.push(Bytes::from(http::error_response(err)));
    Step::Close { linger: true }
}

impl Connection for HttpHead {
    fn on_open(&mut self, cx: &mut Cx<'_>) -> Step {
        self.started = cx.now;
        cx.set_deadline(Some(
            cx.now + Duration::from_millis(cx.shard.config.handshake_timeout_ms),
        ));
        Step::Continue
    }

    fn on_data(&mut self, cx: &mut Cx<'_>, data: &[u8]) -> Step {
        self.buf.extend_from_slice(data);
        match http::parse_request(&self.buf, cx.shard.config.max_head_size) {
            Ok(None) => Step::Continue,
            Err(e) => refuse(cx, &e),
            Ok(Some((request, len))) => {
                let raw = std::mem::take(&mut self.buf);
                let leftover = raw[len..].to_vec();
                let Some(route) = self.routes.find(&request.path).cloned() else {
                    return refuse(cx, &HttpError::NotFound);
                };
                cx.set_deadline(None);
                let head = Head {
                    raw,
                    leftover,
                    started: self.started,
                    routes: &self.routes,
                };
                route.serve(cx, request, head)
            }
        }
    }

    fn on_timeout(&mut self, cx: &mut Cx<'_>) -> Step {
        cx.shard.stats.count_close(CloseReason::HandshakeTimeout);
        cx.set_close_reason(CloseReason::HandshakeTimeout);
        Step::Close { linger: true }
    }

    fn on_eof(&mut self, _cx: &mut Cx<'_>) -> Step {
        Step::Close { linger: false }
    }

    fn on_shutdown(&mut self, _cx: &mut Cx<'_>) -> Step {
        Step::Close { linger: false }
    }

    fn on_close(&mut self, _cx: &mut Cx<'_>, _why: Ended) {}
}
