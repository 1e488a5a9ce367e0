//! The cluster bridge: one thread per node between the shards and Redis pub/sub, carrying
//! rooms across nodes (`relay/nodes.rs` is the rooms' side).
//!
//! To the shards the bridge is one more end of the mesh (its id is the number of shards):
//! rooms' homes send it what to publish and which rooms to follow over the same lock-free
//! queues and doorbells as between shards, and it hands each room's home what the other
//! nodes published. It runs a Tokio runtime of its own with three tasks, so that no shard
//! ever waits on Redis:
//!
//! - the **publisher** sends envelopes ([`super::envelope`]) on one connection, in order, in
//!   pipelines of what has queued up meanwhile: one `PUBLISH` per broadcast, on the room's
//!   channel `corelay:room:{<room>}`;
//! - the **follower** holds the subscriber connection: it subscribes to a room's channel
//!   when the room gains its first member on this node and unsubscribes when it loses its
//!   last (interest routing), then publishes a hello so that the other nodes say who they
//!   have in the room. When the connection drops it connects again with a backoff,
//!   subscribes to every followed room and says hello again;
//! - the **loop** moves messages between the mesh and those two, drops the node's own
//!   publications (Redis sends them back), and tells the shards when a node's lease ends.
//!
//! Backpressure: the loop takes from the shards only what the publisher's queue has room
//! for, so a slow Redis slows the shards' mesh (which stops reading clients past its
//! backlog) rather than growing memory. While Redis is unreachable the publisher drops what
//! it is given (counted), so that the node's own rooms go on at full speed.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::StreamExt;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::mpsc;

use super::envelope::{self, Content, Envelope};
use super::queues::{self, QueuesPort};
use super::{ClusterStatus, Target};
use crate::matchmaking::MatchmakingConfig;
use crate::relay::{home_shard, Broadcast, ClusterMsg, MeshMsg, NOBODY};
use crate::shard::mesh::{Mesh, ShardMsg};

/// The Redis channel of room key `room`. The braces make the room name the hash tag, so
/// that on Redis Cluster a room's channel (and later its stream) live on one shard.
pub fn channel(room: &str) -> String {
    format!("corelay:room:{{{room}}}")
}

/// The room key of a channel named by [`channel`].
pub fn room_of(channel: &[u8]) -> Option<String> {
    let key = channel
        .strip_prefix(b"corelay:room:{")?
        .strip_suffix(b"}")?;
    String::from_utf8(key.to_vec()).ok()
}

/// Envelopes waiting for the publisher, at most: past it the loop stops taking from the
/// shards (whose mesh backlog then holds their clients back).
const PUBLISH_QUEUE: usize = 16_384;

/// Most envelopes in one pipeline.
const PIPELINE: usize = 512;

/// Messages heard from Redis waiting for the loop.
const HEARD_QUEUE: usize = 16_384;

/// Longest wait between two tries to reach Redis.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Longest a connect or a round trip may take before Redis counts as unreachable.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// How often the loop looks at the live nodes when nothing else wakes it.
const TICK: Duration = Duration::from_millis(200);

/// The bridge of a node, running until [`Bridge::stop`].
#[derive(Debug)]
pub struct Bridge {
    thread: Option<std::thread::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    bell: Arc<crate::shard::mesh::Doorbell>,
}

impl Bridge {
    /// Starts the bridge of node `node` (its incarnation) with `shards` shards, on `mesh`
    /// (its end of the shards' mesh), publishing and following on `url`. A node whose
    /// lease is out of the live list for `lease` (`[cluster] lease_ms`) is gone. With
    /// `matchmaking`, the queues are the cluster's and run here too ([`super::queues`]).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        url: &str,
        cluster: bool,
        node: u64,
        shards: usize,
        lease: Duration,
        mesh: Mesh,
        status: Arc<ClusterStatus>,
        matchmaking: Option<MatchmakingConfig>,
    ) -> std::io::Result<Bridge> {
        let target = Target::open(url, cluster).map_err(std::io::Error::other)?;
        let stop = Arc::new(AtomicBool::new(false));
        let bell = Arc::clone(mesh.doorbell());
        let stopping = Arc::clone(&stop);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name("corelay-bridge".into())
            .spawn(move || {
                let bridge = Loop {
                    node,
                    shards,
                    lease,
                    mesh,
                    status,
                    stop: stopping,
                    matchmaking,
                    queues: None,
                };
                runtime.block_on(bridge.run(target));
            })?;
        Ok(Bridge {
            thread: Some(thread),
            stop,
            bell,
        })
    }

    /// The shards have stopped: publishes what they left (for at most 2 s)
    /// and ends.
    pub fn stop(mut self) {
        self.stop.store(true, Relaxed);
        self.bell.ring_always();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The bridge's doorbell, for Tokio to watch its eventfd (which it keeps open).
struct BellFd(Arc<crate::shard::mesh::Doorbell>);

impl AsRawFd for BellFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.fd()
    }
}

