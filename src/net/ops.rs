//! The operator's endpoints (docs/OPERATIONS.md): `GET /metrics` (Prometheus), `GET
//! /healthz` (the process is alive and no shard is stuck) and `GET /readyz` (accepting
//! players). Any shard answers them: each reads every shard's counters, which the shards
//! write lock-free and which are merged only here.

use std::rc::Rc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde_json::json;

use crate::metrics::{self, Process};
use crate::net::front::{Head, HttpHead, Route};
use crate::proto::http::{self, Request};
use crate::shard::{Cx, Step};
use crate::stats::unix_ms;

/// Path of the Prometheus exposition.
pub const METRICS_PATH: &str = "/metrics";
/// Path of the liveness check.
pub const HEALTH_PATH: &str = "/healthz";
/// Path of the readiness check.
pub const READY_PATH: &str = "/readyz";

/// Least time a shard may go without a turn before `/healthz` calls it stuck: four of its
/// stats ticks (`stats_publish_ms`, when a shard with nothing to do wakes anyway), and no
/// less than 2 s, so that a busy host's scheduling hiccup is not a failure.
pub fn stall_limit(stats_publish_ms: u64) -> Duration {
    Duration::from_millis((stats_publish_ms.max(10) * 4).max(2_000))
}

/// Serves the three paths.
pub struct OpsRoute;

impl Route for OpsRoute {
    fn serve(&self, cx: &mut Cx<'_>, request: Request, head: Head<'_>) -> Step {
        let keep_alive = request.keep_alive();
        let (status, content_type, body) = if request.method != "GET" {
            (405, "text/plain", b"use GET\n".to_vec())
        } else {
            match request.path.as_str() {
                METRICS_PATH => (
                    200,
                    metrics::CONTENT_TYPE,
                    metrics::encode(&cx.shard.registry, process()).into_bytes(),
                ),
                HEALTH_PATH => health(cx),
                _ => ready(cx),
            }
        };
        let reason = match status {
            200 => "OK",
            405 => "Method Not Allowed",
            _ => "Service Unavailable",
        };
        let answer = http::response(status, reason, content_type, &[], &body, keep_alive);
        let _ = cx.out.push(Bytes::from(answer));
        if keep_alive {
            // Scrapers keep their connection: read its next request.
            let next = Box::new(HttpHead::new(Rc::clone(&head.routes())));
            Step::Upgrade(next, head.leftover)
        } else {
            Step::Close { linger: true }
        }
    }
}

/// Every shard's last turn, as milliseconds ago, and whether it is within the limit.
fn shard_turns(cx: &Cx<'_>) -> (bool, Vec<serde_json::Value>) {
    let now = unix_ms(SystemTime::now());
    let limit = stall_limit(cx.shard.config.stats_publish_ms).as_millis() as u64;
    let mut all_alive = true;
    let shards = cx
        .shard
        .registry
        .shards()
        .enumerate()
        .map(|(i, s)| {
            let at = s.alive_at();
            let ago = now.saturating_sub(at);
            let alive = at > 0 && ago <= limit;
            all_alive &= alive;
            json!({
                "shard": i,
                "alive": alive,
                "last_turn_ms_ago": (at > 0).then_some(ago),
                "connections": s.connections.load(std::sync::atomic::Ordering::Relaxed),
            })
        })
        .collect();
    (all_alive, shards)
}

/// `/healthz`: 200 while every shard has turned within [`stall_limit`], 503 otherwise.
fn health(cx: &Cx<'_>) -> (u16, &'static str, Vec<u8>) {
    let (alive, shards) = shard_turns(cx);
    let body = json!({ "status": if alive { "ok" } else { "stalled" }, "shards": shards });
    (
        if alive { 200 } else { 503 },
        "application/json",
        body.to_string().into_bytes(),
    )
}

/// `/readyz`: 200 while every shard serves and the server is not draining, 503 while it
/// starts (a shard has not turned yet), drains, or a shard is stuck.
fn ready(cx: &Cx<'_>) -> (u16, &'static str, Vec<u8>) {
    let (alive, shards) = shard_turns(cx);
    let draining = cx.shard.shutting_down();
    let cluster = cx.shard.registry.cluster();
    // A node of a cluster whose Redis is gone serves its own rooms only: it says so, and a
    // load balancer sends new players to nodes that reach the others.
    let redis_down = cluster.enabled() && !cluster.redis_up();
    let ready = alive && !draining && !redis_down;
    let mut body = json!({ "ready": ready, "draining": draining, "shards": shards });
    if cluster.enabled() {
        body["cluster"] = json!({ "redis": cluster.redis_up(), "nodes": cluster.nodes() });
    }
    (
        if ready { 200 } else { 503 },
        "application/json",
        body.to_string().into_bytes(),
    )
}

/// What the process uses, from `/proc/self` (zeros where it cannot be read).
fn process() -> Process {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command (which may hold spaces) start past its closing parenthesis:
    // utime and stime are fields 14 and 15, the 12th and 13th after it.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    // SAFETY: sysconf reads a constant of the system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let cpu = Duration::from_secs_f64((field(11) + field(12)) as f64 / ticks);
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    let open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    Process {
        cpu,
        resident_bytes: pages * page,
        open_fds,
    }
}
