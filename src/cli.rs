//! The operator subcommands: `check-config`, `turn-credentials`, `doctor`, `healthcheck`,
//! `user` (accounts and admins) and `invite` (invite links).
//!
//! `user` and `invite` write to the server's database directly, also while it runs (SQLite in
//! WAL mode with a busy timeout serializes the writers); in cluster mode (`[cluster]
//! redis_url`) they write to the cluster store instead, so they act on every node.

use std::io::IsTerminal;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, ensure, Context};

use crate::config::Settings;
use crate::turn::credentials;

const REDACTED: &str = "<redacted>";

/// Validates everything that can be checked without binding ports (settings, TLS files) and
/// prints the effective configuration with secrets redacted.
pub fn check_config(settings: &Settings) -> anyhow::Result<()> {
    settings.validate()?;
    if settings.admin.token_file_readable_here() {
        settings.admin.resolve_token()?;
    } else {
        eprintln!(
            "relaychat: note: admin.token_file is relative and $CREDENTIALS_DIRECTORY is not set here: \
             it is read (and checked) when the service starts"
        );
    }
    if settings.server.tls.is_enabled() {
        crate::tls::TlsConfigSource::load(
            settings.server.tls.cert_file.as_ref(),
            settings.server.tls.key_file.as_ref(),
        )?;
    }
    println!("{}", effective_config(settings)?);
    eprintln!("relaychat: configuration OK");
    Ok(())
}

/// `scheme://user:password@host/...` with the password replaced; anything else unchanged.
/// The user name stays: it tells the operator which Redis ACL user the node logs in as.
fn redact_url_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else { return url.to_string() };
    let authority_end = url[scheme_end..].find('/').map_or(url.len(), |i| scheme_end + i);
    let Some(at) = url[scheme_end..authority_end].rfind('@').map(|i| scheme_end + i) else {
        return url.to_string();
    };
    match url[scheme_end..at].find(':').map(|i| scheme_end + i) {
        Some(colon) => format!("{}:{REDACTED}{}", &url[..colon], &url[at..]),
        None => url.to_string(),
    }
}

/// The settings as TOML, secrets replaced.
pub fn effective_config(settings: &Settings) -> anyhow::Result<String> {
    let mut shown = settings.clone();
    if !shown.turn.secret.is_empty() {
        shown.turn.secret = REDACTED.into();
    }
    for server in &mut shown.turn.external_servers {
        server.secret = REDACTED.into();
    }
    if !shown.admin.token.is_empty() {
        shown.admin.token = REDACTED.into();
    }
    shown.cluster.redis_url = redact_url_password(&shown.cluster.redis_url);
    toml::to_string_pretty(&shown).context("cannot print the configuration")
}

/// Prints a credential pair valid for `ttl` seconds, and how to try it with coturn's client.
pub fn turn_credentials(settings: &Settings, user: &str, ttl: Option<u64>) -> anyhow::Result<()> {
    let secret = crate::turn::load_or_create_secret(settings)?;
    let now = crate::time::unix_now();
    let ttl = ttl.unwrap_or(settings.turn.credential_ttl_s);
    let pair = credentials::issue(&secret, user, now + ttl);
    println!("username: {}", pair.username);
    println!("credential: {}", pair.credential);
    println!("expires in: {ttl} s");
    println!(
        "try: turnutils_uclient -u '{}' -w '{}' -y <host>   (the user must be in voice chat unless [turn] require_live_session = false)",
        pair.username, pair.credential
    );
    Ok(())
}

/// Runs every `doctor` check; an error (exit 1) when any of them failed.
pub fn doctor(settings: &Settings) -> anyhow::Result<()> {
    let findings = crate::doctor::run(settings)?;
    let failed = findings.iter().filter(|f| f.level == crate::doctor::Level::Fail).count();
    let warned = findings.iter().filter(|f| f.level == crate::doctor::Level::Warn).count();
    if failed > 0 {
        anyhow::bail!("{failed} check(s) failed, {warned} warning(s): fix the FAIL lines above");
    }
    eprintln!("relaychat: no check failed ({warned} warning(s))");
    Ok(())
}

