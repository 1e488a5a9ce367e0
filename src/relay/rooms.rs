//! What a room's host may do (docs/ROOMS.md): lock the room, kick a member, set its public
//! metadata and its state. The room's home shard decides, since it alone knows who the
//! host is (its longest-present member); a request from another shard crosses there and its
//! answer comes back on the same FIFO path, so it is ordered with the room's joins.

use std::sync::Arc;
use std::time::Instant;

use super::{home_shard, ClusterMsg, MeshMsg, PlayerId, Relay, Reply, ShardId};

/// What a created room's name starts with: the rest is its code, so that `join` by code
/// and by name are the same request, and the code's hash is the room's home.
pub const CODE_PREFIX: &str = "#";

/// Longest `empty_ttl_ms`: an hour. An empty room holds its state, metadata and history at
/// its home; a day of them from clients that never come back would be memory nobody uses.
pub const MAX_EMPTY_TTL_MS: u64 = 3_600_000;

/// Letters of generated codes: no `0`/`O`, `1`/`I`/`L`, so that a code read aloud or off a
/// screen is typed right.
const CODE_ALPHABET: &[u8] = b"23456789ABCDEFGHJKMNPQRSTUVWXYZ";

/// Length of a generated code: 31^6, about 890 million, so a random one rarely meets a
/// live room (which answers `room_exists`: ask again).
const CODE_LEN: usize = 6;

/// How a room is created (`room:create`, native `Create`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomOptions {
    /// Most members (at most `max_room_members`).
    pub max_members: u32,
    /// Not listed by `room:list`; joined with its code.
    pub private: bool,
    /// Public metadata (a JSON object's text).
    pub metadata: Option<Arc<str>>,
    /// How long the room survives being empty, in ms (0: it goes with its last member).
    pub empty_ttl_ms: u64,
}

/// Rooms in one page of `room:list`. 50 rooms of at most `max_metadata_bytes` each stay
/// well inside one answer a client's outbound queue holds.
pub const LIST_PAGE: usize = 50;

/// Last page a listing may ask for: each shard returns up to `(page + 1) * LIST_PAGE`
/// rooms for the asker to merge, so the page bounds that work.
pub const MAX_LIST_PAGE: u32 = 20;

/// What `room:list` asks for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListFilter {
    /// Every key given must be in the room's metadata with an equal value.
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// Only rooms with a free seat.
    pub free_seats: bool,
    /// Page, from 0.
    pub page: u32,
}

/// A listed room.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedRoom {
    /// Its name (`#<code>`).
    pub room: String,
    /// Its member count.
    pub members: u32,
    /// Its capacity.
    pub max_members: u32,
    /// Its metadata (JSON text), if its host set one.
    pub metadata: Option<Arc<str>>,
}

/// A listing this shard asked every shard for.
#[derive(Debug)]
pub(super) struct Listing {
    left: usize,
    filter: ListFilter,
    rooms: Vec<ListedRoom>,
}

/// A fresh random code.
pub fn new_code() -> String {
    use rand::RngExt;
    let mut rng = rand::rng();
    (0..CODE_LEN)
        .map(|_| char::from(CODE_ALPHABET[rng.random_range(0..CODE_ALPHABET.len())]))
        .collect()
}

/// `code` as the server keeps it (upper case), if it is one: 4 to 12 letters of the code
/// alphabet.
pub fn normalize_code(code: &str) -> Option<String> {
    let code = code.to_ascii_uppercase();
    ((4..=12).contains(&code.len()) && code.bytes().all(|b| CODE_ALPHABET.contains(&b)))
        .then_some(code)
}
use crate::proto::native::{ErrorCode, HostAction, LeaveReason};
use crate::stats::Refusal;

impl Relay {
    /// Lists the public created rooms of every shard that pass `filter`, for `player`'s
    /// request `req` (answered `Listed` once every shard has answered), sorted by name.
    pub fn list_rooms(
        &mut self,
        player: PlayerId,
        req: u64,
        filter: ListFilter,
    ) -> Result<(), ErrorCode> {
        if filter.page > MAX_LIST_PAGE {
            return Err(ErrorCode::InvalidValue);
        }
        let key = (player, req);
        if self.listings.contains_key(&key) {
            return Err(ErrorCode::InvalidValue);
        }
        let rooms = self.home_list(&filter);
        self.listings.insert(
            key,
            Listing {
                left: self.shards - 1,
                filter: filter.clone(),
                rooms,
            },
        );
        let me = self.shard;
        for shard in (0..self.shards).filter(|&s| s != me) {
            self.send_mesh(
                shard,
                MeshMsg::List {
                    player,
                    req,
                    filter: Box::new(filter.clone()),
                },
            );
        }
        self.listing_answered(key);
        Ok(())
    }

    /// This shard's homed rooms that `filter` lists: the first `(page + 1) * LIST_PAGE`
    /// by name.
    fn home_list(&self, filter: &ListFilter) -> Vec<ListedRoom> {
        let mut rooms: Vec<ListedRoom> = self
            .homes
            .iter()
            .filter_map(|(name, home)| {
                let options = home.options.as_ref()?;
                if options.private || home.total == 0 {
                    return None;
                }
                if filter.free_seats && home.total >= options.max_members {
                    return None;
                }
                if !filter.metadata.is_empty() {
                    let metadata: serde_json::Value =
                        serde_json::from_str(home.metadata.as_deref()?).ok()?;
                    let fits = filter
                        .metadata
                        .iter()
                        .all(|(k, v)| metadata.get(k) == Some(v));
                    if !fits {
                        return None;
                    }
                }
                Some(ListedRoom {
                    room: name.clone(),
                    members: home.total,
                    max_members: options.max_members,
                    metadata: home.metadata.clone(),
                })
            })
            .collect();
        rooms.sort_by(|a, b| a.room.cmp(&b.room));
        rooms.truncate((filter.page as usize + 1) * LIST_PAGE);
        rooms
    }

