//! Who may submit, cancel and download.
//!
//! - `none`: anyone (only sensible on loopback, the default bind).
//! - `token`: `Authorization: Bearer <token>`; the server knows only BLAKE3 hashes of the tokens
//!   (hex, one per line in `--tokens-file`, or comma-separated in `ROLLOUT_SERVE_TOKEN_HASHES`)
//!   and compares the hash of the presented token with each in constant time.
//! - `hotkey`: the seed's `X-Hotkey` (an SS58 address) with `X-Nonce` and `X-Signature`: an
//!   sr25519 signature (schnorrkel, signing context `substrate`) over the UTF-8 bytes of the
//!   hotkey string immediately followed by the nonce string, hex-encoded (optional `0x`). The
//!   hotkey must be in the allowlist (`--hotkeys-file`), its SS58 checksum valid, and a nonce is
//!   accepted once per [`NONCE_WINDOW`].
//! - `hotkey-header`: the first term-executor's scheme, for its existing clients: `X-Hotkey`
//!   alone, matched against the allowlist. It names a caller and proves nothing (anyone who
//!   knows an allowed hotkey can submit); as in the seed, only submissions and cancellations
//!   need it, reads are open.
//!
//! Credentials never reach a log line: rejections log only their reason.

use crate::error::ApiError;
use axum::http::{HeaderMap, StatusCode};
use blake2::{Blake2b512, Digest};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a used nonce is remembered (and refused).
pub const NONCE_WINDOW: Duration = Duration::from_secs(600);
/// Longest nonce accepted (bounds the memory of the nonce set).
pub const MAX_NONCE_LEN: usize = 128;
/// Most nonces remembered at once; past it, new signed requests are refused until old ones age.
pub const MAX_NONCES: usize = 100_000;

/// `--auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMode {
    #[default]
    None,
    Token,
    Hotkey,
    HotkeyHeader,
}

impl AuthMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::None => "none",
            AuthMode::Token => "token",
            AuthMode::Hotkey => "hotkey",
            AuthMode::HotkeyHeader => "hotkey-header",
        }
    }
}

/// Why the authentication set-up could not be read.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{origin} line {line}: {message}")]
    Invalid {
        origin: String,
        line: usize,
        message: String,
    },
    #[error("--auth {0} needs credentials: {1}")]
    Missing(&'static str, &'static str),
}

/// The configured authentication.
pub enum Auth {
    None,
    Token(Vec<blake3::Hash>),
    Hotkey {
        allowed: HashSet<String>,
        nonces: Mutex<HashMap<String, Instant>>,
    },
    /// `X-Hotkey` alone (identity without proof): the seed's clients.
    HotkeyHeader(HashSet<String>),
}

/// Who made a request (for the record; never a secret).
#[derive(Debug, Clone)]
pub struct Principal(pub String);

fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
}

fn parse_hash(origin: &str, line: usize, s: &str) -> Result<blake3::Hash, AuthSetupError> {
    let s = s.strip_prefix("blake3:").unwrap_or(s);
    blake3::Hash::from_hex(s).map_err(|_| AuthSetupError::Invalid {
        origin: origin.to_string(),
        line,
        message: "expected the 64-hex-digit BLAKE3 hash of a token (e.g. `printf %s \"$TOKEN\" | b3sum`), not the token itself".into(),
    })
}

fn read(path: &Path) -> Result<String, AuthSetupError> {
    std::fs::read_to_string(path).map_err(|source| AuthSetupError::Read {
        path: path.display().to_string(),
        source,
    })
}

impl Auth {
    /// Token authentication from a file of hashes and/or a comma-separated list (the env var).
    pub fn tokens(file: Option<&Path>, env: Option<&str>) -> Result<Self, AuthSetupError> {
        let mut hashes = Vec::new();
        if let Some(path) = file {
            let text = read(path)?;
            for (line, l) in lines(&text) {
                hashes.push(parse_hash(&path.display().to_string(), line, l)?);
            }
        }
        if let Some(env) = env {
            for (i, h) in env
                .split([',', ' ', '\n'])
                .filter(|s| !s.is_empty())
                .enumerate()
            {
                hashes.push(parse_hash("ROLLOUT_SERVE_TOKEN_HASHES", i + 1, h)?);
            }
        }
        if hashes.is_empty() {
            return Err(AuthSetupError::Missing(
                "token",
                "give --tokens-file FILE or ROLLOUT_SERVE_TOKEN_HASHES with BLAKE3 hashes of the tokens",
            ));
        }
        Ok(Auth::Token(hashes))
    }