/// For container HEALTHCHECKs: the server on this configuration's port answers /healthz.
/// Built into the binary because slim images have neither curl nor a shell with /dev/tcp.
pub fn healthcheck(settings: &Settings) -> anyhow::Result<()> {
    let host: std::net::IpAddr = settings.server.host.parse().context("server.host")?;
    let addr = crate::doctor::ports::connect_addr(std::net::SocketAddr::new(host, settings.server.port));
    let healthy = if settings.server.tls.is_enabled() {
        crate::doctor::ports::answers_healthz_tls(addr)
    } else {
        crate::doctor::ports::answers_healthz(addr)
    };
    anyhow::ensure!(healthy, "no healthy answer from /healthz at {addr}");
    Ok(())
}

/// `relaychat user add`: creates an account with a password read from stdin (one line) or,
/// on a terminal, typed twice without echo; never from the command line, which `ps` shows.
pub fn user_add(settings: &Settings, name: &str, admin: bool) -> anyhow::Result<()> {
    ensure!(
        crate::hub::is_valid_username(name),
        "\"{name}\" is not a valid name: 3-20 letters, digits, _ or -"
    );
    if settings.cluster.enabled() {
        return cluster_user_add(settings, name, admin);
    }
    let data_dir = &settings.server.data_dir;
    let db = crate::store::open_database(data_dir)?;
    ensure!(
        !crate::accounts::exists(&db, name)?,
        "an account named {name} already exists (change its admin flag with `relaychat user set-admin {name} on|off`)"
    );
    let password = read_new_password()?;
    let hash = crate::hub::runner::hash_password(&password).map_err(anyhow::Error::msg)?;
    // A name the configuration reserves for admins is an admin once the operator creates it.
    let admin = admin || settings.chat.admins.iter().any(|a| a == name);
    ensure!(crate::accounts::add(&db, name, &hash, admin)?, "an account named {name} already exists");
    drop(db);
    hand_back_to_owner(data_dir);
    println!("created account {name}{}", if admin { " (admin)" } else { "" });
    if !settings.chat.authentication {
        eprintln!("note: [chat] authentication is off, so nobody logs in to accounts on this server yet");
    }
    Ok(())
}

/// `relaychat user set-admin NAME on|off`; a running server picks it up within seconds.
pub fn user_set_admin(settings: &Settings, name: &str, admin: bool) -> anyhow::Result<()> {
    if settings.cluster.enabled() {
        let done =
            with_cluster_accounts(settings, |accounts| async move { accounts.set_admin(name, admin).await })?;
        ensure!(
            done,
            "no account named {name} in the cluster store (create it with `relaychat user add {name}`)"
        );
        println!(
            "{name} is {}an admin (every node picks it up within seconds)",
            if admin { "" } else { "no longer " }
        );
        return Ok(());
    }
    let data_dir = &settings.server.data_dir;
    let db = crate::store::open_database(data_dir)?;
    ensure!(
        crate::accounts::set_admin(&db, name, admin)?,
        "no account named {name} (create it with `relaychat user add {name}`)"
    );
    drop(db);
    hand_back_to_owner(data_dir);
    println!("{name} is {}an admin", if admin { "" } else { "no longer " });
    Ok(())
}

/// `relaychat user list`: name, admin flag, creation time.
pub fn user_list(settings: &Settings) -> anyhow::Result<()> {
    if settings.cluster.enabled() {
        let (names, admins) = with_cluster_accounts(settings, |accounts| async move {
            Ok::<_, redis::RedisError>((accounts.names().await?, accounts.admin_names().await?))
        })?;
        for name in &names {
            // The cluster store keeps no creation time.
            println!("{:<20}  {:<5}  -", name, if admins.contains(name) { "admin" } else { "" });
        }
        eprintln!("{} account(s) in the cluster store", names.len());
        return Ok(());
    }
    let data_dir = &settings.server.data_dir;
    let db = crate::store::open_database(data_dir)?;
    let accounts = crate::accounts::list(&db)?;
    drop(db);
    hand_back_to_owner(data_dir);
    for account in &accounts {
        println!(
            "{:<20}  {:<5}  {}",
            account.name,
            if account.admin { "admin" } else { "" },
            account.created_at
        );
    }
    eprintln!("{} account(s)", accounts.len());
    Ok(())
}

