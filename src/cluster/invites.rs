//! Invites in cluster mode: one signing key, one use count and one revocation per invite for
//! every node, in Redis instead of each node's SQLite file (`invite::ledger`), so an invite
//! for N uses admits N people cluster-wide and `relaychat invite --revoke` acts everywhere.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{ns}:invite_secret` | string | the invite signing key (`SET NX`: the first offer wins, every node reads it) |
//! | `{ns}:invite:{id}` | hash, `EXPIREAT keep` | `max`, `used`, `expires` (the token's, Unix s), `keep`, `created`, `revoked` (`1` once revoked) |
//! | `{ns}:invites` | sorted set | invite id → its record's `keep` (what `--list` walks; pruned by every script that adds to it) |
//!
//! **How long a record lives** (`keep`): until the invite expires, and, once it has let someone
//! in, until the last member pass it led to expires (each admission, by invite or pass, moves
//! `keep` to the new pass's expiry plus a margin). Member passes are renewed on every visit and
//! only while their invite is not revoked, so a revocation then outlives every pass it must
//! refuse, and nothing outlives the last thing signed for it: Redis does not grow with invites
//! nobody uses any more.
//!
//! Every decision is one script, so it is atomic across nodes (Redis runs a script to its end
//! before any other command):
//!
//! - `record` (the CLI): creates the record if absent. Returns 0 if the invite has already
//!   expired by Redis's clock, else 1.
//! - `use`: creates the record if absent (a signed invite issued before the cluster store knew
//!   it), then counts one use only while `used < max` and not revoked and not expired (Redis's
//!   clock), and moves `keep`. Returns 1 (admitted), 0 (used up), -1 (revoked), -2 (expired).
//!   Of any number of concurrent uses of an invite's last slot on any nodes exactly one gets 1.
//! - `pass`: -1 if the pass's invite is revoked; else moves `keep` (when there is a record)
//!   and returns 1.
//! - `revoke`: sets `revoked` if the record exists. Returns 1, or 0 when there is none.
//! - `import`: merges one row of a node's SQLite ledger (a node that signed with the key the
//!   cluster now uses): creates the record if absent, keeps the larger use count, a revocation
//!   stays, `keep` only grows.

use std::sync::Arc;

use redis::aio::ConnectionManager;
use redis::{FromRedisValue, RedisResult, Script, ScriptInvocation};

use super::{ClusterContext, Keys};
use crate::invite::ledger::{InviteRecord, InviteUse};
use crate::invite::token::Invite;

/// Shared by the scripts (`KEYS[1]` the record, `KEYS[2]` the index, `ARGV[1]` the invite id).
const COMMON: &str = r"
local function redis_now()
  return tonumber(redis.call('TIME')[1])
end
-- Drops index entries whose record has expired; every script that adds to the index calls it.
local function prune(now)
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. now)
end
-- Moves the record's end of life later (never earlier).
local function keep_until(t)
  local keep = tonumber(redis.call('HGET', KEYS[1], 'keep') or '0') or 0
  if tonumber(t) > keep then
    redis.call('HSET', KEYS[1], 'keep', t)
    redis.call('EXPIREAT', KEYS[1], t)
    redis.call('ZADD', KEYS[2], t, ARGV[1])
  end
end
-- Creates the record of a signed invite if absent; false if it has expired by Redis's clock.
local function ensure_record(max, expires, created, now)
  if redis.call('EXISTS', KEYS[1]) == 1 then return true end
  if tonumber(expires) <= now then return false end
  redis.call('HSET', KEYS[1], 'max', max, 'used', 0, 'expires', expires, 'keep', expires,
    'created', created)
  redis.call('EXPIREAT', KEYS[1], expires)
  redis.call('ZADD', KEYS[2], expires, ARGV[1])
  return true
end
";

const RECORD: &str = r"
-- ARGV[2] max uses, ARGV[3] expires, ARGV[4] created
local now = redis_now()
prune(now)
if ensure_record(ARGV[2], ARGV[3], ARGV[4], now) then return 1 end
return 0
";

