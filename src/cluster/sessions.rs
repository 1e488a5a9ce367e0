//! Sessions across nodes (history on): the bridge's side. Each node keeps a record of
//! every resumable native session it holds in one Redis hash, `corelay:sessions:{<node>}`
//! (its incarnation in hex), field the session id, value the record
//! ([`crate::relay::SessionRecord`], JSON). The hash lives a lease plus two resume windows
//! past the node's last write or refresh, so a node killed leaves its sessions readable for
//! as long as their clients may come back.
//!
//! A client whose node is gone reconnects to any node with its session id and secret. The
//! secret names the node that made it (its first 16 hex digits), so the new node knows
//! which hash to look in; the [`CLAIM`] script takes the record out of it only if the
//! secret's hash matches, in one step, so that two nodes never both restore a session.
//! The old node, if it is alive after all, is told on its own channel
//! ([`node_channel`]) that the session moved, and lets its connection go.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::bridge::{Publishing, REDIS_TIMEOUT};
use super::{ClusterStatus, Target};
use crate::relay::{ClusterMsg, MeshMsg, PlayerId, SessionRecord};

/// The hash of node `node`'s sessions.
pub fn sessions_key(node: u64) -> String {
    format!("corelay:sessions:{{{node:016x}}}")
}

/// Node `node`'s own channel: what other nodes tell it alone (a session of its moved).
pub fn node_channel(node: u64) -> String {
    format!("corelay:to-node:{{{node:016x}}}")
}

/// The node whose channel `channel` is ([`node_channel`]).
pub fn node_of_channel(channel: &[u8]) -> Option<u64> {
    let hex = channel
        .strip_prefix(b"corelay:to-node:{")?
        .strip_suffix(b"}")?;
    u64::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
}

/// Takes session `ARGV[1]`'s record out of hash `KEYS[1]` if its `secret` field is
/// `ARGV[2]` (the hash of the secret the client showed); returns the record, or nil.
pub const CLAIM: &str = r"
local rec = redis.call('HGET', KEYS[1], ARGV[1])
if not rec then return false end
local ok, r = pcall(cjson.decode, rec)
if not ok or type(r) ~= 'table' or r.secret ~= ARGV[2] then return false end
redis.call('HDEL', KEYS[1], ARGV[1])
return rec
";

/// What the loop asks of the sessions task.
#[derive(Debug)]
pub enum SessionOp {
    /// Write (or, `None`, remove) a session's record in this node's hash.
    Save(PlayerId, Option<String>),
    /// Keep this node's hash alive.
    Refresh,
    /// A client showed session `player` with `secret` (made by node `from`) to shard
    /// `shard` here.
    Claim {
        /// The session.
        player: PlayerId,
        /// The secret the client showed.
        secret: Box<str>,
        /// The node its secret names.
        from: u64,
        /// The shard here that asks.
        shard: usize,
    },
}

/// The sessions task: writes this node's records in order and runs claims; answers go to
/// `answers` (the loop hands them to the shard that asked).
pub async fn keep(
    target: Target,
    node: u64,
    ttl: Duration,
    mut ops: mpsc::UnboundedReceiver<SessionOp>,
    answers: mpsc::UnboundedSender<(usize, MeshMsg)>,
    status: Arc<ClusterStatus>,
) {
    let key = sessions_key(node);
    let mut con: Option<Publishing> = None;
    let mut batch = Vec::new();
    while ops.recv_many(&mut batch, 256).await > 0 {
        if con.is_none() {
            if let Ok(Ok(c)) = tokio::time::timeout(REDIS_TIMEOUT, Publishing::open(&target)).await
            {
                con = Some(c);
            }
        }
        for op in batch.drain(..) {
            let Some(c) = con.as_mut() else {
                if let SessionOp::Claim { player, shard, .. } = op {
                    let _ = answers.send((shard, claimed(player, None)));
                }
                continue;
            };
            let done = match op {
                SessionOp::Save(player, record) => {
                    let field = format!("{player:x}");
                    match record {
                        Some(json) => {
                            let mut pipe = redis::pipe();
                            pipe.cmd("HSET").arg(&key).arg(&field).arg(json).ignore();
                            pipe.cmd("PEXPIRE")
                                .arg(&key)
                                .arg(ttl.as_millis() as u64)
                                .ignore();
                            c.pipeline(&pipe).await
                        }
                        None => c
                            .query(redis::cmd("HDEL").arg(&key).arg(&field))
                            .await
                            .map(drop),
                    }
                }
                SessionOp::Refresh => c
                    .query(redis::cmd("PEXPIRE").arg(&key).arg(ttl.as_millis() as u64))
                    .await
                    .map(drop),
                SessionOp::Claim {
                    player,
                    secret,
                    from,
                    shard,
                } => {
                    let hash = crate::relay::secret_hash(&secret);
                    let found = c
                        .query(
                            redis::cmd("EVAL")
                                .arg(CLAIM)
                                .arg(1)
                                .arg(sessions_key(from))
                                .arg(format!("{player:x}"))
                                .arg(hash),
                        )
                        .await;
                    let record = match &found {
                        Ok(redis::Value::BulkString(json)) => {
                            match serde_json::from_slice::<SessionRecord>(json) {
                                Ok(r) => Some(Box::new(r)),
                                Err(_) => {
                                    status.refused.fetch_add(1, Relaxed);
                                    None
                                }
                            }
                        }
                        _ => None,
                    };
                    if record.is_some() {
                        // The old node, if alive, lets its connection go.
                        let publish = if c.sharded() { "SPUBLISH" } else { "PUBLISH" };
                        let _ = c
                            .query(
                                redis::cmd(publish)
                                    .arg(node_channel(from))
                                    .arg(player.to_le_bytes().as_slice()),
                            )
                            .await;
                    }
                    let _ = answers.send((shard, claimed(player, record)));
                    found.map(drop)
                }
            };
            if let Err(e) = done {
                tracing::warn!(error = %e, "cluster: a session write failed");
                con = None;
            }
        }
    }
}

fn claimed(player: PlayerId, record: Option<Box<SessionRecord>>) -> MeshMsg {
    MeshMsg::Cluster(Box::new(ClusterMsg::Claimed { player, record }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_channel_names_its_node() {
        let c = node_channel(0xdead_beef_0000_0001);
        assert_eq!(node_of_channel(c.as_bytes()), Some(0xdead_beef_0000_0001));
        assert_eq!(node_of_channel(b"corelay:room:{x}"), None);
    }
}
