//! TLS to Redis (`rediss://`): the client every connection of this node (and of the CLI) is
//! built from, with the CA that must have signed Redis's certificate and, for Redis's
//! `tls-auth-clients yes`, this node's client certificate.
//!
//! The handshake itself is the redis crate's (`tokio-rustls-comp`), on the same rustls and ring
//! provider as our TURN-over-TLS listener, so no second TLS stack is linked. The server's
//! certificate is always verified, host name included (the URL's host must be in its subject
//! alternative names): with `redis_ca_file` against that CA only, otherwise against the
//! system's roots. The files were already checked by `ClusterSettings::validate`; they are read
//! again here because the operator may have replaced them since (a renewed certificate is
//! picked up at the next start).

use anyhow::Context;
use redis::{ClientTlsConfig, TlsCertificates};

use crate::config::ClusterSettings;

/// The client for `settings.redis_url`: plain for `redis://` and `unix://`, TLS for `rediss://`.
pub fn open_client(settings: &ClusterSettings) -> anyhow::Result<redis::Client> {
    let url = settings.redis_url.trim();
    if !settings.uses_tls() {
        return Ok(redis::Client::open(url)?);
    }
    let root_cert = match settings.redis_ca_file.trim() {
        "" => None,
        path => Some(read(path, "cluster.redis_ca_file")?),
    };
    let client_tls = match (settings.redis_cert_file.trim(), settings.redis_key_file.trim()) {
        ("", "") => None,
        (cert, key) => Some(ClientTlsConfig {
            client_cert: read(cert, "cluster.redis_cert_file")?,
            client_key: read(key, "cluster.redis_key_file")?,
        }),
    };
    redis::Client::build_with_tls(url, TlsCertificates { client_tls, root_cert })
        .context("cannot set up TLS to Redis (cluster.redis_ca_file, redis_cert_file, redis_key_file)")
}

fn read(path: &str, key: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{key}: cannot read {path}"))
}

/// What the link to Redis trusts, for error messages: a certificate problem reads as a network
/// one ("is Redis up?") unless the message also says which CA the node checked against.
/// `None` for a plain link.
pub fn describe_link(settings: &ClusterSettings) -> Option<String> {
    if !settings.uses_tls() {
        return None;
    }
    let client = match settings.redis_cert_file.trim() {
        "" => "no client certificate".to_string(),
        cert => format!("client certificate {cert}"),
    };
    Some(match settings.redis_ca_file.trim() {
        "" => format!("TLS to Redis, its certificate checked against the system's roots, {client}"),
        ca => format!("TLS to Redis, its certificate checked against {ca} (cluster.redis_ca_file), {client}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_urls_stay_plain_and_tls_links_name_what_they_trust() {
        let plain = ClusterSettings { redis_url: "redis://127.0.0.1:6379/0".into(), ..Default::default() };
        assert!(open_client(&plain).is_ok());
        assert_eq!(describe_link(&plain), None);
        let tls = ClusterSettings {
            redis_url: "rediss://redis.internal:6380/0".into(),
            redis_ca_file: "/etc/relaychat/redis-ca.pem".into(),
            ..Default::default()
        };
        let link = describe_link(&tls).expect("a TLS link");
        assert!(
            link.contains("/etc/relaychat/redis-ca.pem") && link.contains("no client certificate"),
            "{link}"
        );
        // A CA file that vanished after validation: the error names the key and the path.
        let Err(error) = open_client(&tls) else {
            panic!("the CA file does not exist, yet the client opened")
        };
        let error = format!("{error:#}");
        assert!(error.contains("cluster.redis_ca_file: cannot read /etc/relaychat/redis-ca.pem"), "{error}");
    }
}
