//! TLS files: readable, a certificate and key that fit together (the server's own loader), in
//! date, and naming the host browsers will use. The validity dates are read straight from the
//! DER (a dozen lines) rather than pulling an X.509 crate into the binary; the host name is
//! matched by rustls' own webpki check, the one a TLS client applies.

use chrono::{DateTime, NaiveDate, Utc};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use super::report::Finding;
use crate::config::Settings;

/// A certificate running out within this many days gets a warning.
const RENEW_WARNING_DAYS: i64 = 14;

pub fn check(settings: &Settings) -> Vec<Finding> {
    let tls = &settings.server.tls;
    if !tls.is_enabled() {
        let behind_proxy = settings.server.host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
            && !settings.server.trusted_proxies.is_empty();
        return vec![if behind_proxy {
            Finding::ok("tls", "not built in; HTTP listens on loopback behind a trusted reverse proxy, which must serve HTTPS")
        } else {
            Finding::warn(
                "tls",
                "off: browsers on other machines allow calls only over HTTPS (getUserMedia needs a secure context); set [server.tls] or put Caddy/nginx in front (docs/DEPLOY.md)",
            )
        }];
    }
    let mut findings = Vec::new();
    if let Err(e) = crate::tls::TlsConfigSource::load(tls.cert_file.as_ref(), tls.key_file.as_ref()) {
        findings.push(Finding::fail("tls files", format!("{e}")));
        return findings;
    }
    findings.push(Finding::ok(
        "tls files",
        format!("{} and {} are readable and fit together", tls.cert_file, tls.key_file),
    ));
    let Some(leaf) =
        CertificateDer::pem_file_iter(&tls.cert_file).ok().and_then(|mut it| it.next()).and_then(Result::ok)
    else {
        findings.push(Finding::fail("tls files", "no certificate in the certificate file"));
        return findings;
    };
    findings.push(check_dates(&leaf, Utc::now()));
    findings.push(check_name(&leaf, &settings.turn.public_host));
    findings
}

/// notBefore/notAfter against `now`.
pub fn check_dates(leaf: &CertificateDer<'_>, now: DateTime<Utc>) -> Finding {
    let check = "tls dates";
    let Some((not_before, not_after)) = validity(leaf) else {
        return Finding::fail(
            check,
            "cannot read the certificate's validity dates; is it an X.509 certificate?",
        );
    };
    let day = |t: DateTime<Utc>| t.format("%Y-%m-%d %H:%M UTC").to_string();
    if now < not_before {
        Finding::fail(check, format!("not valid before {} (is this machine's clock right?)", day(not_before)))
    } else if now > not_after {
        Finding::fail(
            check,
            format!("expired on {}: renew it (certbot renew) and send relaychat SIGHUP", day(not_after)),
        )
    } else if (not_after - now).num_days() < RENEW_WARNING_DAYS {
        Finding::warn(
            check,
            format!(
                "expires on {}, in {} days: is renewal set up?",
                day(not_after),
                (not_after - now).num_days()
            ),
        )
    } else {
        Finding::ok(check, format!("valid until {}", day(not_after)))
    }
}

/// The certificate must name `host` (the DNS name browsers use), as a TLS client checks it.
pub fn check_name(leaf: &CertificateDer<'_>, host: &str) -> Finding {
    let check = "tls name";
    let host = host.trim();
    if host.is_empty() {
        return Finding::warn(
            check,
            "[turn] public_host is not set, so doctor cannot tell which name the certificate must carry; set it to the DNS name people use",
        );
    }
    let Ok(name) = ServerName::try_from(host.to_string()) else {
        return Finding::fail(check, format!("{host:?} is not a valid host name ([turn] public_host)"));
    };
    let parsed = match rustls::server::ParsedCertificate::try_from(leaf) {
        Ok(parsed) => parsed,
        Err(e) => return Finding::fail(check, format!("cannot parse the certificate: {e}")),
    };
    match rustls::client::verify_server_name(&parsed, &name) {
        Ok(()) => Finding::ok(check, format!("the certificate names {host}")),
        Err(_) => Finding::fail(
            check,
            format!("the certificate does not name {host} ([turn] public_host): browsers will refuse it; get one issued for {host}"),
        ),
    }
}

/// One DER element: tag, contents, what follows.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let len = rest[..count].iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[count..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// notBefore and notAfter of an X.509 certificate (RFC 5280 4.1: Certificate ::= SEQUENCE {
/// tbsCertificate SEQUENCE { [0] version OPTIONAL, serial, signature, issuer, validity, ... } }).
pub fn validity(cert: &CertificateDer<'_>) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    const SEQUENCE: u8 = 0x30;
    let (SEQUENCE, certificate, _) = tlv(cert.as_ref())? else { return None };
    let (SEQUENCE, mut tbs, _) = tlv(certificate)? else { return None };
    if tbs.first() == Some(&0xa0) {
        tbs = tlv(tbs)?.2;
    }
    for _ in 0..3 {
        tbs = tlv(tbs)?.2; // serial, signature algorithm, issuer
    }
    let (SEQUENCE, validity, _) = tlv(tbs)? else { return None };
    let (tag_before, before, rest) = tlv(validity)?;
    let (tag_after, after, _) = tlv(rest)?;
    Some((der_time(tag_before, before)?, der_time(tag_after, after)?))
}

/// UTCTime (YYMMDDHHMMSSZ, years 1950-2049) or GeneralizedTime (YYYYMMDDHHMMSSZ).
fn der_time(tag: u8, bytes: &[u8]) -> Option<DateTime<Utc>> {
    let text = std::str::from_utf8(bytes).ok()?.strip_suffix('Z')?;
    let digits = |range: std::ops::Range<usize>| text.get(range)?.parse::<u32>().ok();
    let (year, rest) = match tag {
        0x17 if text.len() == 12 => {
            let yy = digits(0..2)?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, 2)
        }
        0x18 if text.len() == 14 => (digits(0..4)?, 4),
        _ => return None,
    };
    let field = |i: usize| digits(rest + 2 * i..rest + 2 * i + 2);
    let date = NaiveDate::from_ymd_opt(i32::try_from(year).ok()?, field(0)?, field(1)?)?;
    Some(date.and_hms_opt(field(2)?, field(3)?, field(4)?)?.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_times_parse() {
        let t = der_time(0x17, b"260102030405Z").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-01-02T03:04:05+00:00");
        let t = der_time(0x18, b"20991231235959Z").unwrap();
        assert_eq!(t.to_rfc3339(), "2099-12-31T23:59:59+00:00");
        assert_eq!(der_time(0x17, b"990101000000Z").unwrap().format("%Y").to_string(), "1999");
        assert!(der_time(0x17, b"2601020304Z").is_none());
        assert!(der_time(0x04, b"260102030405Z").is_none());
    }

    #[test]
    fn truncated_der_is_refused_not_panicked_on() {
        for bytes in [&[][..], &[0x30], &[0x30, 0x85, 1, 2, 3, 4, 5], &[0x30, 0x05, 0x30, 0x01]] {
            assert!(validity(&CertificateDer::from(bytes.to_vec())).is_none());
        }
    }
}
