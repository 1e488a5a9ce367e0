//! The dashboard's live feed, `/admin/feed`: a WebSocket on the one driver
//! ([`crate::net::websocket`]) that pushes the server's figures every [`FEED_PERIOD`], and
//! the rooms table and the inspected room as soon as the shards have answered for them.
//!
//! The page says what it looks at (`{"rooms": {"search", "page"}, "inspect": key}`); the
//! feed asks the shards for that much and no more, once per period, and never has more
//! than one request of each kind in flight, so an open dashboard costs each shard one
//! look at its homed rooms a second, and nothing while the page is hidden (`"rooms":
//! null`).
//!
//! Rates are differences between two samples a period apart, taken here; latency
//! percentiles are over the last period too: each shard's published histogram (see
//! [`crate::stats`]) minus the one of the previous sample.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};
use tungstenite::Message;

use crate::net::websocket::{Flow, Keepalive, WsApp};
use crate::relay::{Drained, Outbox, OutboxLimits, RoomsFilter, MAX_ROOMS_PAGE};
use crate::shard::{Cx, Shard};
use crate::stats::{new_latency_histogram, unix_ms, CloseReason, Refusal, ShardStats};

/// How often the feed pushes the server's figures: the "at least once a second".
pub const FEED_PERIOD: Duration = Duration::from_secs(1);

/// How long a request to the shards may go unanswered before it is asked again (every
/// shard answers within a mesh round trip unless one is stuck, which `/healthz` reports).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest message the page sends (a view: a search text and a room's key).
pub const MAX_VIEW_MESSAGE: usize = 4096;

/// Answers waiting in a dashboard connection's inbox: a rooms page and a room are a few
/// tens of kilobytes each, and the connection takes them within its turn.
pub const INBOX_LIMITS: OutboxLimits = OutboxLimits {
    frames: 16,
    bytes: 1 << 20,
};

/// The figures of one shard at one instant, to take rates and latency windows from.
#[derive(Clone)]
struct ShardSample {
    messages_in: u64,
    messages_out: u64,
    bytes_in: u64,
    bytes_out: u64,
    latency: Option<Histogram<u64>>,
}

/// Every shard's figures at one instant.
#[derive(Clone)]
pub struct Sample {
    at: Instant,
    shards: Vec<ShardSample>,
}

/// Per second between `before` and `now` over `seconds`; `None` without a before.
fn rate(now: u64, before: Option<u64>, seconds: f64) -> Value {
    match before {
        Some(b) if seconds > 0.0 => {
            json!(((now.saturating_sub(b)) as f64 / seconds * 10.0).round() / 10.0)
        }
        _ => Value::Null,
    }
}

/// The percentiles of a latency histogram, in microseconds.
fn percentiles(h: &Histogram<u64>) -> Value {
    let q = |q: f64| {
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(q)
        }
    };
    json!({
        "count": h.len(),
        "p50_us": q(0.5),
        "p90_us": q(0.9),
        "p99_us": q(0.99),
        "p999_us": q(0.999),
        "max_us": h.max(),
    })
}

