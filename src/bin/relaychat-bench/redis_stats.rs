//! Read-only statistics from the cluster's Redis for the cluster benchmark: `INFO commandstats`
//! (calls per command, to count Redis operations per chat message), `INFO memory`, and the size
//! of the cluster's keys (`MEMORY USAGE`, `XLEN`, `HLEN`).
//!
//! A few lines of RESP over one TCP connection rather than a Redis client crate: the benchmark
//! only sends those commands (plus `AUTH`, `SELECT`) and reads one scalar reply each, so a client
//! library's build time (and its own commands on the server, which would pollute the counts) is
//! not worth it. Commands only this module sends are left out of every count it reports.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Commands this module sends that the cluster never does; never counted as the cluster's work.
/// (Its `XLEN`/`HLEN` run outside the measured windows.)
const OWN_COMMANDS: [&str; 4] = ["auth", "info", "select", "memory|usage"];
/// Largest reply read (INFO is a few KiB); a bigger one is refused, not buffered.
const MAX_REPLY_BYTES: usize = 4 << 20;
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the Redis is and how to log in, from `redis://[[user]:password@]host[:port][/db]`.
#[derive(Clone, Debug, PartialEq)]
pub struct RedisTarget {
    pub addr: String,
    pub user: Option<String>,
    pub password: Option<String>,
    pub db: u32,
}

impl RedisTarget {
    pub fn parse(url: &str) -> anyhow::Result<RedisTarget> {
        let rest = url.strip_prefix("redis://").ok_or_else(|| anyhow!("{url}: not a redis:// URL"))?;
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((a, r)) => (Some(a), r),
            None => (None, rest),
        };
        let (hostport, db) = match rest.split_once('/') {
            Some((h, d)) if !d.is_empty() => (h, d.parse().with_context(|| format!("{url}: database"))?),
            Some((h, _)) => (h, 0),
            None => (rest, 0),
        };
        if hostport.is_empty() {
            bail!("{url}: no host");
        }
        let has_port = hostport.rsplit_once(':').is_some_and(|(_, p)| !p.contains(']'));
        let addr = if has_port { hostport.to_string() } else { format!("{hostport}:6379") };
        let (user, password) = match auth {
            None => (None, None),
            Some(a) => match a.split_once(':') {
                Some((u, p)) => ((!u.is_empty()).then(|| u.to_string()), Some(p.to_string())),
                None => (None, Some(a.to_string())),
            },
        };
        Ok(RedisTarget { addr, user, password, db })
    }
}

/// One Redis connection, logged in.
pub struct RedisStats {
    conn: BufReader<TcpStream>,
}

/// One reply we understand (RESP2 scalars; no command sent here answers with an array).
#[derive(Debug, PartialEq)]
enum Reply {
    Simple(String),
    Int(i64),
    Bulk(Option<String>),
}

impl RedisStats {
    pub async fn connect(target: &RedisTarget) -> anyhow::Result<RedisStats> {
        let tcp = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(&target.addr))
            .await
            .map_err(|_| anyhow!("connecting to Redis at {}: timed out", target.addr))?
            .with_context(|| format!("connecting to Redis at {}", target.addr))?;
        let mut me = RedisStats { conn: BufReader::new(tcp) };
        match (&target.user, &target.password) {
            (Some(u), Some(p)) => me.command(&["AUTH", u, p]).await.map(drop)?,
            (None, Some(p)) => me.command(&["AUTH", p]).await.map(drop)?,
            _ => {}
        }
        if target.db != 0 {
            me.command(&["SELECT", &target.db.to_string()]).await?;
        }
        Ok(me)
    }

    /// Calls per command name (lower case) since the server started or `CONFIG RESETSTAT`,
    /// without the commands this module sends.
    pub async fn command_calls(&mut self) -> anyhow::Result<BTreeMap<String, u64>> {
        let info = self.info("commandstats").await?;
        let mut calls = parse_commandstats(&info);
        for own in OWN_COMMANDS {
            calls.remove(own);
        }
        Ok(calls)
    }

    /// `used_memory` in bytes.
    pub async fn used_memory(&mut self) -> anyhow::Result<u64> {
        let info = self.info("memory").await?;
        info_field(&info, "used_memory")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("INFO memory without used_memory"))
    }

    /// Bytes a key and its value take (`MEMORY USAGE key SAMPLES 0`: every element counted);
    /// None if the key does not exist.
    pub async fn key_bytes(&mut self, key: &str) -> anyhow::Result<Option<u64>> {
        match self.command(&["MEMORY", "USAGE", key, "SAMPLES", "0"]).await? {
            Reply::Int(n) => Ok(Some(n.max(0) as u64)),
            Reply::Bulk(None) => Ok(None),
            other => bail!("MEMORY USAGE answered {other:?}"),
        }
    }

    /// Entries of a stream (`XLEN`) or fields of a hash (`HLEN`): `command` is one of them.
    pub async fn length(&mut self, command: &str, key: &str) -> anyhow::Result<u64> {
        match self.command(&[command, key]).await? {
            Reply::Int(n) => Ok(n.max(0) as u64),
            other => bail!("{command} answered {other:?}"),
        }
    }

    async fn info(&mut self, section: &str) -> anyhow::Result<String> {
        match self.command(&["INFO", section]).await? {
            Reply::Bulk(Some(s)) => Ok(s),
            other => bail!("INFO {section} answered {other:?}"),
        }
    }

    async fn command(&mut self, args: &[&str]) -> anyhow::Result<Reply> {
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        let io = async {
            self.conn.get_mut().write_all(req.as_bytes()).await?;
            read_reply(&mut self.conn).await
        };
        let reply = tokio::time::timeout(IO_TIMEOUT, io)
            .await
            .map_err(|_| anyhow!("Redis did not answer {} within {IO_TIMEOUT:?}", args[0]))??;
        Ok(reply)
    }
}