const USE: &str = r"
-- ARGV[2] max uses, ARGV[3] expires, ARGV[4] created, ARGV[5] keep (the new pass's end + margin)
local now = redis_now()
prune(now)
if not ensure_record(ARGV[2], ARGV[3], ARGV[4], now) then return -2 end
local r = redis.call('HMGET', KEYS[1], 'max', 'used', 'expires', 'revoked')
if r[4] == '1' then return -1 end
if (tonumber(r[3]) or 0) <= now then return -2 end
if (tonumber(r[2]) or 0) >= (tonumber(r[1]) or 0) then return 0 end
redis.call('HINCRBY', KEYS[1], 'used', 1)
keep_until(ARGV[5])
return 1
";

const PASS: &str = r"
-- ARGV[2] keep (the new pass's end + margin)
if redis.call('EXISTS', KEYS[1]) == 0 then return 1 end
if redis.call('HGET', KEYS[1], 'revoked') == '1' then return -1 end
keep_until(ARGV[2])
return 1
";

const REVOKE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'revoked', 1)
return 1
";

const IMPORT: &str = r"
-- ARGV[2] max uses, ARGV[3] used, ARGV[4] expires, ARGV[5] revoked (1/0), ARGV[6] keep,
-- ARGV[7] created
local now = redis_now()
prune(now)
if tonumber(ARGV[6]) <= now then return 0 end
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'max', ARGV[2], 'used', 0, 'expires', ARGV[4], 'keep', 0,
    'created', ARGV[7])
end
local used = tonumber(redis.call('HGET', KEYS[1], 'used') or '0') or 0
if tonumber(ARGV[3]) > used then redis.call('HSET', KEYS[1], 'used', ARGV[3]) end
if ARGV[5] == '1' then redis.call('HSET', KEYS[1], 'revoked', 1) end
keep_until(ARGV[6])
return 1
";

/// The cluster's invite ledger and signing key.
#[derive(Clone)]
pub struct ClusterInvites {
    conn: ConnectionManager,
    keys: Keys,
    /// Shared: every session's gate holds a clone.
    scripts: Arc<InviteScripts>,
}

struct InviteScripts {
    record: Script,
    use_invite: Script,
    pass: Script,
    revoke: Script,
    import: Script,
}

impl InviteScripts {
    fn new() -> Self {
        let with_common = |body: &str| Script::new(&format!("{COMMON}{body}"));
        Self {
            record: with_common(RECORD),
            use_invite: with_common(USE),
            pass: with_common(PASS),
            revoke: with_common(REVOKE),
            import: with_common(IMPORT),
        }
    }
}

/// What `shared_secret` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedSecret {
    pub key: Vec<u8>,
    /// The key offered was stored: the cluster had none before.
    pub stored_ours: bool,
}

impl ClusterInvites {
    pub fn new(ctx: &ClusterContext) -> anyhow::Result<Self> {
        Ok(Self { conn: ctx.manager()?, keys: ctx.keys.clone(), scripts: Arc::new(InviteScripts::new()) })
    }

    /// The signing key every node uses: `offer` is stored if the cluster has none yet
    /// (`SET NX`: of concurrent offers exactly one wins), then whatever is stored is read.
    pub async fn shared_secret(&self, offer: &[u8]) -> anyhow::Result<SharedSecret> {
        let mut conn = self.conn.clone();
        let key = self.keys.invite_secret();
        let stored: Option<String> =
            redis::cmd("SET").arg(&key).arg(offer).arg("NX").query_async(&mut conn).await?;
        let secret: Option<Vec<u8>> = redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
        let secret = secret.filter(|s| !s.is_empty());
        let secret = secret.ok_or_else(|| anyhow::anyhow!("{key} is empty in the cluster store"))?;
        Ok(SharedSecret { key: secret, stored_ours: stored.is_some() })
    }

    /// Notes an invite the CLI issued, so that it can be listed and revoked before its first
    /// use. False if it has already expired by Redis's clock.
    pub async fn record(&self, invite: &Invite, created: u64) -> redis::RedisResult<bool> {
        let mut invocation = self.scripts.record.prepare_invoke();
        invocation
            .key(self.keys.invite(&invite.id))
            .key(self.keys.invites())
            .arg(&invite.id)
            .arg(invite.uses)
            .arg(invite.expires)
            .arg(created);
        let recorded: i64 = self.run(&invocation).await?;
        Ok(recorded == 1)
    }