struct Loop {
    node: u64,
    shards: usize,
    lease: Duration,
    mesh: Mesh,
    status: Arc<ClusterStatus>,
    stop: Arc<AtomicBool>,
    /// The cluster's matchmaking queues, started with the loop.
    matchmaking: Option<MatchmakingConfig>,
    queues: Option<QueuesPort>,
}

impl Loop {
    async fn run(mut self, target: Target) {
        let watched = BellFd(Arc::clone(self.mesh.doorbell()));
        // SAFETY: the eventfd belongs to the doorbell the wrapper holds, so it stays open
        // and the same for as long as the `AsyncFd` lives, and `as_raw_fd` always names it.
        let bell = match unsafe { AsyncFd::register_with_interest(watched, Interest::READABLE) } {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cluster: the bridge cannot watch its doorbell");
                return;
            }
        };
        let (publish_tx, publish_rx) = mpsc::channel(PUBLISH_QUEUE);
        let (follow_tx, follow_rx) = mpsc::unbounded_channel();
        let (heard_tx, mut heard_rx) = mpsc::channel(HEARD_QUEUE);
        let publisher = tokio::spawn(publish(
            target.clone(),
            publish_rx,
            Arc::clone(&self.status),
        ));
        self.queues = self.matchmaking.take().map(|config| {
            QueuesPort::start(
                &target,
                self.node,
                self.shards,
                self.lease,
                &config,
                Arc::clone(&self.status),
            )
        });
        let follower = tokio::spawn(follow(
            target,
            self.node,
            follow_rx,
            heard_tx,
            publish_tx.clone(),
            Arc::clone(&self.status),
        ));
        let mut inbound = Vec::new();
        let mut seen: HashMap<u64, Instant> = HashMap::new();
        let mut next_look = Instant::now();
        loop {
            let room = publish_tx.capacity();
            if room > 0 {
                self.mesh.receive(&mut inbound, room.div_ceil(self.shards));
            }
            for (_, msg) in inbound.drain(..) {
                if let ShardMsg::Relay(msg) = msg {
                    self.carry(msg, &publish_tx, &follow_tx);
                }
            }
            while !self.mesh.congested() {
                match heard_rx.try_recv() {
                    Ok(msg) => self.heard(&msg),
                    Err(_) => break,
                }
            }
            while let Some((shard, msg)) = self.queues.as_mut().and_then(QueuesPort::try_next) {
                self.mesh.send(shard, ShardMsg::Relay(msg));
            }
            if Instant::now() >= next_look {
                self.look_at_nodes(&mut seen);
                next_look = Instant::now() + TICK;
            }
            self.mesh.flush();
            if self.stop.load(Relaxed) {
                break;
            }
            let doorbell = Arc::clone(self.mesh.doorbell());
            doorbell.prepare_to_sleep();
            let hearing = !self.mesh.congested() && !heard_rx.is_empty();
            let answering = self.queues.as_ref().is_some_and(QueuesPort::has_next);
            if self.mesh.has_inbound() || hearing || answering || self.mesh.backlog_can_move() {
                doorbell.woke();
                continue;
            }
            let congested = self.mesh.congested();
            tokio::select! {
                ready = bell.readable() => {
                    if let Ok(mut ready) = ready {
                        let mut count = [0u8; 8];
                        // SAFETY: reading 8 bytes into a live buffer from the doorbell's
                        // eventfd, which outlives this loop.
                        unsafe { libc::read(bell.get_ref().as_raw_fd(), count.as_mut_ptr().cast(), 8) };
                        ready.clear_ready();
                    }
                }
                heard = heard_rx.recv(), if !congested => {
                    if let Some(msg) = heard {
                        self.heard(&msg);
                    }
                }
                (shard, msg) = queues::next_for_shards(&mut self.queues) => {
                    self.mesh.send(shard, ShardMsg::Relay(msg));
                }
                () = tokio::time::sleep(TICK) => {}
            }
            doorbell.woke();
        }
        // Stopping: what the shards left goes out (the publisher ends once its queue is
        // empty), within bounds.
        follower.abort();
        drop(publish_tx);
        let _ = tokio::time::timeout(REDIS_TIMEOUT, publisher).await;
        if let Some(queues) = self.queues.take() {
            queues.finish(REDIS_TIMEOUT).await;
        }
    }

    /// A message of a shard for the bridge.
    fn carry(
        &mut self,
        msg: MeshMsg,
        publish: &mpsc::Sender<(String, Vec<u8>)>,
        follow: &mpsc::UnboundedSender<(String, bool)>,
    ) {
        let out = match msg {
            MeshMsg::Publish { bcast, members } => {
                envelope::encode(self.node, members, &bcast.body).map(|e| (channel(&bcast.room), e))
            }
            MeshMsg::Cluster(msg) => match *msg {
                ClusterMsg::Interest { room, on } => {
                    let _ = follow.send((room, on));
                    None
                }
                ClusterMsg::Presence { room, names, .. } => {
                    Some((channel(&room), envelope::encode_presence(self.node, &names)))
                }
                ClusterMsg::Hello { .. } | ClusterMsg::NodeGone(_) => None,
            },
            MeshMsg::Queues(msg) => {
                if let Some(queues) = &self.queues {
                    queues.carry(*msg);
                }
                None
            }
            _ => None,
        };
        if let Some(out) = out {
            // The loop took only what the queue has room for.
            if publish.try_send(out).is_err() {
                self.status.dropped.fetch_add(1, Relaxed);
            }
        }
    }

    /// A message heard on a room's channel: to the room's home, unless it is this node's
    /// own.
    fn heard(&mut self, msg: &redis::Msg) {
        let Some(room) = room_of(msg.get_channel_name().as_bytes()) else {
            return;
        };
        let bytes = msg.get_payload_bytes();
        if envelope::node_of(bytes) == Some(self.node) {
            return;
        }
        let bytes = Bytes::copy_from_slice(bytes);
        let Some(Envelope {
            node,
            members,
            content,
        }) = envelope::decode(&bytes)
        else {
            self.status.refused.fetch_add(1, Relaxed);
            tracing::warn!(%room, len = bytes.len(), "cluster: not an envelope, dropped");
            return;
        };
        self.status.received.fetch_add(1, Relaxed);
        let home = home_shard(&room, self.shards);
        let msg = match content {
            Content::Broadcast(body) => MeshMsg::FromNode {
                node,
                members,
                // Nobody here is excluded: the sender is on the publishing node.
                bcast: Box::new(Broadcast::new(room, NOBODY, body, Instant::now())),
            },
            Content::Hello => MeshMsg::Cluster(Box::new(ClusterMsg::Hello { room })),
            Content::Presence(names) => {
                MeshMsg::Cluster(Box::new(ClusterMsg::Presence { room, node, names }))
            }
        };
        self.mesh.send(home, ShardMsg::Relay(msg));
    }

    /// Tells every shard of the nodes whose lease has been out of the live list for
    /// `lease`. Half a lease would do for a node killed; a whole one also spares nodes
    /// that are merely late to write their lease again into a Redis that restarted empty.
    fn look_at_nodes(&mut self, seen: &mut HashMap<u64, Instant>) {
        if !self.status.redis_up() {
            return;
        }
        let now = Instant::now();
        for info in self.status.listed() {
            if info.incarnation != 0 && info.incarnation != self.node {
                seen.insert(info.incarnation, now);
            }
        }
        let gone: Vec<u64> = seen
            .iter()
            .filter(|(_, &at)| now.duration_since(at) > self.lease)
            .map(|(&node, _)| node)
            .collect();
        for node in gone {
            seen.remove(&node);
            tracing::info!(
                node = format_args!("{node:016x}"),
                "cluster: a node is gone; its members leave their rooms"
            );
            for shard in 0..self.shards {
                self.mesh.send(
                    shard,
                    ShardMsg::Relay(MeshMsg::Cluster(Box::new(ClusterMsg::NodeGone(node)))),
                );
            }
        }
    }
}

