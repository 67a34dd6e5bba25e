//! The Lua scripts: every cross-node invariant is checked and written in one of these, atomically
//! (Redis runs a script to its end before any other command), together with the log entry that
//! tells every node about it. A node never reads-then-writes across two round trips.
//!
//! Keys (`{ns}` = `[cluster] namespace`):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{ns}:log` | stream, fields `n`, `e` | the shared log: `n` the entry's sequence number (1, 2, 3... with no gaps), `e` one `ClusterEvent` JSON; capped `MAXLEN ~ 100000` |
//! | `{ns}:log:seq` | string | the last sequence number given (`INCR` in the same script as the `XADD`) |
//! | `{ns}:history` | stream, field `h` | the chat history: one `HistoryEntry` JSON per entry, capped by `[history] retention_max_messages` (exact `MAXLEN` up to 100000, `~` above), trimmed by age with `XTRIM MINID` |
//! | `{ns}:name:{name}` | string, `PX presence_ttl_ms` | `node/conn` holding the name (renewed by that node's heartbeat) |
//! | `{ns}:online` | hash | name → `node/conn`: who is listed online (the snapshot a node starts from) |
//! | `{ns}:bans` | hash | name → Unix ms the ban ends, `0` for a ban without end |
//! | `{ns}:mutes` | hash | name → Unix ms the mute ends, `0` for a mute without end |
//! | `{ns}:nodes` | sorted set | node id → Unix ms (Redis clock) its record expires |
//! | `{ns}:node:{id}` | string, `PX presence_ttl_ms` | the node's record (JSON: version, start, relay addresses) |
//! | `{ns}:voice` | hash | name → voice seat JSON `{node, conn, turn_user, media}` (the one voice room) |
//! | `{ns}:inbox:{id}` | stream, field `s` | signaling for voice members on node `id` (`RoutedSignal` JSON), capped `MAXLEN ~ 10000` |
//! | `{ns}:accounts` | hash | name → argon2 hash (`HSETNX` for /register: exactly one wins) |
//! | `{ns}:admins` | set | account names flagged admin |
//! | `{ns}:turn_secret` | string | the TURN REST secret every node signs and verifies with (`SET NX`, then `GET`) |
//! | `{ns}:invite_secret`, `{ns}:invite:{id}`, `{ns}:invites` | | invites: key, records, index, with their own scripts (`invites`) |
//!
//! Every script that logs takes the next sequence number and appends in the same step, so the
//! numbers in the log are consecutive: a reader that sees `n` after `n - 2` knows it missed one
//! (the log was trimmed past it) and resynchronizes. (`{ns}:log:seq` is derived from `KEYS[1]`
//! inside the scripts: fine on a single Redis, which is what cluster mode runs on.)
//!
//! Scripts (common `KEYS[1..3]` = log, history, online; `ARGV[1..3]` = log cap, history cap,
//! history trim mode `=` or `~`):
//!
//! - `claim` (`KEYS[4]` name key): `SET NX PX ttl`; if set, list the name online, store the
//!   "has joined." entry and log `UserJoined`. Returns 1 if this claim won, 0 if the name is held,
//!   -1 if `KEYS[5]` (bans) bans it (a ban racing the join).
//!   Of any number of concurrent claims on any nodes exactly one gets 1.
//! - `rename` (`KEYS[4]` new name key, `KEYS[5]` old name key): claims the new name like `claim`;
//!   if won, drops the old one (only if still ours), logs `NickChanged`. -1 if `KEYS[6]` bans it.
//! - `release` (`KEYS[4]` name key): deletes the name only if it still holds our `node/conn`
//!   (compare-and-delete) and logs `UserLeft`; if the key already expired but the online list
//!   still names us, it logs `UserLeft` too (the others must drop the name). Otherwise nothing.
//! - `publish` (`KEYS[4]` bans, `KEYS[5]` mutes, `KEYS[6]` TURN secret): for each of the
//!   changes it is given (one, or every publish the writer found queued: one round trip and one
//!   AOF fsync for all of them), in order, applies a ban/unban/mute/unmute to its hash or a
//!   rotated secret to its key, stores the history entry if any, logs the event. Returns how
//!   many it logged.
//! - `heartbeat` (`KEYS[4]` nodes, `KEYS[5]` own record): renews the node (expiry = Redis time +
//!   ttl) and each name the node holds: `PEXPIRE` if the key still holds our `node/conn`;
//!   re-`SET` if it expired meanwhile (Redis was away longer than the TTL) but is still listed
//!   online as ours; re-`SET`, list + log `UserJoined` (no history entry) if the node had no
//!   entry in `{ns}:nodes` (it was reaped); otherwise (someone else holds it, or it was given up
//!   by a rename or release after the hub listed it) reports it lost. Returns the lost names,
//!   the nodes whose expiry has passed and the records of the nodes alive (their relay
//!   addresses open the peer policy to each other's relays).
//! - `reap` (`KEYS[4]` nodes, `KEYS[5]` dead node's record, `KEYS[6]` voice, `KEYS[7]` its
//!   inbox): only if the node's expiry has passed and `ZREM` removes it (one reaper wins),
//!   deletes its record and inbox, its
//!   voice seats ("<name> left voice chat" stored for each), its online entries and name keys
//!   that still hold its `node/conn`s ("<name> has left." stored for each), logs `NodeGone`.
//!   With `ARGV[7]` = `own` (a node starting) it does the same for the node's own id without
//!   the expiry check, and logs only if a previous run left anything.
//! - `voice_join` (`KEYS[4]` voice): if the name holds no seat and fewer than
//!   `max_participants` seats are taken, takes one, stores the notice, logs `VoiceJoined`.
//!   Returns 1 (seated), 0 (full) or -1 (already seated): the room's size holds cluster-wide
//!   under any number of concurrent joins on any nodes.
//! - `voice_leave` (`KEYS[4]` voice): frees the seat only if it is still `turn_user`'s (a
//!   later seat of the same name stays), stores the notice, logs `VoiceLeft`.
//! - `prune_restrictions` (`KEYS` bans, mutes; run every minute from the heartbeat): drops the
//!   timed bans and mutes whose end has passed.
//! - `snapshot`: the newest log ID and sequence number, the newest history entries, online list, bans, mutes and voice seats, read
//!   in one atomic step: a node that applies the log from that ID on misses nothing and sees
//!   nothing twice.

