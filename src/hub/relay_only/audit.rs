//! The check a peer's privacy depends on, used by the property, fixture and fuzz tests: what
//! the sanitizer emitted names no address but the allowed ones.

use super::contains_ip_literal;

/// Independent of the code under test except for the address detector (itself checked against
/// `std` in `ip_literal`): take out every token that is an allowed address or a placeholder,
/// then nothing address-like may remain. `a=fingerprint` lines are allowed only in their exact
/// shape (hex pairs), which is checked instead.
pub fn names_only_these_addresses(text: &str, allowed: &[&str]) -> Result<(), String> {
    for line in text.split(['\n', '\r']) {
        if let Some(digest) = line.strip_prefix("a=fingerprint:") {
            let pairs = digest.split_once(' ').map(|(_, d)| d).unwrap_or("");
            if pairs.split(':').all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit())) {
                continue;
            }
            return Err(format!("malformed fingerprint line survived: {line:?}"));
        }
        let rest: Vec<&str> = line
            .split(' ')
            .filter(|token| !(allowed.contains(token) || matches!(*token, "0.0.0.0" | "::")))
            .collect();
        if contains_ip_literal(&rest.join(" ")) {
            return Err(format!("an address survived in {line:?}"));
        }
    }
    Ok(())
}
