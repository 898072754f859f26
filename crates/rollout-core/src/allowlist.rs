//! `allowed_hosts` entries of `network_mode = "allowlist"` (Harbor 0.26 semantics): exact host
//! names, leading-wildcard host names (`*.example.com`: any name below `example.com`, not
//! `example.com` itself), IP addresses and CIDR ranges. No ports, no URLs. Entries are
//! normalised (trimmed, lower-cased, trailing dot dropped) as Harbor does.

use std::net::IpAddr;

/// One parsed `allowed_hosts` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// `example.com`: exactly this name.
    Host(String),
    /// `*.example.com`, stored as `example.com`: any name ending in `.example.com`.
    Suffix(String),
    /// `192.0.2.1`, `2001:db8::1`: exactly this address (as an IP literal target).
    Ip(IpAddr),
    /// `192.0.2.0/24`: any address in the range (as an IP literal target).
    Cidr(IpAddr, u8),
}

/// What kind of entry, for provider capabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EntryKind {
    Hostname,
    WildcardHostname,
    IpAddress,
    CidrRange,
}

impl EntryKind {
    /// How a refusal names it.
    pub fn describe(self) -> &'static str {
        match self {
            EntryKind::Hostname => "host names",
            EntryKind::WildcardHostname => "wildcard host names",
            EntryKind::IpAddress => "IP addresses",
            EntryKind::CidrRange => "IP CIDR ranges",
        }
    }
}

impl Entry {
    pub fn kind(&self) -> EntryKind {
        match self {
            Entry::Host(_) => EntryKind::Hostname,
            Entry::Suffix(_) => EntryKind::WildcardHostname,
            Entry::Ip(_) => EntryKind::IpAddress,
            Entry::Cidr(..) => EntryKind::CidrRange,
        }
    }
}

const INVALID: &str = "allowed_hosts entries must be host names, IP addresses or IP CIDR ranges, not URLs, ports or paths";

fn valid_label(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 63
        && !l.starts_with('-')
        && !l.ends_with('-')
        && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

fn valid_hostname(h: &str) -> bool {
    h.len() <= 253 && h.split('.').all(valid_label)
}

/// Parse one entry; `Err` says why it is invalid.
pub fn parse_entry(raw: &str) -> Result<Entry, String> {
    let h = raw.trim().to_ascii_lowercase();
    let h = h.trim_end_matches('.');
    if h.is_empty() {
        return Err("allowed_hosts entries must be non-empty host names".into());
    }
    if let Some((addr, bits)) = h.split_once('/') {
        let ip: IpAddr = addr.parse().map_err(|_| format!("{raw:?}: {INVALID}"))?;
        let bits: u8 = bits.parse().map_err(|_| format!("{raw:?}: {INVALID}"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        if bits > max {
            return Err(format!("{raw:?}: prefix length over {max}"));
        }
        if mask(ip, bits) != ip {
            return Err(format!(
                "{raw:?}: host bits set in a CIDR range (write {}/{bits})",
                mask(ip, bits)
            ));
        }
        return Ok(Entry::Cidr(ip, bits));
    }
    if let Ok(ip) = h.parse::<IpAddr>() {
        return Ok(Entry::Ip(ip));
    }
    if h.contains(':') || h.contains('[') || h.contains(']') {
        return Err(format!("{raw:?}: {INVALID}"));
    }
    if let Some(suffix) = h.strip_prefix("*.") {
        if suffix.parse::<IpAddr>().is_ok() {
            return Err(format!(
                "{raw:?}: wildcard entries must name host names, not IP addresses"
            ));
        }
        if !valid_hostname(suffix) {
            return Err(format!("{raw:?}: {INVALID}"));
        }
        return Ok(Entry::Suffix(suffix.to_string()));
    }
    if h.contains('*') {
        return Err(format!(
            "{raw:?}: wildcard entries must use a leading \"*.\" prefix"
        ));
    }
    if !valid_hostname(h) {
        return Err(format!("{raw:?}: {INVALID}"));
    }
    Ok(Entry::Host(h.to_string()))
}

/// Parse every entry, failing on the first invalid one.
pub fn parse(entries: &[String]) -> Result<Vec<Entry>, String> {
    entries.iter().map(|e| parse_entry(e)).collect()
}

fn mask(ip: IpAddr, bits: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let m = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(bits))
            };
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(bits))
            };
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

/// A parsed allowlist: decides whether a destination named by the client may be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowlist {
    entries: Vec<Entry>,
}

impl Allowlist {
    /// Parse `allowed_hosts`.
    pub fn new(entries: &[String]) -> Result<Self, String> {
        Ok(Self {
            entries: parse(entries)?,
        })
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Whether the destination `host` (a name or an IP literal, as the client sent it; `[…]`
    /// around IPv6 accepted) is allowed. Names match names only and IP literals match IP and
    /// CIDR entries only: a listed name does not allow its addresses, nor a listed address
    /// the names that resolve to it.
    pub fn allows(&self, host: &str) -> bool {
        let h = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let h = h.trim_end_matches('.');
        if let Ok(ip) = h.parse::<IpAddr>() {
            let ip = match ip {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
                v4 => v4,
            };
            return self.entries.iter().any(|e| match e {
                Entry::Ip(a) => *a == ip,
                Entry::Cidr(net, bits) => net.is_ipv4() == ip.is_ipv4() && mask(ip, *bits) == *net,
                _ => false,
            });
        }
        if !valid_hostname(h) {
            return false;
        }
        self.entries.iter().any(|e| match e {
            Entry::Host(n) => n == h,
            Entry::Suffix(s) => {
                h.len() > s.len() + 1 && h.ends_with(s) && {
                    let cut = h.len() - s.len();
                    &h[cut - 1..cut] == "."
                }
            }
            _ => false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(e: &[&str]) -> Allowlist {
        Allowlist::new(&e.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn entries_follow_harbors_rules() {
        assert_eq!(
            parse_entry(" Deb.Debian.org. ").unwrap(),
            Entry::Host("deb.debian.org".into())
        );
        assert_eq!(
            parse_entry("*.example.com").unwrap(),
            Entry::Suffix("example.com".into())
        );
        assert_eq!(
            parse_entry("10.0.0.0/8").unwrap(),
            Entry::Cidr("10.0.0.0".parse().unwrap(), 8)
        );
        for bad in [
            "https://pypi.org",
            "pypi.org:443",
            "pypi.org/simple",
            "a*.b.com",
            "*.10.0.0.1",
            "10.0.0.1/8",
            "",
            "*.",
            "bad_host.com",
        ] {
            assert!(parse_entry(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn names_and_addresses_match_exactly() {
        let l = list(&[
            "deb.debian.org",
            "*.pythonhosted.org",
            "192.0.2.0/24",
            "2001:db8::1",
        ]);
        assert!(l.allows("deb.debian.org"));
        assert!(l.allows("DEB.debian.org."));
        assert!(!l.allows("debian.org"));
        assert!(!l.allows("evil-deb.debian.org.attacker.com"));
        assert!(!l.allows("xdeb.debian.org"));
        assert!(l.allows("files.pythonhosted.org"));
        assert!(!l.allows("pythonhosted.org"));
        assert!(!l.allows("evilpythonhosted.org"));
        assert!(l.allows("192.0.2.77"));
        assert!(l.allows("::ffff:192.0.2.77"));
        assert!(!l.allows("192.0.3.1"));
        assert!(l.allows("[2001:db8::1]"));
        assert!(!l.allows("pypi.org"));
        assert!(!l.allows("deb.debian.org\0.evil"));
    }
}