/// A connection to publish on.
enum Publishing {
    Single(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl Publishing {
    async fn open(target: &Target) -> redis::RedisResult<Publishing> {
        match target {
            Target::Single(client) => client
                .get_multiplexed_async_connection()
                .await
                .map(Publishing::Single),
            Target::Cluster { client, .. } => {
                client.get_async_connection().await.map(Publishing::Cluster)
            }
        }
    }

    /// Publishes `batch` in order per room: one pipeline on one server, or on a Redis
    /// Cluster one pipeline per room (a pipeline stays within a slot), all at once.
    async fn send(&mut self, batch: &[(String, Vec<u8>)]) -> redis::RedisResult<()> {
        match self {
            Publishing::Single(con) => {
                let mut pipe = redis::pipe();
                for (channel, envelope) in batch {
                    pipe.cmd("PUBLISH").arg(channel).arg(envelope).ignore();
                }
                pipe.query_async::<()>(con).await
            }
            Publishing::Cluster(con) => {
                let mut by_room: HashMap<&str, redis::Pipeline> = HashMap::new();
                for (channel, envelope) in batch {
                    by_room
                        .entry(channel)
                        .or_insert_with(redis::pipe)
                        .cmd("SPUBLISH")
                        .arg(channel)
                        .arg(envelope)
                        .ignore();
                }
                let mut sent = tokio::task::JoinSet::new();
                for (_, pipe) in by_room {
                    let mut con = con.clone();
                    sent.spawn(async move { pipe.query_async::<()>(&mut con).await });
                }
                let mut result = Ok(());
                while let Some(done) = sent.join_next().await {
                    if let Ok(Err(e)) = done {
                        result = Err(e);
                    }
                }
                result
            }
        }
    }
}

/// The publisher: envelopes out in order, pipelined.
async fn publish(
    target: Target,
    mut queue: mpsc::Receiver<(String, Vec<u8>)>,
    status: Arc<ClusterStatus>,
) {
    let mut con: Option<Publishing> = None;
    let mut retry_at = Instant::now();
    let mut backoff = Duration::from_millis(100);
    let mut batch = Vec::with_capacity(PIPELINE);
    while queue.recv_many(&mut batch, PIPELINE).await > 0 {
        if con.is_none() && Instant::now() >= retry_at {
            match tokio::time::timeout(REDIS_TIMEOUT, Publishing::open(&target)).await {
                Ok(Ok(c)) => {
                    con = Some(c);
                    backoff = Duration::from_millis(100);
                }
                _ => {
                    retry_at = Instant::now() + backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        let n = batch.len() as u64;
        let Some(c) = con.as_mut() else {
            status.dropped.fetch_add(n, Relaxed);
            batch.clear();
            continue;
        };
        match tokio::time::timeout(REDIS_TIMEOUT, c.send(&batch)).await {
            Ok(Ok(())) => {
                status.published.fetch_add(n, Relaxed);
            }
            _ => {
                status.dropped.fetch_add(n, Relaxed);
                con = None;
                retry_at = Instant::now() + backoff;
            }
        }
        batch.clear();
    }
}

/// The follower on a Redis Cluster: sharded subscriptions (`SSUBSCRIBE`), each on the
/// master owning the room's slot. The client subscribes again by itself after a
/// reconnection or a slot's move, and every confirmation (ours or those) comes as a push:
/// the hello goes then.
async fn follow_sharded(
    seeds: Vec<String>,
    node: u64,
    mut interest: mpsc::UnboundedReceiver<(String, bool)>,
    heard: mpsc::Sender<redis::Msg>,
    publish: mpsc::Sender<(String, Vec<u8>)>,
    status: Arc<ClusterStatus>,
) {
    let (push_tx, mut pushes) = mpsc::unbounded_channel::<redis::PushInfo>();
    let client = redis::cluster::ClusterClientBuilder::new(seeds)
        .use_protocol(redis::ProtocolVersion::RESP3)
        .push_sender(push_tx)
        .connection_timeout(REDIS_TIMEOUT)
        .response_timeout(REDIS_TIMEOUT)
        .build();
    let client = match client {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cluster: bad redis cluster seeds");
            return;
        }
    };
    let mut rooms: HashSet<String> = HashSet::new();
    let mut con: Option<redis::cluster_async::ClusterConnection> = None;
    let mut backoff = Duration::from_millis(100);
    let mut retry = tokio::time::Instant::now();
    loop {
        if con.is_none() && tokio::time::Instant::now() >= retry {
            let made = tokio::time::timeout(REDIS_TIMEOUT, client.get_async_connection()).await;
            if let Ok(Ok(mut c)) = made {
                let mut ok = true;
                for room in &rooms {
                    ok &= c.ssubscribe(channel(room)).await.is_ok();
                }
                if ok {
                    backoff = Duration::from_millis(100);
                    con = Some(c);
                }
            }
            if con.is_none() {
                retry = tokio::time::Instant::now() + backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
        status
            .subscriptions
            .store(if con.is_some() { rooms.len() as u64 } else { 0 }, Relaxed);
        tokio::select! {
            change = interest.recv() => {
                let Some((room, on)) = change else { return };
                let changed = if on { rooms.insert(room.clone()) } else { rooms.remove(&room) };
                if let (true, Some(c)) = (changed, con.as_mut()) {
                    let done = if on {
                        c.ssubscribe(channel(&room)).await
                    } else {
                        c.sunsubscribe(channel(&room)).await
                    };
                    if let Err(e) = done {
                        tracing::warn!(%room, error = %e, "cluster: a sharded subscription failed; connecting again");
                        con = None;
                    }
                }
            }
            push = pushes.recv() => {
                let Some(push) = push else { return };
                match push.kind {
                    redis::PushKind::SSubscribe => {
                        let room = push.data.first().and_then(|c| match c {
                            redis::Value::BulkString(b) => room_of(b),
                            _ => None,
                        });
                        if let Some(room) = room.filter(|r| rooms.contains(r)) {
                            let _ = publish.send((channel(&room), envelope::encode_hello(node))).await;
                        }
                    }
                    redis::PushKind::SMessage => {
                        if let Some(msg) = redis::Msg::from_push_info(push) {
                            if heard.send(msg).await.is_err() {
                                return;
                            }
                        }
                    }
                    _ => {}
                }
            }
            () = tokio::time::sleep_until(retry), if con.is_none() => {}
        }
    }
}

/// The follower: the subscriber connection, following the rooms with members here.
async fn follow(
    target: Target,
    node: u64,
    mut interest: mpsc::UnboundedReceiver<(String, bool)>,
    heard: mpsc::Sender<redis::Msg>,
    publish: mpsc::Sender<(String, Vec<u8>)>,
    status: Arc<ClusterStatus>,
) {
    let mut rooms: HashSet<String> = HashSet::new();
    let mut backoff = Duration::from_millis(100);
    let client = match target {
        Target::Single(client) => client,
        Target::Cluster { seeds, .. } => {
            return follow_sharded(seeds, node, interest, heard, publish, status).await
        }
    };
    let hello = |room: &str| (channel(room), envelope::encode_hello(node));
    loop {
        status.subscriptions.store(0, Relaxed);
        let pubsub = match tokio::time::timeout(REDIS_TIMEOUT, client.get_async_pubsub()).await {
            Ok(Ok(p)) => p,
            _ => {
                // Keep up with the rooms while Redis is away, then try again.
                let until = tokio::time::Instant::now() + backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                loop {
                    tokio::select! {
                        change = interest.recv() => match change {
                            Some((room, on)) => {
                                if on { rooms.insert(room); } else { rooms.remove(&room); }
                            }
                            None => return,
                        },
                        () = tokio::time::sleep_until(until) => break,
                    }
                }
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        let (mut sink, mut stream) = pubsub.split();
        // Every followed room again (after a reconnect), with a hello for each: the other
        // nodes' members may have changed meanwhile.
        let all: Vec<String> = rooms.iter().map(|r| channel(r)).collect();
        let mut subscribed = true;
        for chunk in all.chunks(PIPELINE) {
            if sink.subscribe(chunk).await.is_err() {
                subscribed = false;
                break;
            }
        }
        if !subscribed {
            continue;
        }
        if !rooms.is_empty() {
            tracing::info!(rooms = rooms.len(), "cluster: following rooms again");
        }
        for room in &rooms {
            let _ = publish.send(hello(room)).await;
        }
        status.subscriptions.store(rooms.len() as u64, Relaxed);
        loop {
            tokio::select! {
                change = interest.recv() => {
                    let Some((room, on)) = change else { return };
                    let ok = if on {
                        if rooms.insert(room.clone()) {
                            let ok = sink.subscribe(channel(&room)).await.is_ok();
                            if ok {
                                let _ = publish.send(hello(&room)).await;
                            }
                            ok
                        } else {
                            true
                        }
                    } else if rooms.remove(&room) {
                        sink.unsubscribe(channel(&room)).await.is_ok()
                    } else {
                        true
                    };
                    status.subscriptions.store(rooms.len() as u64, Relaxed);
                    if !ok {
                        break;
                    }
                }
                msg = stream.next() => match msg {
                    Some(msg) => {
                        if heard.send(msg).await.is_err() {
                            return;
                        }
                    }
                    None => break,
                },
            }
        }
        tracing::warn!("cluster: the subscriber connection dropped; connecting again");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_channel_names_its_room_as_the_hash_tag_and_back() {
        for room in ["arena-42", "/chat\0lobby", "x{y}"] {
            let c = channel(room);
            assert!(c.starts_with("corelay:room:{"));
            assert_eq!(room_of(c.as_bytes()).as_deref(), Some(room));
        }
        assert_eq!(room_of(b"corelay:node:x"), None);
    }
}