async fn read_reply(conn: &mut BufReader<TcpStream>) -> anyhow::Result<Reply> {
    let mut line = String::new();
    conn.read_line(&mut line).await?;
    let line = line.trim_end_matches(['\r', '\n']);
    let (kind, body) = line.split_at(line.len().min(1));
    match kind {
        "+" => Ok(Reply::Simple(body.to_string())),
        "-" => bail!("Redis error: {body}"),
        ":" => Ok(Reply::Int(body.parse().context("integer reply")?)),
        "$" => {
            let len: i64 = body.parse().context("bulk length")?;
            if len < 0 {
                return Ok(Reply::Bulk(None));
            }
            let len = len as usize;
            if len > MAX_REPLY_BYTES {
                bail!("Redis reply of {len} bytes is over {MAX_REPLY_BYTES}");
            }
            let mut buf = vec![0u8; len + 2];
            conn.read_exact(&mut buf).await?;
            buf.truncate(len);
            Ok(Reply::Bulk(Some(String::from_utf8_lossy(&buf).into_owned())))
        }
        "" => bail!("Redis closed the connection"),
        _ => bail!("unexpected Redis reply: {line:.80}"),
    }
}

/// `cmdstat_evalsha:calls=12,usec=...` lines -> {"evalsha": 12}. Subcommands (Redis 7 writes
/// `cmdstat_client|setname`) keep their `|` name.
fn parse_commandstats(info: &str) -> BTreeMap<String, u64> {
    info.lines()
        .filter_map(|l| {
            let (name, fields) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = fields.split(',').find_map(|f| f.strip_prefix("calls="))?.parse().ok()?;
            Some((name.to_ascii_lowercase(), calls))
        })
        .collect()
}

fn info_field<'a>(info: &'a str, key: &str) -> Option<&'a str> {
    info.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
}

/// Per-command difference `after - before` (commands new in `after` count from zero).
pub fn calls_delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, a)| (k.clone(), a.saturating_sub(before.get(k).copied().unwrap_or(0))))
        .filter(|(_, d)| *d > 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_with_and_without_credentials_parse() {
        let t = RedisTarget::parse("redis://127.0.0.1:6380/2").unwrap();
        assert_eq!((t.addr.as_str(), t.db, t.password), ("127.0.0.1:6380", 2, None));
        let t = RedisTarget::parse("redis://:s3cret@redis.internal").unwrap();
        assert_eq!(t.addr, "redis.internal:6379");
        assert_eq!((t.user, t.password.as_deref()), (None, Some("s3cret")));
        let t = RedisTarget::parse("redis://relaychat:pw@10.0.0.5:6379/0").unwrap();
        assert_eq!((t.user.as_deref(), t.password.as_deref()), (Some("relaychat"), Some("pw")));
        assert!(RedisTarget::parse("http://x").is_err());
        assert!(RedisTarget::parse("redis:///0").is_err());
    }

    #[test]
    fn commandstats_lines_become_call_counts() {
        let info = "# Commandstats\r\ncmdstat_evalsha:calls=12,usec=340,usec_per_call=28.33,rejected_calls=0,failed_calls=0\r\n\
                    cmdstat_xread:calls=40,usec=1,usec_per_call=0.1\r\ncmdstat_client|setname:calls=3,usec=1\r\n";
        let m = parse_commandstats(info);
        assert_eq!(m.get("evalsha"), Some(&12));
        assert_eq!(m.get("xread"), Some(&40));
        assert_eq!(m.get("client|setname"), Some(&3));
        let before = BTreeMap::from([("evalsha".to_string(), 10), ("xread".to_string(), 40)]);
        let d = calls_delta(&before, &m);
        assert_eq!(d.get("evalsha"), Some(&2));
        assert_eq!(d.get("xread"), None, "unchanged commands are left out");
        assert_eq!(d.get("client|setname"), Some(&3));
    }

    #[tokio::test]
    async fn a_real_redis_answers_when_one_is_installed() {
        // Exercised against a private redis-server on a free loopback port when the binary exists.
        let Ok(path) = which_redis() else { return };
        let dir = std::env::temp_dir().join(format!("rc-bench-redis-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut child = std::process::Command::new(path)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let target = RedisTarget::parse(&format!("redis://127.0.0.1:{port}/0")).unwrap();
        let mut stats = None;
        for _ in 0..50 {
            if let Ok(s) = RedisStats::connect(&target).await {
                stats = Some(s);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut s = stats.expect("redis-server did not start");
        let before = s.command_calls().await.unwrap();
        assert!(s.used_memory().await.unwrap() > 0);
        assert_eq!(s.key_bytes("no-such-key").await.unwrap(), None);
        let after = s.command_calls().await.unwrap();
        assert!(
            calls_delta(&before, &after).is_empty(),
            "our own INFO/MEMORY calls are not counted: {after:?}"
        );
        // XLEN/HLEN are commands the cluster runs too, so they count (the benchmark sends them
        // only outside its measured windows).
        assert_eq!(s.length("XLEN", "no-such-stream").await.unwrap(), 0);
        let last = s.command_calls().await.unwrap();
        assert_eq!(calls_delta(&after, &last).get("xlen"), Some(&1));
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn which_redis() -> Result<std::path::PathBuf, ()> {
        std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .map(|d| d.join("redis-server"))
            .find(|p| p.is_file())
            .ok_or(())
    }
}
