//! What an untrusted submitter may make rollout fetch (`rollout serve`): repositories named by
//! executor archives (`repo:`) and registries (`git_url`), and registries themselves.
//!
//! The command line trusts its user and has no policy. A server does ([`RemotePolicy`]):
//! - local paths (and `file://`) are refused unless under an operator's `--allow-local-paths`
//!   root;
//! - repositories: `https://` to a host that resolves only to public addresses, unless the
//!   operator lists hosts (`--allow-repo-host`), in which case only those hosts are allowed, with
//!   any of `https`, `http`, `ssh` and `git`, at any address (the operator vouches for them);
//! - registries: `https://` to a public address, unless the operator lists URL prefixes
//!   (`--allow-registry`), in which case only URLs under those prefixes are fetched;
//! - git's remote helpers (`ext::…`, `fd::…`) and every other scheme are refused.
//!
//! A public host is resolved once per git command or download, every address it resolves to
//! must be public (not loopback, private, link-local, shared, multicast or reserved), and the
//! connection is pinned to those addresses (`http.curloptResolve`, reqwest's `resolve`), with
//! redirects off: a second resolution or a redirect cannot lead to an internal address.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::{Component, Path, PathBuf};

/// How every refusal begins (clients and the server recognise it).
pub const REFUSED: &str = "refused by this server's source policy";

/// The operator's allow-lists (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemotePolicy {
    /// Hosts repositories may be cloned from: exact names (or IP literals), or `*.example.com`
    /// for its sub-domains. Empty: any public host over https.
    pub repo_hosts: Vec<String>,
    /// URL prefixes registries may be fetched from. Empty: any public https URL.
    pub registry_prefixes: Vec<String>,
    /// Directories under which local repositories and registry files may be read.
    pub local_roots: Vec<PathBuf>,
}

/// How a location that passed the policy is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// A local path under an allowed root (canonical).
    Local(PathBuf),
    /// A remote URL. `pin`: the checked addresses to connect to (empty: the host is
    /// allow-listed and resolved normally).
    Remote {
        scheme: String,
        host: String,
        port: u16,
        pin: Vec<IpAddr>,
    },
}

/// Whether `ip` is an address on the public internet (not loopback, private, link-local,
/// carrier-grade NAT, multicast, documentation, benchmarking or reserved).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let s = v6.segments();
            // NAT64 (64:ff9b::/96) embeds an IPv4 address.
            if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                let o = v6.octets();
                return is_public_v4(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (s[0] & 0xffc0) == 0xfec0 // site-local fec0::/10 (deprecated)
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || s[..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible ::a.b.c.d
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || o[0] == 0 // "this network"
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // shared address space 100.64/10
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking 198.18/15
        || o[0] >= 240) // reserved
}

/// A git location, classified.
enum GitLocation {
    Local(PathBuf),
    Remote {
        scheme: String,
        host: String,
        port: u16,
    },
}

fn default_port(scheme: &str) -> u16 {
    match scheme {
        "https" => 443,
        "http" => 80,
        "ssh" | "git+ssh" | "ssh+git" => 22,
        "git" => 9418,
        _ => 0,
    }
}

/// Parse a git url as git reads it.
fn classify_git(url: &str) -> Result<GitLocation, String> {
    let first_slash = url.find('/').unwrap_or(url.len());
    if url[..first_slash].contains("::") {
        return Err("git remote helpers (`transport::address`) are not allowed".into());
    }
    if let Some(i) = url.find("://") {
        let scheme = url[..i].to_ascii_lowercase();
        if scheme == "file" {
            let rest = &url[i + 3..];
            let path = rest.strip_prefix("localhost").unwrap_or(rest);
            if !path.starts_with('/') {
                return Err("a file:// url needs an absolute path".into());
            }
            return Ok(GitLocation::Local(PathBuf::from(path)));
        }
        let parsed = url::Url::parse(url).map_err(|e| format!("not a valid url: {e}"))?;
        let host = match parsed.host() {
            Some(url::Host::Domain(d)) => d.to_ascii_lowercase(),
            Some(url::Host::Ipv4(a)) => a.to_string(),
            Some(url::Host::Ipv6(a)) => a.to_string(),
            None => return Err("the url names no host".into()),
        };
        let port = parsed.port().unwrap_or_else(|| default_port(&scheme));
        return Ok(GitLocation::Remote { scheme, host, port });
    }
    // scp-like `[user@]host:path` (a colon before the first slash).
    if let Some(colon) = url[..first_slash].find(':') {
        let userhost = &url[..colon];
        let host = userhost.rsplit('@').next().unwrap_or(userhost);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err("the url names no host".into());
        }
        return Ok(GitLocation::Remote {
            scheme: "ssh".into(),
            host: host.to_ascii_lowercase(),
            port: 22,
        });
    }
    Ok(GitLocation::Local(PathBuf::from(url)))
}

