//! The operator subcommands: `check-config`, `turn-credentials`, `doctor` and `healthcheck`.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;

use crate::config::Settings;
use crate::turn::credentials;

const REDACTED: &str = "<redacted>";

/// Validates everything that can be checked without binding ports (settings, TLS files) and
/// prints the effective configuration with secrets redacted.
pub fn check_config(settings: &Settings) -> anyhow::Result<()> {
    settings.validate()?;
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

/// The settings as TOML, secrets replaced.
pub fn effective_config(settings: &Settings) -> anyhow::Result<String> {
    let mut shown = settings.clone();
    if !shown.turn.secret.is_empty() {
        shown.turn.secret = REDACTED.into();
    }
    for server in &mut shown.turn.external_servers {
        server.secret = REDACTED.into();
    }
    toml::to_string_pretty(&shown).context("cannot print the configuration")
}

/// Prints a credential pair valid for `ttl` seconds, and how to try it with coturn's client.
pub fn turn_credentials(settings: &Settings, user: &str, ttl: Option<u64>) -> anyhow::Result<()> {
    let secret = crate::turn::load_or_create_secret(settings)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).context("the clock is before 1970")?.as_secs();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted() {
        let mut settings = Settings::defaults();
        settings.turn.secret = "hunter2hunter2".into();
        settings.turn.external_servers = vec![crate::config::ExternalTurnServer {
            urls: vec!["turn:x:3478".into()],
            secret: "s3cr3t".into(),
            relay_addresses: Vec::new(),
        }];
        let text = effective_config(&settings).unwrap();
        assert!(!text.contains("hunter2hunter2") && !text.contains("s3cr3t"), "{text}");
        assert!(text.contains(REDACTED));
        assert!(text.contains("max_participants = 8"));
    }
}