use redis::Script;

/// Shared by every writing script: append to the log and the history with their caps.
const APPEND: &str = r"
local function log_event(event)
  local n = redis.call('INCR', KEYS[1] .. ':seq')
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'n', n, 'e', event)
end
local function store_entry(entry)
  if entry ~= '' then
    redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], ARGV[2], '*', 'h', entry)
  end
end
local function redis_now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function banned(bans, name)
  local ends = redis.call('HGET', bans, name)
  if not ends then return false end
  local ms = tonumber(ends)
  return not ms or ms == 0 or ms > redis_now_ms()
end
";

const CLAIM: &str = r"
-- ARGV[4] owner, ARGV[5] ttl ms, ARGV[6] event, ARGV[7] entry, ARGV[8] name; KEYS[5] bans
if banned(KEYS[5], ARGV[8]) then return -1 end
if not redis.call('SET', KEYS[4], ARGV[4], 'NX', 'PX', ARGV[5]) then
  if redis.call('GET', KEYS[4]) == ARGV[4] then return 1 end
  return 0
end
redis.call('HSET', KEYS[3], ARGV[8], ARGV[4])
store_entry(ARGV[7])
log_event(ARGV[6])
return 1
";

const RENAME: &str = r"
-- ARGV[4] owner, ARGV[5] ttl ms, ARGV[6] event, ARGV[7] entry, ARGV[8] new name, ARGV[9] old name;
-- KEYS[6] bans
if banned(KEYS[6], ARGV[8]) then return -1 end
if not redis.call('SET', KEYS[4], ARGV[4], 'NX', 'PX', ARGV[5]) then return 0 end
if redis.call('GET', KEYS[5]) == ARGV[4] then redis.call('DEL', KEYS[5]) end
if redis.call('HGET', KEYS[3], ARGV[9]) == ARGV[4] then redis.call('HDEL', KEYS[3], ARGV[9]) end
redis.call('HSET', KEYS[3], ARGV[8], ARGV[4])
store_entry(ARGV[7])
log_event(ARGV[6])
return 1
";