/// The server's figures as the dashboard shows them (`kind: "stats"`), with rates and the
/// latency of the time since `prev`; the sample to take the next ones from.
pub fn stats(shard: &Shard, prev: Option<&Sample>, now: Instant) -> (Value, Sample) {
    use std::sync::atomic::Ordering::Relaxed;
    let seconds = prev.map_or(0.0, |p| now.saturating_duration_since(p.at).as_secs_f64());
    let wall = unix_ms(SystemTime::now());
    let stall = crate::net::ops::stall_limit(shard.config.stats_publish_ms).as_millis() as u64;
    let mut sample = Sample {
        at: now,
        shards: Vec::new(),
    };
    let mut shards = Vec::new();
    let mut window = new_latency_histogram();
    let mut lifetime = new_latency_histogram();
    let mut totals: HashMap<&str, u64> = HashMap::new();
    let mut closes = Map::new();
    let mut refused = Map::new();
    for (i, s) in shard.registry.shards().enumerate() {
        let l = |c: &std::sync::atomic::AtomicU64| c.load(Relaxed);
        let before = prev.and_then(|p| p.shards.get(i));
        // A reader racing another one may find the mailbox empty for a moment: the last
        // histogram seen stands in (no new samples rather than none at all).
        let latency = s
            .latency_snapshot()
            .or_else(|| before.and_then(|b| b.latency.clone()));
        let mut recent = latency.clone().unwrap_or_else(new_latency_histogram);
        if let Some(old) = before.and_then(|b| b.latency.as_ref()) {
            if recent.subtract(old).is_err() {
                recent = latency.clone().unwrap_or_else(new_latency_histogram);
            }
        }
        // Histograms made by new_latency_histogram share their bounds, so adding works.
        let _ = window.add(&recent);
        if let Some(h) = &latency {
            let _ = lifetime.add(h);
        }
        let now_sample = ShardSample {
            messages_in: l(&s.messages_in),
            messages_out: l(&s.messages_out),
            bytes_in: l(&s.bytes_in),
            bytes_out: l(&s.bytes_out),
            latency,
        };
        for (name, v) in [
            ("connections", l(&s.connections)),
            ("rooms", l(&s.rooms)),
            ("messages_in", now_sample.messages_in),
            ("messages_out", now_sample.messages_out),
            ("bytes_in", now_sample.bytes_in),
            ("bytes_out", now_sample.bytes_out),
            ("sessions_away", l(&s.sessions_away)),
            ("mesh_backlog", l(&s.mesh_backlog)),
            ("accepted", l(&s.accepted)),
        ] {
            *totals.entry(name).or_default() += v;
        }
        count_by_reason(s, &mut closes, &mut refused);
        let at = s.alive_at();
        shards.push(json!({
            "shard": i,
            "alive": at > 0 && wall.saturating_sub(at) <= stall,
            "connections": l(&s.connections),
            "rooms": l(&s.rooms),
            "messages_in": now_sample.messages_in,
            "messages_out": now_sample.messages_out,
            "in_per_s": rate(now_sample.messages_in, before.map(|b| b.messages_in), seconds),
            "out_per_s": rate(now_sample.messages_out, before.map(|b| b.messages_out), seconds),
            "mesh_backlog": l(&s.mesh_backlog),
            "latency": percentiles(&recent),
        }));
        sample.shards.push(now_sample);
    }
    let sum = |f: fn(&ShardSample) -> u64, of: &Sample| of.shards.iter().map(f).sum::<u64>();
    let total_rate =
        |f: fn(&ShardSample) -> u64| rate(sum(f, &sample), prev.map(|p| sum(f, p)), seconds);
    let mut totals_json: Map<String, Value> = totals
        .into_iter()
        .map(|(k, v)| (k.to_owned(), json!(v)))
        .collect();
    totals_json.insert("in_per_s".into(), total_rate(|s| s.messages_in));
    totals_json.insert("out_per_s".into(), total_rate(|s| s.messages_out));
    totals_json.insert("bytes_in_per_s".into(), total_rate(|s| s.bytes_in));
    totals_json.insert("bytes_out_per_s".into(), total_rate(|s| s.bytes_out));
    let cluster = shard.registry.cluster();
    let cluster = cluster
        .enabled()
        .then(|| json!({ "redis": cluster.redis_up(), "nodes": cluster.listed() }));
    let value = json!({
        "kind": "stats",
        "at_ms": wall,
        "shard": shard.id,
        "draining": shard.shutting_down(),
        "cluster": cluster,
        "totals": totals_json,
        "latency": {
            // Over the last period (since the server started for a first sample).
            "window": percentiles(&window),
            "lifetime": percentiles(&lifetime),
        },
        "shards": shards,
        "closes": closes,
        "refused": refused,
    });
    (value, sample)
}