    /// Hotkey authentication with the allowlist in `file` (one SS58 address a line).
    pub fn hotkeys(file: Option<&Path>) -> Result<Self, AuthSetupError> {
        let allowed = read_hotkeys(file, "hotkey")?;
        Ok(Auth::Hotkey {
            allowed,
            nonces: Mutex::new(HashMap::new()),
        })
    }

    /// The seed's `X-Hotkey`-only authentication with the allowlist in `file`.
    pub fn hotkey_header(file: Option<&Path>) -> Result<Self, AuthSetupError> {
        Ok(Auth::HotkeyHeader(read_hotkeys(file, "hotkey-header")?))
    }

    /// Whether reads (runs, trials, streams) are open whatever the credentials: the seed's
    /// scheme authenticates submissions only.
    pub fn reads_open(&self) -> bool {
        matches!(self, Auth::HotkeyHeader(_))
    }

    pub fn mode(&self) -> AuthMode {
        match self {
            Auth::None => AuthMode::None,
            Auth::Token(_) => AuthMode::Token,
            Auth::Hotkey { .. } => AuthMode::Hotkey,
            Auth::HotkeyHeader(_) => AuthMode::HotkeyHeader,
        }
    }

    /// Check a request's credentials.
    pub fn check(&self, headers: &HeaderMap) -> Result<Principal, ApiError> {
        let result = self.check_inner(headers);
        if let Err(e) = &result {
            // The reason only: never the header values.
            tracing::warn!(reason = e.code, "authentication refused");
        }
        result
    }

    fn check_inner(&self, headers: &HeaderMap) -> Result<Principal, ApiError> {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        match self {
            Auth::None => Ok(Principal("anonymous".into())),
            Auth::Token(hashes) => {
                let Some(value) = header("authorization") else {
                    return Err(unauthorized(
                        "missing_credentials",
                        "this server needs `Authorization: Bearer <token>`",
                    ));
                };
                // The scheme is case-insensitive (RFC 9110 §11.1): `Bearer`, `bearer`, `BEARER`.
                let token = value
                    .trim_start()
                    .split_once([' ', '\t'])
                    .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                    .map(|(_, token)| token.trim())
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| {
                        unauthorized(
                            "invalid_token",
                            "the Authorization header must be `Bearer <token>`",
                        )
                    })?;
                let presented = blake3::hash(token.as_bytes());
                // blake3::Hash's equality is constant-time; every hash is compared.
                let mut found = None;
                for (i, h) in hashes.iter().enumerate() {
                    if *h == presented {
                        found = Some(i);
                    }
                }
                match found {
                    Some(i) => Ok(Principal(format!("token#{}", i + 1))),
                    None => Err(unauthorized(
                        "invalid_token",
                        "the bearer token is not one this server accepts",
                    )),
                }
            }
            Auth::Hotkey { allowed, nonces } => {
                let (Some(hotkey), Some(nonce), Some(signature)) =
                    (header("x-hotkey"), header("x-nonce"), header("x-signature"))
                else {
                    return Err(unauthorized(
                        "missing_credentials",
                        "this server needs the X-Hotkey, X-Nonce and X-Signature headers",
                    ));
                };
                let public = ss58_public_key(hotkey)
                    .map_err(|m| unauthorized("invalid_hotkey", format!("X-Hotkey: {m}")))?;
                if !allowed.contains(hotkey) {
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "unauthorized_hotkey",
                        "this hotkey is not in the server's allowlist",
                    ));
                }
                if nonce.is_empty() || nonce.len() > MAX_NONCE_LEN {
                    return Err(unauthorized(
                        "invalid_nonce",
                        format!("X-Nonce must be 1 to {MAX_NONCE_LEN} bytes"),
                    ));
                }
                verify_signature(&public, hotkey, nonce, signature)?;
                let now = Instant::now();
                let mut seen = nonces.lock().unwrap_or_else(|p| p.into_inner());
                seen.retain(|_, t| now.duration_since(*t) < NONCE_WINDOW);
                let key = format!("{hotkey}:{nonce}");
                if seen.contains_key(&key) {
                    return Err(unauthorized(
                        "nonce_reused",
                        "this nonce was already used: sign a new one for every request",
                    ));
                }
                if seen.len() >= MAX_NONCES {
                    return Err(ApiError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "too_many_requests",
                        "too many signed requests in the nonce window; retry later",
                    ));
                }
                seen.insert(key, now);
                Ok(Principal(hotkey.to_string()))
            }
            Auth::HotkeyHeader(allowed) => match header("x-hotkey") {
                // The seed answers both cases alike: 401 `unauthorized`.
                Some(hotkey) if allowed.contains(hotkey.trim()) => {
                    Ok(Principal(hotkey.trim().to_string()))
                }
                _ => Err(unauthorized(
                    "unauthorized",
                    "Invalid or missing X-Hotkey header. Only an authorized hotkey can submit tasks.",
                )),
            },
        }
    }
}