const RELEASE: &str = r"
-- ARGV[4] owner, ARGV[5] event, ARGV[6] entry, ARGV[7] name
local held = redis.call('GET', KEYS[4])
local listed = redis.call('HGET', KEYS[3], ARGV[7])
if held == ARGV[4] then redis.call('DEL', KEYS[4]) end
if listed == ARGV[4] then redis.call('HDEL', KEYS[3], ARGV[7]) end
if held == ARGV[4] or (not held and listed == ARGV[4]) then
  store_entry(ARGV[6])
  log_event(ARGV[5])
  return 1
end
return 0
";

const PUBLISH: &str = r"
-- From ARGV[4], one group of five per change, applied in order:
-- event, entry, op, name, until ms (0: no end)
for i = 4, #ARGV, 5 do
  local op, name = ARGV[i + 2], ARGV[i + 3]
  if op == 'ban' then redis.call('HSET', KEYS[4], name, ARGV[i + 4])
  elseif op == 'unban' then redis.call('HDEL', KEYS[4], name)
  elseif op == 'mute' then redis.call('HSET', KEYS[5], name, ARGV[i + 4])
  elseif op == 'unmute' then redis.call('HDEL', KEYS[5], name)
  elseif op == 'secret' then redis.call('SET', KEYS[6], name)
  end
  store_entry(ARGV[i + 1])
  log_event(ARGV[i])
end
return (#ARGV - 3) / 5
";

const HEARTBEAT: &str = r"
-- ARGV[4] node id, ARGV[5] ttl ms, ARGV[6] node record, ARGV[7] name key prefix,
-- ARGV[8] node record key prefix,
-- then triples from ARGV[9]: name, owner, UserJoined event (logged if the claim had expired)
local now = redis_now_ms()
local ttl = tonumber(ARGV[5])
-- No record: this node was reaped (or Redis lost its data), so everything of ours was dropped
-- and comes back. Otherwise a name no longer listed as ours was given up (a rename, a release)
-- after the hub listed it, and must not come back.
local reaped = not redis.call('ZSCORE', KEYS[4], ARGV[4])
redis.call('ZADD', KEYS[4], now + ttl, ARGV[4])
redis.call('SET', KEYS[5], ARGV[6], 'PX', ttl)
local lost = {}
for i = 9, #ARGV, 3 do
  local name, owner = ARGV[i], ARGV[i + 1]
  local key = ARGV[7] .. name
  local held = redis.call('GET', key)
  if held == owner then
    redis.call('PEXPIRE', key, ttl)
  elseif not held and redis.call('HGET', KEYS[3], name) == owner then
    redis.call('SET', key, owner, 'PX', ttl)
  elseif not held and reaped then
    redis.call('SET', key, owner, 'PX', ttl)
    redis.call('HSET', KEYS[3], name, owner)
    log_event(ARGV[i + 2])
  else
    table.insert(lost, name)
  end
end
local expired = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', '(' .. now)
local records = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], now, '+inf')) do
  local record = redis.call('GET', ARGV[8] .. id)
  if record then table.insert(records, record) end
end
return {lost, expired, records}
";

const REAP: &str = r#"
-- ARGV[4] dead node id, ARGV[5] name key prefix, ARGV[6] ISO timestamp of the notices,
-- ARGV[7] 'own': this node starting, releasing what a previous run under its id left
local own = ARGV[7] == 'own'
if own then
  redis.call('ZREM', KEYS[4], ARGV[4])
else
  local score = redis.call('ZSCORE', KEYS[4], ARGV[4])
  if not score or tonumber(score) >= redis_now_ms() then return 0 end
  if redis.call('ZREM', KEYS[4], ARGV[4]) ~= 1 then return 0 end
end
-- Seats are read and checked before anything is written: a record that is not a seat (junk
-- anyone with access wrote) is skipped, never an error that stops the reap half-done.
local seat_names = {}
local voice = redis.call('HGETALL', KEYS[6])
for i = 1, #voice, 2 do
  local ok, seat = pcall(cjson.decode, voice[i + 1])
  if ok and type(seat) == 'table' and seat.node == ARGV[4] then table.insert(seat_names, voice[i]) end
end
redis.call('DEL', KEYS[5])
redis.call('DEL', KEYS[7])
local seats = {}
for _, name in ipairs(seat_names) do
  redis.call('HDEL', KEYS[6], name)
  store_entry(cjson.encode({type = 'system', text = name .. ' left voice chat', timestamp = ARGV[6]}))
  table.insert(seats, cjson.encode(name))