/// Adds one shard's closes and refusals, by reason, to the totals (reasons never seen are
/// left out).
fn count_by_reason(
    s: &ShardStats,
    closes: &mut Map<String, Value>,
    refused: &mut Map<String, Value>,
) {
    let add = |map: &mut Map<String, Value>, name: &str, n: u64| {
        if n > 0 {
            let total = map.get(name).and_then(Value::as_u64).unwrap_or(0) + n;
            map.insert(name.to_owned(), json!(total));
        }
    };
    for reason in CloseReason::ALL {
        add(closes, reason.name(), s.closes(reason));
    }
    for why in Refusal::ALL {
        add(refused, why.name(), s.refusals(why));
    }
}

/// What the page looks at.
#[derive(Debug, Default)]
struct View {
    /// The rooms table, `None` while it is not shown (the page is hidden).
    rooms: Option<RoomsFilter>,
    /// The room in the inspector, by key.
    inspect: Option<String>,
}

/// A request to the shards in flight: its number and when it was asked.
type Asked = Option<(u64, Instant)>;

/// One dashboard's feed.
pub struct AdminFeed {
    inbox: Rc<Outbox>,
    next_tick: Instant,
    view: View,
    rooms_asked: Asked,
    room_asked: Asked,
    sample: Option<Sample>,
    /// Each listed room's message count at the last answer, for its rate.
    room_counts: (Option<Instant>, HashMap<String, u64>),
    /// The inspected room's message count at the last answer.
    inspected_count: Option<(String, u64, Instant)>,
    keepalive: Keepalive,
}

impl AdminFeed {
    /// A feed on `shard`, its connection kept alive as native ones are.
    pub fn new(shard: &Shard, now: Instant) -> AdminFeed {
        let interval = Duration::from_millis(shard.config.ping_interval_ms);
        AdminFeed {
            inbox: Rc::new(Outbox::with_overflow_frame(INBOX_LIMITS, None)),
            next_tick: now,
            view: View {
                rooms: Some(RoomsFilter::default()),
                inspect: None,
            },
            rooms_asked: None,
            room_asked: None,
            sample: None,
            room_counts: (None, HashMap::new()),
            inspected_count: None,
            keepalive: Keepalive {
                interval,
                limit: interval + Duration::from_millis(shard.config.ping_timeout_ms),
            },
        }
    }

    fn send(cx: &Cx<'_>, value: &Value) {
        let text = value.to_string();
        // A full queue closes the connection as a slow consumer: a dashboard that does not
        // read its feed is not kept.
        let _ = cx.out.push(crate::proto::ws::text_frame(|mut v| {
            v.extend_from_slice(text.as_bytes());
            v
        }));
    }

    /// Pushes the figures and asks the shards for what the page looks at.
    fn tick(&mut self, cx: &mut Cx<'_>) {
        let (value, sample) = stats(cx.shard, self.sample.as_ref(), cx.now);
        self.sample = Some(sample);
        Self::send(cx, &value);
        self.next_tick = cx.now + FEED_PERIOD;
        self.ask(cx, false);
    }

    /// Asks the shards for the rooms page and the inspected room, unless asked already
    /// and not given up on (`again`: the view changed, ask now).
    fn ask(&mut self, cx: &mut Cx<'_>, again: bool) {
        let now = cx.now;
        let due = |asked: Asked| {
            again || asked.is_none_or(|(_, at)| now.saturating_duration_since(at) >= ANSWER_TIMEOUT)
        };
        let mut relay = cx.shard.relay.borrow_mut();
        if let Some(filter) = &self.view.rooms {
            if due(self.rooms_asked) {
                let query = relay.admin_rooms(filter.clone(), &self.inbox);
                self.rooms_asked = Some((query, now));
            }
        }
        if let Some(key) = &self.view.inspect {
            if due(self.room_asked) {
                let query = relay.admin_room(key, &self.inbox);
                self.room_asked = Some((query, now));
            }
        }
    }