    /// Counts one use of a verified invite, atomically across nodes; `keep` is when the
    /// member pass this use hands out stops needing the record (Unix s).
    pub async fn use_invite(&self, invite: &Invite, now: u64, keep: u64) -> redis::RedisResult<InviteUse> {
        let mut invocation = self.scripts.use_invite.prepare_invoke();
        invocation
            .key(self.keys.invite(&invite.id))
            .key(self.keys.invites())
            .arg(&invite.id)
            .arg(invite.uses)
            .arg(invite.expires)
            .arg(now)
            .arg(keep);
        let outcome: i64 = self.run(&invocation).await?;
        Ok(match outcome {
            1 => InviteUse::Used,
            -1 => InviteUse::Revoked,
            -2 => InviteUse::Expired,
            _ => InviteUse::UsedUp,
        })
    }

    /// Is the invite a member pass came from revoked? If not, its record is kept until `keep`.
    pub async fn pass_revoked(&self, invite_id: &str, keep: u64) -> redis::RedisResult<bool> {
        let mut invocation = self.scripts.pass.prepare_invoke();
        invocation.key(self.keys.invite(invite_id)).key(self.keys.invites()).arg(invite_id).arg(keep);
        let outcome: i64 = self.run(&invocation).await?;
        Ok(outcome == -1)
    }

    /// Revokes an invite and the member passes it led to; false when no record has that id.
    pub async fn revoke(&self, invite_id: &str) -> redis::RedisResult<bool> {
        let mut invocation = self.scripts.revoke.prepare_invoke();
        invocation.key(self.keys.invite(invite_id)).key(self.keys.invites()).arg(invite_id);
        let revoked: i64 = self.run(&invocation).await?;
        Ok(revoked == 1)
    }

    /// Merges one row of a node's SQLite ledger; `keep` as in the records (Unix s). False
    /// when there was nothing left to keep.
    pub async fn import(&self, row: &InviteRecord, keep: u64, created: u64) -> redis::RedisResult<bool> {
        let mut invocation = self.scripts.import.prepare_invoke();
        invocation
            .key(self.keys.invite(&row.id))
            .key(self.keys.invites())
            .arg(&row.id)
            .arg(row.max_uses)
            .arg(row.used)
            .arg(row.expires)
            .arg(u8::from(row.revoked))
            .arg(keep)
            .arg(created);
        let imported: i64 = self.run(&invocation).await?;
        Ok(imported == 1)
    }

    /// Runs a script; once more if the connection was refused. The connection manager only
    /// reconnects when a command fails, so after Redis was away the first command of each node
    /// would fail although Redis is back, and a browser would be told "try again" for nothing.
    /// A refused connection sent nothing, so running the script again cannot count twice (a
    /// timeout or a connection lost mid-command may have run it: those are not retried).
    async fn run<T: FromRedisValue>(&self, invocation: &ScriptInvocation<'_>) -> RedisResult<T> {
        match invocation.invoke_async(&mut self.conn.clone()).await {
            Err(e) if e.is_connection_refusal() => invocation.invoke_async(&mut self.conn.clone()).await,
            done => done,
        }
    }

    /// Every invite the cluster store still keeps, newest first.
    pub async fn list(&self) -> redis::RedisResult<Vec<InviteRecord>> {
        let mut conn = self.conn.clone();
        let ids: Vec<String> =
            redis::cmd("ZRANGE").arg(self.keys.invites()).arg(0).arg(-1).query_async(&mut conn).await?;
        // One round trip for all of them, not one per invite.
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.cmd("HMGET")
                .arg(self.keys.invite(id))
                .arg(&["max", "used", "expires", "revoked", "created"]);
        }
        let all: Vec<Vec<Option<String>>> =
            if ids.is_empty() { Vec::new() } else { pipe.query_async(&mut conn).await? };
        let mut records = Vec::with_capacity(ids.len());
        for (id, fields) in ids.into_iter().zip(all) {
            let number = |i: usize| fields.get(i).cloned().flatten().and_then(|v| v.parse::<u64>().ok());
            // Expired since the index was last pruned: nothing to show.
            let Some(max_uses) = number(0) else { continue };
            records.push((
                number(4).unwrap_or(0),
                InviteRecord {
                    id,
                    max_uses: u32::try_from(max_uses).unwrap_or(u32::MAX),
                    used: number(1).map_or(0, |u| u32::try_from(u).unwrap_or(u32::MAX)),
                    expires: number(2).unwrap_or(0),
                    revoked: fields.get(3).cloned().flatten().as_deref() == Some("1"),
                },
            ));
        }
        records.sort_by(|(a, ra), (b, rb)| b.cmp(a).then_with(|| ra.id.cmp(&rb.id)));
        Ok(records.into_iter().map(|(_, record)| record).collect())
    }
}