/// Cluster mode: accounts live in Redis (`{ns}:accounts`, `{ns}:admins`), not in this
/// machine's SQLite file, so the operator commands go there.
fn with_cluster_accounts<T, E, F, Fut>(settings: &Settings, work: F) -> anyhow::Result<T>
where
    E: Into<anyhow::Error>,
    F: FnOnce(crate::cluster::accounts::ClusterAccounts) -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let context = crate::cluster::ClusterContext::new(&settings.cluster)?;
    // One runtime for the whole command: the connection lives on it.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let accounts = crate::cluster::accounts::ClusterAccounts::new(&context)?;
        let done = tokio::time::timeout(std::time::Duration::from_secs(10), work(accounts))
            .await
            .map_err(|_| anyhow::anyhow!("the cluster store (Redis) did not answer within 10 s"))?;
        done.map_err(Into::into).context("the cluster store (Redis) refused or failed")
    })
}

fn cluster_user_add(settings: &Settings, name: &str, admin: bool) -> anyhow::Result<()> {
    let exists = with_cluster_accounts(settings, |accounts| async move { accounts.exists(name).await })?;
    ensure!(
        !exists,
        "an account named {name} already exists in the cluster store (change its admin flag with `relaychat user set-admin {name} on|off`)"
    );
    let password = read_new_password()?;
    let hash = crate::hub::runner::hash_password(&password).map_err(anyhow::Error::msg)?;
    let admin = admin || settings.chat.admins.iter().any(|a| a == name);
    let created = with_cluster_accounts(settings, |accounts| async move {
        if !accounts.create(name, &hash).await? {
            return Ok(false);
        }
        if admin {
            accounts.set_admin(name, true).await?;
        }
        Ok::<_, redis::RedisError>(true)
    })?;
    ensure!(created, "an account named {name} already exists in the cluster store");
    println!("created account {name} in the cluster store{}", if admin { " (admin)" } else { "" });
    Ok(())
}

/// Rules of /register: 8-32 characters, and no whitespace (/login splits on it).
fn read_new_password() -> anyhow::Result<String> {
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password (8-32 characters, no spaces): ")?;
        let again = rpassword::prompt_password("The same password again: ")?;
        ensure!(first == again, "the two passwords differ; nothing was changed");
        first
    } else {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).context("cannot read the password from stdin")?;
        line.trim_end_matches(['\r', '\n']).to_string()
    };
    ensure!(
        (8..=32).contains(&password.chars().count()),
        "the password must be 8-32 characters (give it on stdin, e.g. `printf '%s\\n' \"$PASSWORD\" | relaychat user add NAME`)"
    );
    ensure!(
        !password.chars().any(char::is_whitespace),
        "the password must not contain spaces (/login splits on them)"
    );
    Ok(password)
}

/// Files the CLI created in `data_dir` (the database's `-wal`/`-shm`, the invite secret) get
/// the directory's owner: run as root beside a service user, they would otherwise lock the
/// server out of its own database. Without the right to chown, nothing changes.
fn hand_back_to_owner(data_dir: &Path) {
    let Ok(dir) = std::fs::metadata(data_dir) else { return };
    for name in ["relaychat.db", "relaychat.db-wal", "relaychat.db-shm", crate::invite::SECRET_FILE] {
        let path = data_dir.join(name);
        if let Ok(meta) = std::fs::metadata(&path) {
            if meta.uid() != dir.uid() || meta.gid() != dir.gid() {
                if let Err(e) = std::os::unix::fs::chown(&path, Some(dir.uid()), Some(dir.gid())) {
                    eprintln!(
                        "warning: {} is not owned by {}'s owner ({e}); run relaychat as the server's user",
                        path.display(),
                        data_dir.display()
                    );
                }
            }
        }
    }
}