    /// An answer from the shards: with rates added, to the page.
    fn answer(&mut self, cx: &mut Cx<'_>, mut value: Value) {
        let query = value.get("query").and_then(Value::as_u64);
        let now = cx.now;
        match value.get("kind").and_then(Value::as_str) {
            Some("rooms") if query.is_some() && query == self.rooms_asked.map(|a| a.0) => {
                self.rooms_asked = None;
                let (before, counts) = &self.room_counts;
                let seconds =
                    before.map_or(0.0, |b| now.saturating_duration_since(b).as_secs_f64());
                let mut fresh = HashMap::new();
                if let Some(rooms) = value.get_mut("rooms").and_then(Value::as_array_mut) {
                    for room in rooms {
                        let key = room["key"].as_str().unwrap_or_default().to_owned();
                        let messages = room["messages"].as_u64().unwrap_or(0);
                        room["per_s"] = rate(messages, counts.get(&key).copied(), seconds);
                        fresh.insert(key, messages);
                    }
                }
                self.room_counts = (Some(now), fresh);
            }
            Some("room") if query.is_some() && query == self.room_asked.map(|a| a.0) => {
                self.room_asked = None;
                let key = value["key"].as_str().unwrap_or_default().to_owned();
                if self.view.inspect.as_deref() != Some(key.as_str()) {
                    return;
                }
                let messages = value["home"]["messages"].as_u64();
                if let Some(messages) = messages {
                    let before = self.inspected_count.as_ref().filter(|(k, _, _)| *k == key);
                    let seconds = before.map_or(0.0, |(_, _, at)| {
                        now.saturating_duration_since(*at).as_secs_f64()
                    });
                    value["per_s"] = rate(messages, before.map(|b| b.1), seconds);
                    self.inspected_count = Some((key, messages, now));
                }
            }
            // Given up on, or for a view the page left: nothing to show.
            _ => return,
        }
        Self::send(cx, &value);
    }

    /// The page says what it looks at.
    fn on_view(&mut self, cx: &mut Cx<'_>, text: &str) {
        let Ok(view) = serde_json::from_str::<Value>(text) else {
            return;
        };
        if let Some(rooms) = view.get("rooms") {
            self.view.rooms = rooms.as_object().map(|r| RoomsFilter {
                search: r
                    .get("search")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .chars()
                    .take(cx.shard.config.max_name_len)
                    .collect(),
                page: r
                    .get("page")
                    .and_then(Value::as_u64)
                    .map_or(0, |p| p.min(u64::from(MAX_ROOMS_PAGE)) as u32),
            });
            self.room_counts.1.clear();
        }
        if let Some(inspect) = view.get("inspect") {
            self.view.inspect = inspect.as_str().map(str::to_owned);
        }
        self.ask(cx, true);
    }
}

impl WsApp for AdminFeed {
    fn on_open(&mut self, cx: &mut Cx<'_>) -> Flow {
        cx.shard.wake_on(&self.inbox, cx.id);
        self.tick(cx);
        Flow::Continue
    }

    fn on_message(&mut self, cx: &mut Cx<'_>, msg: Message) -> Flow {
        if let Message::Text(text) = msg {
            self.on_view(cx, text.as_str());
        }
        Flow::Continue
    }

    fn deadline(&self) -> Option<Instant> {
        Some(self.next_tick)
    }

    /// The operator watches the drain to its end: the feed stays until the server closes
    /// what is left (`drain_timeout_ms`).
    fn on_drain(&mut self, _cx: &mut Cx<'_>) -> Flow {
        Flow::Continue
    }

    fn on_timeout(&mut self, cx: &mut Cx<'_>) -> Flow {
        if cx.now >= self.next_tick {
            self.tick(cx);
        }
        Flow::Continue
    }

    fn on_wake(&mut self, cx: &mut Cx<'_>) -> Flow {
        let mut frames = Vec::new();
        if self.inbox.drain(&mut frames) == Drained::Closed {
            return Flow::Continue;
        }
        for frame in frames {
            if let Ok(value) = serde_json::from_slice::<Value>(&frame) {
                self.answer(cx, value);
            }
        }
        Flow::Continue
    }

    fn keepalive(&self) -> Option<Keepalive> {
        Some(self.keepalive)
    }

    fn on_close(&mut self, cx: &mut Cx<'_>, _why: crate::stats::CloseReason) {
        cx.shard.stop_waking(&self.inbox);
    }
}