impl RemotePolicy {
    /// Whether the operator listed `host` (exactly, or under a `*.` entry).
    fn lists_host(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.repo_hosts.iter().any(|h| {
            let h = h.trim().trim_end_matches('.').to_ascii_lowercase();
            match h.strip_prefix("*.") {
                Some(suffix) => host.ends_with(&format!(".{suffix}")),
                None => host == h,
            }
        })
    }

    /// A local path the policy allows, canonical.
    fn check_local(&self, path: &Path, what: &str) -> Result<PathBuf, String> {
        if self.local_roots.is_empty() {
            return Err(format!(
                "{what} names a path on the server, and this server reads none (the operator can allow directories with --allow-local-paths)"
            ));
        }
        if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
            return Err(format!(
                "{what} must be an absolute path without `..` under a directory the server allows"
            ));
        }
        let canonical = path.canonicalize().ok();
        let inside = canonical.as_ref().is_some_and(|c| {
            self.local_roots
                .iter()
                .filter_map(|r| r.canonicalize().ok())
                .any(|r| c.starts_with(r))
        });
        match (inside, canonical) {
            (true, Some(c)) => Ok(c),
            _ => Err(format!(
                "{what} is not under a directory the server allows (--allow-local-paths)"
            )),
        }
    }

    /// Resolve `host` and require every address to be public.
    fn resolve_public(host: &str, port: u16) -> Result<Vec<IpAddr>, String> {
        let addrs: Vec<IpAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => (host, port)
                .to_socket_addrs()
                .map_err(|e| format!("cannot resolve {host}: {e}"))?
                .map(|a| a.ip())
                .collect(),
        };
        if addrs.is_empty() {
            return Err(format!("{host} resolves to no address"));
        }
        if let Some(bad) = addrs.iter().find(|a| !is_public(**a)) {
            return Err(format!(
                "{host} resolves to {bad}, a loopback, private, link-local or reserved address: the server does not fetch from its own network (the operator can allow the host with --allow-repo-host)"
            ));
        }
        let mut addrs = addrs;
        addrs.sort();
        addrs.dedup();
        Ok(addrs)
    }

    /// Check a repository url (`repo:` of an executor archive, `git_url` of a registry).
    /// A refusal starts with [`REFUSED`].
    pub fn check_repo(&self, url: &str) -> Result<Access, String> {
        self.check_repo_inner(url)
            .map_err(|m| format!("{REFUSED}: {m}"))
    }

    fn check_repo_inner(&self, url: &str) -> Result<Access, String> {
        match classify_git(url.trim())? {
            GitLocation::Local(p) => self.check_local(&p, "the repository").map(Access::Local),
            GitLocation::Remote { scheme, host, port } => {
                if self.lists_host(&host) {
                    if !matches!(scheme.as_str(), "https" | "http" | "ssh" | "git") {
                        return Err(format!(
                            "the `{scheme}` scheme is not allowed (https, http, ssh or git)"
                        ));
                    }
                    return Ok(Access::Remote {
                        scheme,
                        host,
                        port,
                        pin: Vec::new(),
                    });
                }
                if !self.repo_hosts.is_empty() {
                    return Err(format!(
                        "host {host} is not one this server clones from (allowed: {})",
                        self.repo_hosts.join(", ")
                    ));
                }
                if scheme != "https" {
                    return Err(format!(
                        "only https:// repositories are cloned here, not {scheme} (the operator can allow a host with --allow-repo-host)"
                    ));
                }
                let pin = Self::resolve_public(&host, port)?;
                Ok(Access::Remote {
                    scheme,
                    host,
                    port,
                    pin,
                })
            }
        }
    }

    /// Check a registry location (a URL, a path or a `file://` URL). A refusal starts with
    /// [`REFUSED`].
    pub fn check_registry(&self, location: &str) -> Result<Access, String> {
        self.check_registry_inner(location)
            .map_err(|m| format!("{REFUSED}: {m}"))
    }

    fn check_registry_inner(&self, location: &str) -> Result<Access, String> {
        let lower = location.to_ascii_lowercase();
        if !(lower.starts_with("http://") || lower.starts_with("https://")) {
            let path = location.strip_prefix("file://").unwrap_or(location);
            return self
                .check_local(Path::new(path), "the registry")
                .map(Access::Local);
        }
        let parsed = url::Url::parse(location).map_err(|e| format!("not a valid url: {e}"))?;
        let scheme = parsed.scheme().to_string();
        let host = match parsed.host() {
            Some(url::Host::Domain(d)) => d.to_ascii_lowercase(),
            Some(url::Host::Ipv4(a)) => a.to_string(),
            Some(url::Host::Ipv6(a)) => a.to_string(),
            None => return Err("the registry url names no host".into()),
        };
        let port = parsed.port_or_known_default().unwrap_or(443);
        if !self.registry_prefixes.is_empty() {
            let listed = self.registry_prefixes.iter().any(|p| {
                location.starts_with(p.as_str())
                    && (p.ends_with('/')
                        || matches!(
                            location.as_bytes().get(p.len()),
                            None | Some(b'/' | b'?' | b'#')
                        ))
            });
            if !listed {
                return Err(format!(
                    "registry {location} is not under a prefix this server fetches from (allowed: {})",
                    self.registry_prefixes.join(", ")
                ));
            }
            return Ok(Access::Remote {
                scheme,
                host,
                port,
                pin: Vec::new(),
            });
        }
        if scheme != "https" {
            return Err(
                "only https:// registries are fetched here (the operator can allow a prefix with --allow-registry)"
                    .into(),
            );
        }
        let pin = Self::resolve_public(&host, port)
            .map_err(|e| e.replace("--allow-repo-host", "--allow-registry"))?;
        Ok(Access::Remote {
            scheme,
            host,
            port,
            pin,
        })
    }

    /// The `-c key=value` settings of a git command for `url` under this policy (after
    /// [`RemotePolicy::check_repo`]): only its protocol, no redirects, pinned addresses.
    pub fn git_config(&self, url: &str) -> Result<Vec<String>, String> {
        let access = self.check_repo(url)?;
        let mut out = vec![
            "protocol.allow=never".to_string(),
            "http.followRedirects=false".to_string(),
        ];
        match access {
            Access::Local(_) => out.push("protocol.file.allow=always".into()),
            Access::Remote {
                scheme,
                host,
                port,
                pin,
            } => {
                let proto = match scheme.as_str() {
                    "git+ssh" | "ssh+git" => "ssh",
                    s => s,
                };
                out.push(format!("protocol.{proto}.allow=always"));
                if !pin.is_empty() && host.parse::<IpAddr>().is_err() {
                    let addrs: Vec<String> = pin
                        .iter()
                        .map(|a| match a {
                            IpAddr::V6(v6) => format!("[{v6}]"),
                            IpAddr::V4(v4) => v4.to_string(),
                        })
                        .collect();
                    out.push(format!(
                        "http.curloptResolve={host}:{port}:{}",
                        addrs.join(",")
                    ));
                }
            }
        }
        Ok(out)
    }
}

