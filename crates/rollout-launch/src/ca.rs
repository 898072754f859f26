//! `--ca-certs`: which extra certificate authorities environments should trust.
//!
//! Behind a TLS-intercepting proxy, HTTPS from a container verifies only if the proxy's CA is
//! trusted. The host usually has it under `/usr/local/share/ca-certificates/`; rollout puts a
//! bundle of the host's system CAs plus those extra ones into every environment.

use std::path::{Path, PathBuf};

/// Where Debian-family hosts keep locally added CAs.
pub const HOST_EXTRA_CA_DIR: &str = "/usr/local/share/ca-certificates";
/// The host's system bundle (Debian family), included so that public CAs stay trusted.
const HOST_SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The `--ca-certs` setting.
#[derive(Debug, Clone, PartialEq)]
pub enum CaCerts {
    /// The host's extra CAs, if it has any.
    Auto,
    /// Nothing.
    None,
    /// A PEM file, or a directory of `.crt`/`.pem` files.
    Path(PathBuf),
}

impl std::str::FromStr for CaCerts {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "auto" => CaCerts::Auto,
            "none" => CaCerts::None,
            p => CaCerts::Path(PathBuf::from(p)),
        })
    }
}

fn pem_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for p in paths {
        if p.is_dir() {
            pem_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "crt" || e == "pem") {
            out.push(p);
        }
    }
}

/// The bundle to install, or None when there is nothing extra to trust.
pub fn bundle(setting: &CaCerts) -> Result<Option<Vec<u8>>, String> {
    let extras: Vec<PathBuf> = match setting {
        CaCerts::None => return Ok(None),
        CaCerts::Auto => {
            let mut v = Vec::new();
            pem_files(Path::new(HOST_EXTRA_CA_DIR), &mut v);
            v
        }
        CaCerts::Path(p) if p.is_dir() => {
            let mut v = Vec::new();
            pem_files(p, &mut v);
            if v.is_empty() {
                return Err(format!(
                    "--ca-certs {}: no .crt or .pem files there",
                    p.display()
                ));
            }
            v
        }
        CaCerts::Path(p) if p.is_file() => vec![p.clone()],
        CaCerts::Path(p) => {
            return Err(format!(
                "--ca-certs {}: no such file or directory",
                p.display()
            ))
        }
    };
    if extras.is_empty() {
        return Ok(None);
    }
    let mut out = std::fs::read(HOST_SYSTEM_BUNDLE).unwrap_or_default();
    for path in extras {
        let pem = std::fs::read(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
            return Err(format!("{} is not a PEM certificate", path.display()));
        }
        if !out.is_empty() && !out.ends_with(b"\n") {
            out.push(b'\n');
        }
        out.extend_from_slice(&pem);
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    #[test]
    fn none_and_missing() {
        assert_eq!(bundle(&CaCerts::None).unwrap(), None);
        assert!(bundle(&CaCerts::Path("/no/such/ca".into())).is_err());
    }

    #[test]
    fn a_directory_of_pems_is_bundled() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.crt"), PEM).unwrap();
        std::fs::write(d.path().join("notes.txt"), "x").unwrap();
        let b =
            String::from_utf8(bundle(&CaCerts::Path(d.path().into())).unwrap().unwrap()).unwrap();
        assert!(b.ends_with(PEM));
        std::fs::write(d.path().join("bad.pem"), "nope").unwrap();
        assert!(bundle(&CaCerts::Path(d.path().into())).is_err());
    }
}