end
local prefix = ARGV[4] .. '/'
local names = {}
local online = redis.call('HGETALL', KEYS[3])
for i = 1, #online, 2 do
  local name, owner = online[i], online[i + 1]
  if string.sub(owner, 1, #prefix) == prefix then
    redis.call('HDEL', KEYS[3], name)
    local key = ARGV[5] .. name
    if redis.call('GET', key) == owner then redis.call('DEL', key) end
    store_entry(cjson.encode({type = 'system', text = name .. ' has left.', timestamp = ARGV[6]}))
    table.insert(names, cjson.encode(name))
  end
end
if own and #names == 0 and #seats == 0 then return 0 end
log_event('{"kind":"NodeGone","node":' .. cjson.encode(ARGV[4]) .. ',"names":[' ..
  table.concat(names, ',') .. '],"seats":[' .. table.concat(seats, ',') .. '],"timestamp":' ..
  cjson.encode(ARGV[6]) .. '}')
return 1
"#;

const VOICE_JOIN: &str = r"
-- ARGV[4] name, ARGV[5] seat JSON, ARGV[6] max participants, ARGV[7] event, ARGV[8] entry
if redis.call('HEXISTS', KEYS[4], ARGV[4]) == 1 then return -1 end
if redis.call('HLEN', KEYS[4]) >= tonumber(ARGV[6]) then return 0 end
redis.call('HSET', KEYS[4], ARGV[4], ARGV[5])
store_entry(ARGV[8])
log_event(ARGV[7])
return 1
";

const VOICE_LEAVE: &str = r"
-- ARGV[4] name, ARGV[5] turn user, ARGV[6] event, ARGV[7] entry
local seat = redis.call('HGET', KEYS[4], ARGV[4])
if not seat then return 0 end
local ok, record = pcall(cjson.decode, seat)
-- Junk under the name is no one's seat: it goes, so that the name can be seated again.
if ok and type(record) == 'table' and record.turn_user ~= ARGV[5] then return 0 end
redis.call('HDEL', KEYS[4], ARGV[4])
store_entry(ARGV[7])
log_event(ARGV[6])
return 1
";

const PRUNE_RESTRICTIONS: &str = r"
-- KEYS: bans, mutes. Drops the timed entries whose end has passed (by Redis's clock): every node
-- lifts them by itself, but the hashes would otherwise keep them forever.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dropped = 0
for _, key in ipairs(KEYS) do
  local all = redis.call('HGETALL', key)
  for i = 1, #all, 2 do
    local ms = tonumber(all[i + 1])
    if ms and ms ~= 0 and ms <= now then
      redis.call('HDEL', key, all[i])
      dropped = dropped + 1
    end
  end
end
return dropped
";

const SNAPSHOT: &str = r"
-- KEYS: log, history, online, bans, mutes, voice; ARGV[1] history entries wanted
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local last_id = '0-0'
if #newest > 0 then last_id = newest[1][1] end
return {
  last_id,
  tonumber(redis.call('GET', KEYS[1] .. ':seq') or '0'),
  redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', ARGV[1]),
  redis.call('HGETALL', KEYS[3]),
  redis.call('HGETALL', KEYS[4]),
  redis.call('HGETALL', KEYS[5]),
  redis.call('HGETALL', KEYS[6]),
}
";

/// The scripts, loaded once (invoked with EVALSHA, falling back to EVAL after a Redis restart).
pub struct Scripts {
    pub claim: Script,
    pub rename: Script,
    pub release: Script,
    pub publish: Script,
    pub heartbeat: Script,
    pub reap: Script,
    pub snapshot: Script,
    pub voice_join: Script,
    pub voice_leave: Script,
    pub prune_restrictions: Script,
}

impl Scripts {
    pub fn new() -> Self {
        let with_append = |body: &str| Script::new(&format!("{APPEND}{body}"));
        Self {
            claim: with_append(CLAIM),
            rename: with_append(RENAME),
            release: with_append(RELEASE),
            publish: with_append(PUBLISH),
            heartbeat: with_append(HEARTBEAT),
            reap: with_append(REAP),
            snapshot: Script::new(SNAPSHOT),
            voice_join: with_append(VOICE_JOIN),
            voice_leave: with_append(VOICE_LEAVE),
            prune_restrictions: Script::new(PRUNE_RESTRICTIONS),
        }
    }
}

impl Default for Scripts {
    fn default() -> Self {
        Self::new()
    }
}