/// Socket addresses to pin a download of `host` to.
pub fn pinned_addrs(pin: &[IpAddr], port: u16) -> Vec<SocketAddr> {
    pin.iter().map(|ip| SocketAddr::new(*ip, port)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(p: &RemotePolicy, url: &str) -> String {
        p.check_repo(url).expect_err(url)
    }

    #[test]
    fn addresses_of_the_servers_own_network_are_not_public() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(!is_public(a.parse().unwrap()), "{a}");
        }
        for a in ["140.82.112.3", "2606:4700::1111", "::ffff:1.1.1.1"] {
            assert!(is_public(a.parse().unwrap()), "{a}");
        }
    }

    #[test]
    fn a_default_policy_refuses_local_paths_helpers_and_internal_hosts() {
        let p = RemotePolicy::default();
        assert!(refused(&p, "/root/secret-repo").contains("--allow-local-paths"));
        assert!(refused(&p, "file:///etc").contains("--allow-local-paths"));
        assert!(refused(&p, "../x").contains("path on the server"));
        assert!(refused(&p, "ext::sh -c touch% /tmp/pwned").contains("remote helpers"));
        assert!(refused(&p, "ssh://github.com/a/b").contains("only https"));
        assert!(refused(&p, "git@github.com:a/b.git").contains("only https"));
        assert!(refused(&p, "http://example.com/a").contains("only https"));
        for internal in [
            "https://127.0.0.1/a.git",
            "https://localhost/a.git",
            "https://[::1]/a.git",
            "https://169.254.169.254/latest",
            "https://10.0.0.8:8443/a.git",
        ] {
            assert!(refused(&p, internal).contains("resolves to"), "{internal}");
        }
        assert!(p.check_registry("/etc/registry.json").is_err());
        assert!(p
            .check_registry("http://example.com/r.json")
            .unwrap_err()
            .contains("only https"));
        assert!(p
            .check_registry("https://127.0.0.1/r.json")
            .unwrap_err()
            .contains("--allow-registry"));
    }

    #[test]
    fn the_operators_lists_allow_what_they_name_and_only_that() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        std::fs::create_dir(&repo).unwrap();
        let p = RemotePolicy {
            repo_hosts: vec![
                "git.internal".into(),
                "*.corp.example".into(),
                "127.0.0.1".into(),
            ],
            registry_prefixes: vec!["https://reg.internal/datasets".into()],
            local_roots: vec![dir.path().to_path_buf()],
        };
        assert_eq!(
            p.check_repo(repo.to_str().unwrap()).unwrap(),
            Access::Local(repo.canonicalize().unwrap())
        );
        assert!(p.check_repo(&format!("file://{}", repo.display())).is_ok());
        assert!(p.check_repo("/etc").is_err());
        assert!(p
            .check_repo(&format!("{}/../../etc", repo.display()))
            .is_err());
        assert!(p.check_repo("ssh://git.internal/a").is_ok());
        assert!(p.check_repo("https://a.corp.example/x").is_ok());
        assert!(p.check_repo("http://127.0.0.1:8080/x").is_ok());
        assert!(refused(&p, "https://github.com/a/b").contains("not one this server clones"));
        assert!(refused(&p, "https://corp.example.evil/x").contains("not one"));
        assert!(p
            .check_registry("https://reg.internal/datasets/r.json")
            .is_ok());
        assert!(p.check_registry("https://reg.internal/datasets").is_ok());
        assert!(p
            .check_registry("https://reg.internal/datasets-evil/r.json")
            .is_err());
        assert!(p.check_registry("https://reg.internal.evil/x").is_err());
    }

    #[test]
    fn git_commands_are_limited_to_the_checked_protocol() {
        let dir = tempfile::tempdir().unwrap();
        let p = RemotePolicy {
            local_roots: vec![dir.path().to_path_buf()],
            ..Default::default()
        };
        let c = p.git_config(dir.path().to_str().unwrap()).unwrap();
        assert!(c.contains(&"protocol.allow=never".to_string()));
        assert!(c.contains(&"protocol.file.allow=always".to_string()));
        assert!(c.contains(&"http.followRedirects=false".to_string()));
        let c = p.git_config("https://1.1.1.1/a.git").unwrap();
        assert!(c.contains(&"protocol.https.allow=always".to_string()));
    }
}
