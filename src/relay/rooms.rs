//! What a room's host may do (docs/ROOMS.md): lock the room, kick a member, set its public
//! metadata and its state. The room's home shard decides, since it alone knows who the
//! host is (its longest-present member); a request from another shard crosses there and its
//! answer comes back on the same FIFO path, so it is ordered with the room's joins.

use std::sync::Arc;
use std::time::Instant;

use super::{home_shard, MeshMsg, PlayerId, Relay, Reply, ShardId};
use crate::proto::native::{ErrorCode, HostAction, LeaveReason};
use crate::stats::Refusal;

impl Relay {
    /// `player` asks, as `room`'s host, for `action`; answered to request `req` with
    /// `Updated` or an error once the room's home has decided.
    ///
    /// `Err` at once when the player is not a member here, or the value is too big or not
    /// JSON (metadata: not an object): nothing was sent to the home.
    pub fn host_action(
        &mut self,
        player: PlayerId,
        req: Option<u64>,
        room: &str,
        action: HostAction,
        now: Instant,
    ) -> Result<(), ErrorCode> {
        if !self.is_member(player, room) {
            return Err(ErrorCode::NotMember);
        }
        self.check_action(&action)?;
        let home = home_shard(room, self.shards);
        if home == self.shard {
            let result = self.home_action(room, player, action, now);
            self.answer_action(player, req, room, result);
        } else {
            self.send_mesh(
                home,
                MeshMsg::HostAction {
                    room: room.to_owned(),
                    player,
                    req,
                    action,
                },
            );
        }
        Ok(())
    }

    /// Bounds and form of a host's values, checked where the request arrives.
    fn check_action(&self, action: &HostAction) -> Result<(), ErrorCode> {
        let limits = &self.limits.rooms;
        let (text, max, object) = match action {
            HostAction::Lock { .. } => return Ok(()),
            HostAction::Kick { player } => {
                return if player.is_empty() {
                    Err(ErrorCode::InvalidName)
                } else {
                    Ok(())
                }
            }
            HostAction::SetMetadata { metadata } => (metadata, limits.max_metadata_bytes, true),
            HostAction::SetState { state } => (state, limits.max_state_bytes, false),
        };
        if text.len() > max {
            return Err(ErrorCode::TooBig);
        }
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(value) if !object || value.is_object() => Ok(()),
            _ => Err(ErrorCode::InvalidValue),
        }
    }

    /// On `room`'s home: carries out `player`'s `action` if it is the host.
    fn home_action(
        &mut self,
        room: &str,
        player: PlayerId,
        action: HostAction,
        now: Instant,
    ) -> Result<(), ErrorCode> {
        let Some(home) = self.homes.get_mut(room) else {
            return Err(ErrorCode::NotMember);
        };
        if home.members.first().is_none_or(|m| m.player != player) {
            self.stats.count_refusal(Refusal::NotHost);
            return Err(ErrorCode::NotHost);
        }
        match action {
            HostAction::Lock { locked } => home.locked = locked,
            HostAction::SetMetadata { metadata } => home.metadata = Some(Arc::from(metadata)),
            HostAction::SetState { state } => home.state = Some(Arc::from(state)),
            HostAction::Kick { player: name } => {
                let target = home
                    .members
                    .iter()
                    .find(|m| *m.name == *name)
                    .map(|m| (m.player, m.shard))
                    .ok_or(ErrorCode::NotMember)?;
                match target {
                    (kicked, shard) if shard == self.shard => self.kick(room, kicked, now),
                    (kicked, shard) => self.send_mesh(
                        shard,
                        MeshMsg::Kick {
                            room: room.to_owned(),
                            player: kicked,
                        },
                    ),
                }
            }
        }
        Ok(())
    }

    /// Answers `player`'s host action.
    fn answer_action(
        &mut self,
        player: PlayerId,
        req: Option<u64>,
        room: &str,
        result: Result<(), ErrorCode>,
    ) {
        self.reply(player, req, |req| match result {
            Ok(()) => Reply::Updated {
                req,
                room: room.to_owned(),
            },
            Err(code) => Reply::Error {
                req,
                code,
                message: match code {
                    ErrorCode::NotHost => format!("only the host of {room} may do that"),
                    _ => "host action refused".to_owned(),
                },
            },
        });
    }

    /// On the kicked member's shard: it leaves `room` (the room is told `kicked`) and is
    /// told so itself.
    fn kick(&mut self, room: &str, player: PlayerId, now: Instant) {
        if !self.is_member(player, room) {
            return;
        }
        if let Some(p) = self.players.get(&player) {
            // A full outbox closes its own connection; the leave happens either way.
            let _ = p.outbox.push(
                Reply::Kicked {
                    room: room.to_owned(),
                }
                .frame(p.wire),
            );
        }
        self.remove_member(player, room, LeaveReason::Kicked, now);
    }

    /// Handles the room messages of the mesh.
    pub(super) fn handle_room_mesh(&mut self, from: ShardId, msg: MeshMsg, now: Instant) {
        match msg {
            MeshMsg::HostAction {
                room,
                player,
                req,
                action,
            } => {
                let result = self.home_action(&room, player, action, now);
                self.send_mesh(
                    from,
                    MeshMsg::HostDone {
                        room,
                        player,
                        req,
                        result,
                    },
                );
            }
            MeshMsg::HostDone {
                room,
                player,
                req,
                result,
            } => self.answer_action(player, req, &room, result),
            MeshMsg::Kick { room, player } => self.kick(&room, player, now),
            _ => {}
        }
    }
}