/// `relaychat invite`: prints a signed invite link good for `uses` new people until `expires`.
pub fn invite_create(
    settings: &Settings,
    expires: Duration,
    uses: u32,
    base_url: Option<&str>,
) -> anyhow::Result<()> {
    ensure!(uses >= 1, "--uses must be at least 1");
    let base = match base_url {
        Some(url) => url.trim_end_matches('/').to_string(),
        None if !settings.turn.public_host.is_empty() => format!("https://{}", settings.turn.public_host),
        None => bail!(
            "no address for the link: pass --base-url https://chat.example.org (or set [turn] public_host)"
        ),
    };
    let data_dir = &settings.server.data_dir;
    let now = crate::time::unix_now();
    let invite = crate::invite::token::Invite {
        id: crate::invite::token::new_invite_id(),
        expires: now.saturating_add(expires.as_secs()),
        uses,
    };
    let key = if settings.cluster.enabled() {
        // Signed with the cluster's key and recorded in the cluster store: the link works, and
        // its uses count, on every node.
        let invite = &invite;
        let (key, recorded) = with_cluster_invites(settings, |invites| async move {
            let key = crate::invite::cluster_secret(&invites, data_dir).await?;
            let recorded = invites.record(invite, now).await?;
            Ok::<_, anyhow::Error>((key.key, recorded))
        })?;
        ensure!(
            recorded,
            "the cluster store's clock says this invite has already expired: compare this machine's clock with the Redis host's, or give a longer --expires"
        );
        key
    } else {
        let key = crate::invite::load_or_create_secret(data_dir)?;
        let db = crate::store::open_database(data_dir)?;
        crate::invite::ledger::record(&db, &invite)?;
        drop(db);
        hand_back_to_owner(data_dir);
        key
    };
    println!("{base}/?invite={}", crate::invite::token::sign_invite(&key, &invite));
    let until = chrono::DateTime::from_timestamp(invite.expires as i64, 0).unwrap_or_default();
    eprintln!(
        "invite {}: {uses} use(s), expires {} (revoke: relaychat invite --revoke {})",
        invite.id,
        until.format("%Y-%m-%d %H:%M UTC"),
        invite.id
    );
    if !settings.chat.invite_only && settings.chat.registration != crate::config::Registration::Invite {
        eprintln!("note: [chat] invite_only is off, so this server lets everyone in without a link");
    }
    Ok(())
}

/// `relaychat invite --revoke ID`: the link and every member pass it led to stop working.
pub fn invite_revoke(settings: &Settings, id: &str) -> anyhow::Result<()> {
    if settings.cluster.enabled() {
        let id_ok = crate::invite::token::is_invite_id(id);
        let revoked =
            id_ok && with_cluster_invites(settings, |invites| async move { invites.revoke(id).await })?;
        ensure!(
            revoked,
            "no invite with id {id} in the cluster store (see `relaychat invite --list`; an invite is forgotten once it and every member pass it led to have expired)"
        );
        println!(
            "invite {id} revoked on every node: its link and the browsers that came in with it are refused from now on"
        );
        return Ok(());
    }
    let data_dir = &settings.server.data_dir;
    let db = crate::store::open_database(data_dir)?;
    ensure!(
        crate::invite::ledger::revoke(&db, id)?,
        "no invite with id {id} (see `relaychat invite --list`)"
    );
    drop(db);
    hand_back_to_owner(data_dir);
    println!("invite {id} revoked: its link and the browsers that came in with it are refused from now on");
    Ok(())
}