/// The SS58 allowlist of `--hotkeys-file`, every address checked.
fn read_hotkeys(
    file: Option<&Path>,
    mode: &'static str,
) -> Result<HashSet<String>, AuthSetupError> {
    let Some(path) = file else {
        return Err(AuthSetupError::Missing(
            mode,
            "give --hotkeys-file FILE listing the SS58 hotkeys allowed to submit",
        ));
    };
    let text = read(path)?;
    let mut allowed = HashSet::new();
    for (line, l) in lines(&text) {
        ss58_public_key(l).map_err(|message| AuthSetupError::Invalid {
            origin: path.display().to_string(),
            line,
            message: message.into(),
        })?;
        allowed.insert(l.to_string());
    }
    if allowed.is_empty() {
        return Err(AuthSetupError::Missing(
            mode,
            "the hotkeys file lists no hotkey",
        ));
    }
    Ok(allowed)
}

fn unauthorized(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, code, message)
}

fn verify_signature(
    public: &[u8; 32],
    hotkey: &str,
    nonce: &str,
    signature: &str,
) -> Result<(), ApiError> {
    let bad = |m: &str| unauthorized("invalid_signature", m.to_string());
    let hex_sig = signature.strip_prefix("0x").unwrap_or(signature);
    let bytes = hex::decode(hex_sig).map_err(|_| bad("X-Signature must be hex"))?;
    let sig = schnorrkel::Signature::from_bytes(&bytes)
        .map_err(|_| bad("X-Signature is not an sr25519 signature (64 bytes)"))?;
    let key = schnorrkel::PublicKey::from_bytes(public)
        .map_err(|_| bad("the hotkey is not an sr25519 public key"))?;
    let mut message = Vec::with_capacity(hotkey.len() + nonce.len());
    message.extend_from_slice(hotkey.as_bytes());
    message.extend_from_slice(nonce.as_bytes());
    key.verify_simple(SIGNING_CONTEXT, &message, &sig)
        .map_err(|_| bad("the signature over hotkey+nonce does not verify"))
}

/// The sr25519 signing context of Substrate signatures.
pub const SIGNING_CONTEXT: &[u8] = b"substrate";

/// The public key of an SS58 address: base58 decoded, a one- or two-byte network prefix, 32 key
/// bytes, and a two-byte checksum (the first bytes of BLAKE2b-512 over `"SS58PRE"` + prefix +
/// key) that must match.
pub fn ss58_public_key(address: &str) -> Result<[u8; 32], &'static str> {
    let raw = bs58::decode(address)
        .into_vec()
        .map_err(|_| "not a base58 string")?;
    let prefix_len = match raw.first() {
        Some(b) if *b < 64 => 1,
        Some(b) if *b < 128 => 2,
        _ => return Err("not an SS58 address (bad network prefix)"),
    };
    if raw.len() != prefix_len + 32 + 2 {
        return Err("not an SS58 address of a 32-byte public key");
    }
    let (body, checksum) = raw.split_at(prefix_len + 32);
    let mut h = Blake2b512::new();
    h.update(b"SS58PRE");
    h.update(body);
    if h.finalize()[..2] != *checksum {
        return Err("SS58 checksum mismatch");
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(&body[prefix_len..]);
    Ok(key)
}