    /// Answers a listing once every shard has.
    fn listing_answered(&mut self, key: (PlayerId, u64)) {
        if self.listings.get(&key).is_none_or(|l| l.left > 0) {
            return;
        }
        let Some(mut listing) = self.listings.remove(&key) else {
            return;
        };
        listing.rooms.sort_by(|a, b| a.room.cmp(&b.room));
        let start = listing.filter.page as usize * LIST_PAGE;
        let more = listing.rooms.len() > start + LIST_PAGE;
        let rooms: Vec<ListedRoom> = listing
            .rooms
            .into_iter()
            .skip(start)
            .take(LIST_PAGE)
            .collect();
        let next_page =
            (more && listing.filter.page < MAX_LIST_PAGE).then_some(listing.filter.page + 1);
        self.reply_now(
            key.0,
            Reply::Listed {
                req: key.1,
                rooms,
                next_page,
            },
        );
    }

    /// Creates a room for `player`, its first member and host, with `options` and `code`
    /// (generated when `None`); answered to `req` with `Created{room, code, host}` once the
    /// room's home has made it, or `room_exists` when the code is taken.
    ///
    /// `Err` at once for a code that is not one, metadata too big or not a JSON object,
    /// or `max_members` of 0 or over `max_room_members`.
    pub fn create_room(
        &mut self,
        player: PlayerId,
        req: Option<u64>,
        code: Option<&str>,
        mut options: RoomOptions,
        now: Instant,
    ) -> Result<String, ErrorCode> {
        let code = match code {
            Some(code) => normalize_code(code).ok_or(ErrorCode::InvalidName)?,
            None => new_code(),
        };
        if options.max_members == 0 || options.max_members as usize > self.limits.max_room_members {
            return Err(ErrorCode::InvalidValue);
        }
        if let Some(metadata) = &options.metadata {
            self.check_action(&HostAction::SetMetadata {
                metadata: metadata.to_string(),
            })?;
        }
        options.empty_ttl_ms = options.empty_ttl_ms.min(MAX_EMPTY_TTL_MS);
        let room = format!("{CODE_PREFIX}{code}");
        self.join_with(player, req, &room, Some(Box::new(options)), now)?;
        Ok(room)
    }

    /// Destroys the rooms kept empty past their `empty_ttl_ms`.
    pub(super) fn expire_rooms(&mut self, now: Instant) {
        if self.emptied.is_empty() {
            return;
        }
        let (due, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.emptied)
            .into_iter()
            .partition(|(until, _)| *until <= now);
        self.emptied = kept;
        for (until, room) in due {
            // Joined again since (and maybe emptied again, later): not this entry's.
            let still = self
                .homes
                .get(&room)
                .is_some_and(|h| h.total == 0 && h.empty_until == Some(until));
            if still {
                self.destroy_home(&room);
            }
        }
    }

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
                    action: Box::new(action),
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
        if home.host().is_none_or(|(_, local)| local != Some(player)) {
            self.stats.count_refusal(Refusal::NotHost);
            return Err(ErrorCode::NotHost);
        }
        // The room's other nodes do the same (`relay/nodes.rs`).
        if home.shared {
            let known_elsewhere = match &action {
                HostAction::Kick { player: name } => home
                    .remote
                    .iter()
                    .any(|r| r.names.iter().any(|(n, _)| **n == **name)),
                _ => true,
            };
            if known_elsewhere {
                let bridge = self.bridge();
                self.send_mesh(
                    bridge,
                    MeshMsg::Cluster(Box::new(ClusterMsg::Action {
                        room: room.to_owned(),
                        node: 0,
                        action: action.clone(),
                    })),
                );
            }
        }
        let Some(home) = self.homes.get_mut(room) else {
            return Err(ErrorCode::NotMember);
        };
        match action {
            HostAction::Lock { locked } => home.locked = locked,
            HostAction::SetMetadata { metadata } => home.metadata = Some(Arc::from(metadata)),
            HostAction::SetState { state } => home.state = Some(Arc::from(state)),
            HostAction::Kick { player: name } => {
                let local = home
                    .members
                    .iter()
                    .find(|m| *m.name == *name)
                    .map(|m| (m.player, m.shard));
                let elsewhere = home
                    .remote
                    .iter()
                    .any(|r| r.names.iter().any(|(n, _)| **n == *name));
                let target = match local {
                    Some(target) => target,
                    // On another node: that node kicks it.
                    None if elsewhere => return Ok(()),
                    None => return Err(ErrorCode::NotMember),
                };
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
    pub(super) fn kick(&mut self, room: &str, player: PlayerId, now: Instant) {
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
                let result = self.home_action(&room, player, *action, now);
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
            MeshMsg::List {
                player,
                req,
                filter,
            } => {
                let rooms = self.home_list(&filter);
                self.send_mesh(from, MeshMsg::ListAnswer { player, req, rooms });
            }
            MeshMsg::ListAnswer { player, req, rooms } => {
                if let Some(listing) = self.listings.get_mut(&(player, req)) {
                    listing.left = listing.left.saturating_sub(1);
                    listing.rooms.extend(rooms);
                }
                self.listing_answered((player, req));
            }
            _ => {}
        }
    }
}