/// `relaychat invite --list`.
pub fn invite_list(settings: &Settings) -> anyhow::Result<()> {
    let (invites, place) = if settings.cluster.enabled() {
        (
            with_cluster_invites(settings, |invites| async move { invites.list().await })?,
            " in the cluster store",
        )
    } else {
        let data_dir = &settings.server.data_dir;
        let db = crate::store::open_database(data_dir)?;
        let invites = crate::invite::ledger::list(&db)?;
        drop(db);
        hand_back_to_owner(data_dir);
        (invites, "")
    };
    for i in &invites {
        let until = chrono::DateTime::from_timestamp(i.expires as i64, 0).unwrap_or_default();
        println!(
            "{}  used {}/{}  expires {}{}",
            i.id,
            i.used,
            i.max_uses,
            until.format("%Y-%m-%d %H:%M UTC"),
            if i.revoked { "  revoked" } else { "" }
        );
    }
    eprintln!("{} invite(s){place}", invites.len());
    Ok(())
}

/// Cluster mode: invites live in Redis (`cluster::invites`), like the accounts.
fn with_cluster_invites<T, E, F, Fut>(settings: &Settings, work: F) -> anyhow::Result<T>
where
    E: Into<anyhow::Error>,
    F: FnOnce(crate::cluster::invites::ClusterInvites) -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let context = crate::cluster::ClusterContext::new(&settings.cluster)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let invites = crate::cluster::invites::ClusterInvites::new(&context)?;
        let done = tokio::time::timeout(std::time::Duration::from_secs(10), work(invites))
            .await
            .map_err(|_| anyhow::anyhow!("the cluster store (Redis) did not answer within 10 s"))?;
        done.map_err(Into::into).context("the cluster store (Redis) refused or failed")
    })
}

/// "90s", "30m", "24h", "7d", "2w" (a bare number is seconds).
pub fn parse_lifetime(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| format!("\"{text}\" is not a duration like 24h or 7d"))?;
    let unit_secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(format!("unknown unit in \"{text}\": use s, m, h, d or w")),
    };
    match number.checked_mul(unit_secs) {
        Some(0) => Err("the duration must be longer than zero".into()),
        Some(secs) => Ok(Duration::from_secs(secs)),
        None => Err(format!("\"{text}\" is too long")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes() {
        assert_eq!(parse_lifetime("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_lifetime("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_lifetime("90"), Ok(Duration::from_secs(90)));
        assert!(parse_lifetime("0h").is_err());
        assert!(parse_lifetime("1y").is_err());
        assert!(parse_lifetime("h").is_err());
        assert!(parse_lifetime("99999999999999999999w").is_err());
    }

    #[test]
    fn only_the_password_of_a_url_is_redacted() {
        assert_eq!(redact_url_password("redis://127.0.0.1:6379/0"), "redis://127.0.0.1:6379/0");
        assert_eq!(redact_url_password("redis://:pw@h:1"), "redis://:<redacted>@h:1");
        assert_eq!(redact_url_password("redis://user@h/0"), "redis://user@h/0");
        assert_eq!(redact_url_password(""), "");
        assert_eq!(redact_url_password("unix:///run/redis.sock"), "unix:///run/redis.sock");
    }

    #[test]
    fn secrets_are_redacted() {
        let mut settings = Settings::defaults();
        settings.turn.secret = "hunter2hunter2".into();
        settings.turn.external_servers = vec![crate::config::ExternalTurnServer {
            urls: vec!["turn:x:3478".into()],
            secret: "s3cr3t".into(),
            relay_addresses: Vec::new(),
        }];
        settings.admin.token = "admin-token-0123456789".into();
        settings.cluster.redis_url = "redis://relaychat:pa55:w@rd@10.0.0.5:6379/0".into();
        let text = effective_config(&settings).unwrap();
        assert!(!text.contains("hunter2hunter2") && !text.contains("s3cr3t"), "{text}");
        assert!(!text.contains("pa55") && !text.contains("rd@10"), "{text}");
        assert!(text.contains("redis://relaychat:<redacted>@10.0.0.5:6379/0"), "{text}");
        assert!(!text.contains("admin-token-0123456789"), "{text}");
        assert!(text.contains(REDACTED));
        assert!(text.contains("max_participants = 8"));
    }
}