/// Encode a public key as an SS58 address with a one-byte `prefix` (42: generic Substrate).
pub fn ss58_encode(public: &[u8; 32], prefix: u8) -> String {
    let mut raw = vec![prefix];
    raw.extend_from_slice(public);
    let mut h = Blake2b512::new();
    h.update(b"SS58PRE");
    h.update(&raw);
    let sum = h.finalize();
    raw.extend_from_slice(&sum[..2]);
    bs58::encode(raw).into_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keypair(seed: u8) -> schnorrkel::Keypair {
        schnorrkel::MiniSecretKey::from_bytes(&[seed; 32])
            .unwrap()
            .expand_to_keypair(schnorrkel::ExpansionMode::Ed25519)
    }

    fn signed(kp: &schnorrkel::Keypair, nonce: &str) -> HeaderMap {
        let hotkey = ss58_encode(&kp.public.to_bytes(), 42);
        let sig = kp.sign_simple(SIGNING_CONTEXT, format!("{hotkey}{nonce}").as_bytes());
        let mut h = HeaderMap::new();
        h.insert("x-hotkey", hotkey.parse().unwrap());
        h.insert("x-nonce", nonce.parse().unwrap());
        h.insert(
            "x-signature",
            format!("0x{}", hex::encode(sig.to_bytes()))
                .parse()
                .unwrap(),
        );
        h
    }

    #[test]
    fn the_seed_hotkey_header_scheme_checks_the_allowlist_only() {
        let allowed = ss58_encode(&keypair(7).public.to_bytes(), 42);
        let other = ss58_encode(&keypair(8).public.to_bytes(), 42);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hotkeys");
        std::fs::write(&file, format!("# allowed\n{allowed}\n")).unwrap();
        let auth = Auth::hotkey_header(Some(&file)).unwrap();
        assert!(auth.reads_open());
        let with = |k: &str| {
            let mut h = HeaderMap::new();
            h.insert("x-hotkey", k.parse().unwrap());
            h
        };
        // No nonce, no signature: the header alone is the seed's whole scheme.
        assert_eq!(auth.check(&with(&allowed)).unwrap().0, allowed);
        for refused in [with(&other), HeaderMap::new()] {
            let e = auth.check(&refused).unwrap_err();
            assert_eq!(
                (e.status, e.code),
                (StatusCode::UNAUTHORIZED, "unauthorized")
            );
        }
        // An allowlist entry that is no SS58 address is refused at start-up, with its line.
        std::fs::write(&file, "not-an-address\n").unwrap();
        let err = Auth::hotkey_header(Some(&file)).err().unwrap().to_string();
        assert!(err.contains("line 1"), "{err}");
        assert!(Auth::hotkey_header(None).is_err());
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        let auth = Auth::Token(vec![blake3::hash(b"tok-1")]);
        for scheme in ["Bearer", "bearer", "BEARER", "BeArEr"] {
            let mut h = HeaderMap::new();
            h.insert("authorization", format!("{scheme} tok-1").parse().unwrap());
            assert!(auth.check(&h).is_ok(), "{scheme}");
        }
        for bad in ["Basic tok-1", "Bearer", "Bearertok-1", "Bearer wrong"] {
            let mut h = HeaderMap::new();
            h.insert("authorization", bad.parse().unwrap());
            assert_eq!(auth.check(&h).unwrap_err().code, "invalid_token", "{bad}");
        }
    }

    #[test]
    fn a_well_known_address_decodes_and_a_corrupted_one_does_not() {
        // Alice's well-known development address.
        let alice = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY";
        let key = ss58_public_key(alice).unwrap();
        assert_eq!(
            hex::encode(key),
            "d43593c715fdd31c61141abd04a99fd6822c8558854ccde39a5684e7a56da27d"
        );
        assert_eq!(ss58_encode(&key, 42), alice);
        let corrupted = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQZ";
        assert_eq!(ss58_public_key(corrupted), Err("SS58 checksum mismatch"));
        assert!(ss58_public_key("not-an-address").is_err());
    }

    #[test]
    fn hotkey_signatures_verify_once_per_nonce() {
        let kp = keypair(7);
        let other = keypair(8);
        let hotkey = ss58_encode(&kp.public.to_bytes(), 42);
        let auth = Auth::Hotkey {
            allowed: [hotkey.clone()].into(),
            nonces: Mutex::new(HashMap::new()),
        };
        assert!(auth.check(&signed(&kp, "n1")).is_ok());
        assert_eq!(
            auth.check(&signed(&kp, "n1")).unwrap_err().code,
            "nonce_reused"
        );
        assert_eq!(
            auth.check(&signed(&other, "n2")).unwrap_err().code,
            "unauthorized_hotkey"
        );
        // A signature by another key over the allowed hotkey + nonce.
        let mut forged = signed(&kp, "n3");
        let sig = other.sign_simple(SIGNING_CONTEXT, format!("{hotkey}n3").as_bytes());
        forged.insert("x-signature", hex::encode(sig.to_bytes()).parse().unwrap());
        assert_eq!(auth.check(&forged).unwrap_err().code, "invalid_signature");
        assert_eq!(
            auth.check(&HeaderMap::new()).unwrap_err().code,
            "missing_credentials"
        );
    }

    #[test]
    fn tokens_match_by_hash_only() {
        let auth = Auth::tokens(None, Some(&blake3::hash(b"s3cret").to_hex())).unwrap();
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer s3cret".parse().unwrap());
        assert!(auth.check(&h).is_ok());
        h.insert("authorization", "Bearer wrong".parse().unwrap());
        assert_eq!(auth.check(&h).unwrap_err().code, "invalid_token");
        assert!(Auth::tokens(None, Some("s3cret")).is_err());
    }
}
