//! The filtering egress proxy behind `network_mode = "allowlist"` on Docker.
//!
//! A trial with an allowlist runs on its own `internal` Docker network (no route out: direct
//! connections and DNS of outside names fail). The only way out is this proxy, which rollout
//! runs in-process on the network's gateway address (this machine) and names in the
//! container's `HTTP_PROXY`/`HTTPS_PROXY`. It serves:
//!
//! - `CONNECT host:port` (HTTPS and other tunnels) when `host` is allowed; the first bytes of
//!   the tunnel must not be a plain HTTP request, and a TLS ClientHello's server name (SNI),
//!   when present, must be the CONNECT host (a shared front-end such as a CDN or an
//!   intercepting proxy routes by SNI, so another name would reach another host);
//! - plain HTTP in absolute form (`GET http://host/path`), one request per connection, with
//!   `Host` rewritten to the allowed authority.
//!
//! Names are resolved here, on the host; a name resolving to a loopback, link-local or
//! unspecified address is refused. Only clients on the trial's network are served. Every read
//! and connect has a timeout and a request head is capped. The listener and its connections
//! end when the [`EgressProxy`] is dropped.

use rollout_core::allowlist::Allowlist;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// Label on the internal networks of allowlist trials (value `allowlist`).
pub const NETWORK_LABEL: &str = "io.rollout.egress";

/// Bound on a request head (request line and headers).
const MAX_HEAD: usize = 16 * 1024;
/// Bound on reading a request head or the first bytes of a tunnel.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on resolving and connecting upstream.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound on each direction of a forwarded plain-HTTP request.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Concurrent connections per proxy.
const MAX_CONNECTIONS: usize = 256;

/// One trial's proxy. Dropping it closes the listener and every connection.
pub struct EgressProxy {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EgressProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EgressProxy {
    /// Listen on `bind` (an ephemeral port) and serve clients whose address is in
    /// `clients` (the trial network's subnet), allowing destinations of `allow`.
    pub async fn start(
        bind: IpAddr,
        clients: Allowlist,
        allow: Allowlist,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(SocketAddr::new(bind, 0)).await?;
        let addr = listener.local_addr()?;
        let allow = Arc::new(allow);
        let task = tokio::spawn(async move {
            // Dropped (aborting every connection) when the accept loop is aborted.
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, peer)) = accepted else { continue };
                        if !clients.allows(&peer.ip().to_string()) || conns.len() >= MAX_CONNECTIONS {
                            continue;
                        }
                        let allow = allow.clone();
                        conns.spawn(async move {
                            let _ = serve(stream, &allow).await;
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        Ok(Self { addr, task })
    }

    /// Where clients reach it (`http://{addr}` is the proxy URL).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The environment variables that point HTTP clients at the proxy.
    pub fn env(&self) -> Vec<(String, String)> {
        let url = format!("http://{}", self.addr);
        let mut out: Vec<(String, String)> = [
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "http_proxy",
            "https_proxy",
            "ALL_PROXY",
            "all_proxy",
        ]
        .iter()
        .map(|k| (k.to_string(), url.clone()))
        .collect();
        for k in ["NO_PROXY", "no_proxy"] {
            out.push((k.to_string(), "localhost,127.0.0.1,::1".to_string()));
        }
        out
    }
}

/// What went wrong with one client connection (answered with a status when possible).
#[derive(Debug)]
struct Refused(u16, String);

async fn respond<W: AsyncWrite + Unpin>(w: &mut W, status: u16, why: &str) {
    let reason = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        408 => "Request Timeout",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        504 => "Gateway Timeout",
        _ => "Error",
    };
    let body = format!("rollout egress proxy: {why}\n");
    let msg = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(5), w.write_all(msg.as_bytes())).await;
    let _ = w.shutdown().await;
}

/// Read until the end of the request head; returns (head, bytes read past it).
async fn read_head<R: AsyncRead + Unpin>(r: &mut R) -> Result<(String, Vec<u8>), Refused> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            if let Some(end) = find_head_end(&buf) {
                let rest = buf.split_off(end);
                let head = String::from_utf8(buf)
                    .map_err(|_| Refused(400, "the request head is not UTF-8".into()))?;
                return Ok((head, rest));
            }
            if buf.len() > MAX_HEAD {
                return Err(Refused(431, "request head over 16 KiB".into()));
            }
            let n = r
                .read(&mut chunk)
                .await
                .map_err(|e| Refused(400, e.to_string()))?;
            if n == 0 {
                return Err(Refused(400, "connection closed before the request".into()));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(HEAD_TIMEOUT, read)
        .await
        .map_err(|_| Refused(408, "no request within 30 s".into()))?
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// Split `host:port` (IPv6 in brackets); `default_port` when absent.
fn split_authority(a: &str, default_port: Option<u16>) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = a.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default_port?,
            None => return None,
        };
        (h.to_string(), port)
    } else {
        match a.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().ok()?),
            None => (a.to_string(), default_port?),
        }
    };
    if host.is_empty() || port == 0 {
        return None;
    }
    Some((host, port))
}

/// Resolve (on this machine) and connect, refusing local addresses for names.
async fn connect_upstream(host: &str, port: u16) -> Result<TcpStream, Refused> {
    let literal = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .ok();
    let addrs: Vec<SocketAddr> = match literal {
        Some(ip) => vec![SocketAddr::new(ip, port)],
        None => tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::lookup_host((host, port)))
            .await
            .map_err(|_| Refused(504, format!("resolving {host} timed out")))?
            .map_err(|e| Refused(502, format!("cannot resolve {host}: {e}")))?
            .filter(|a| {
                let ip = a.ip();
                !(ip.is_loopback() || ip.is_unspecified() || link_local(ip) || ip.is_multicast())
            })
            .collect(),
    };
    if addrs.is_empty() {
        return Err(Refused(
            403,
            format!("{host} resolves to no address the proxy connects to"),
        ));
    }
    let mut last = String::new();
    for a in addrs {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(a)).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "timed out".into(),
        }
    }
    Err(Refused(
        502,
        format!("cannot connect to {host}:{port}: {last}"),
    ))
}

fn link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => (a.segments()[0] & 0xffc0) == 0xfe80,
    }
}

async fn serve(mut client: TcpStream, allow: &Allowlist) -> Result<(), Refused> {
    let result = handle(&mut client, allow).await;
    if let Err(Refused(status, why)) = &result {
        respond(&mut client, *status, why).await;
    }
    result
}

async fn handle(client: &mut TcpStream, allow: &Allowlist) -> Result<(), Refused> {
    let (head, rest) = read_head(client).await?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Refused(400, "malformed request line".into()));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(Refused(400, "only HTTP/1.x requests are served".into()));
    }
    if method.eq_ignore_ascii_case("CONNECT") {
        let (host, port) = split_authority(target, None)
            .ok_or_else(|| Refused(400, format!("CONNECT needs host:port, got {target:?}")))?;
        if !allow.allows(&host) {
            return Err(Refused(
                403,
                format!("{host} is not in the task's allowed_hosts"),
            ));
        }
        let mut upstream = connect_upstream(&host, port).await?;
        client
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await
            .map_err(|e| Refused(502, e.to_string()))?;
        // The first bytes of the tunnel: what the client speaks through it.
        let mut first = rest;
        let sniff = async {
            loop {
                match tunnel_check(&first, &host) {
                    Check::Need => {}
                    other => return Ok(other),
                }
                let mut chunk = [0u8; 4096];
                let n = client.read(&mut chunk).await?;
                if n == 0 {
                    return Ok(Check::Closed);
                }
                first.extend_from_slice(&chunk[..n]);
            }
        };
        let check: std::io::Result<Check> = tokio::time::timeout(HEAD_TIMEOUT, sniff)
            .await
            .unwrap_or(Ok(Check::Closed));
        match check {
            Ok(Check::Pass) => {}
            // The tunnel is open: a refusal now can only close it.
            _ => return Ok(()),
        }
        upstream
            .write_all(&first)
            .await
            .map_err(|e| Refused(502, e.to_string()))?;
        relay(client, &mut upstream).await;
        return Ok(());
    }
    // Plain HTTP: absolute-form target.
    let Some(after) = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("HTTP://"))
    else {
        return Err(Refused(
            400,
            "a proxy request needs an absolute http:// URL (use CONNECT for https)".into(),
        ));
    };
    let (authority, path) = match after.find('/') {
        Some(i) => (&after[..i], &after[i..]),
        None => (after, "/"),
    };
    if authority.contains('@') {
        return Err(Refused(
            400,
            "credentials in the URL are not forwarded".into(),
        ));
    }
    let (host, port) = split_authority(authority, Some(80))
        .ok_or_else(|| Refused(400, format!("bad host in {target:?}")))?;
    if !allow.allows(&host) {
        return Err(Refused(
            403,
            format!("{host} is not in the task's allowed_hosts"),
        ));
    }
    let mut body_len: u64 = 0;
    let mut out =
        format!("{method} {path} {version}\r\nHost: {authority}\r\nConnection: close\r\n");
    for line in lines.filter(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(Refused(400, "malformed header".into()));
        };
        let lname = name.trim().to_ascii_lowercase();
        match lname.as_str() {
            "host"
            | "connection"
            | "proxy-connection"
            | "proxy-authorization"
            | "keep-alive"
            | "upgrade" => continue,
            "transfer-encoding" => {
                return Err(Refused(
                    501,
                    "chunked request bodies are not forwarded; send a Content-Length".into(),
                ))
            }
            "content-length" => {
                body_len = value
                    .trim()
                    .parse()
                    .map_err(|_| Refused(400, "bad Content-Length".into()))?;
            }
            _ => {}
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    let mut upstream = connect_upstream(&host, port).await?;
    upstream
        .write_all(out.as_bytes())
        .await
        .map_err(|e| Refused(502, e.to_string()))?;
    // Exactly this request's body, never a second (pipelined) request.
    let first = &rest[..rest.len().min(body_len as usize)];
    upstream
        .write_all(first)
        .await
        .map_err(|e| Refused(502, e.to_string()))?;
    let remaining = body_len - first.len() as u64;
    let up = async {
        let mut limited = (&mut *client).take(remaining);
        tokio::io::copy(&mut limited, &mut upstream).await
    };
    let _ = tokio::time::timeout(IDLE_TIMEOUT, up).await;
    let _ = tokio::time::timeout(IDLE_TIMEOUT, tokio::io::copy(&mut upstream, client)).await;
    let _ = client.shutdown().await;
    Ok(())
}

/// Copy both ways until both sides close (or the proxy is dropped with its trial).
async fn relay(client: &mut TcpStream, upstream: &mut TcpStream) {
    let _ = tokio::io::copy_bidirectional(client, upstream).await;
}

/// What the first bytes of a CONNECT tunnel say.
#[derive(Debug, PartialEq)]
enum Check {
    /// Forward: TLS whose server name is the CONNECT host (or absent), or another protocol.
    Pass,
    /// Not enough bytes yet.
    Need,
    /// Close: a plain HTTP request (its Host would pick the destination) or TLS for another
    /// server name.
    Refuse,
    /// The client went away.
    Closed,
}

const HTTP_METHODS: [&str; 9] = [
    "GET ", "POST ", "PUT ", "HEAD ", "DELETE ", "OPTIONS ", "PATCH ", "CONNECT ", "TRACE ",
];

fn tunnel_check(buf: &[u8], connect_host: &str) -> Check {
    if buf.is_empty() {
        return Check::Need;
    }
    if buf[0] == 0x16 {
        // TLS record: type, version (2), length (2), then the handshake.
        if buf.len() < 5 {
            return Check::Need;
        }
        let len = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
        if buf.len() < 5 + len {
            return if 5 + len > 5 + 16 * 1024 + 256 {
                Check::Refuse
            } else {
                Check::Need
            };
        }
        return match client_hello_sni(&buf[5..5 + len]) {
            Err(()) => Check::Refuse,
            Ok(None) => Check::Pass,
            Ok(Some(name)) => {
                let host = connect_host.trim_end_matches('.');
                if name.trim_end_matches('.').eq_ignore_ascii_case(host) {
                    Check::Pass
                } else {
                    Check::Refuse
                }
            }
        };
    }
    let upper: Vec<u8> = buf.iter().take(8).map(|b| b.to_ascii_uppercase()).collect();
    for m in HTTP_METHODS {
        let m = m.as_bytes();
        let n = upper.len().min(m.len());
        if upper[..n] == m[..n] {
            return if upper.len() >= m.len() {
                Check::Refuse
            } else {
                Check::Need
            };
        }
    }
    Check::Pass
}

/// The server name of a ClientHello handshake message; `Err` when it is not one.
fn client_hello_sni(h: &[u8]) -> Result<Option<String>, ()> {
    struct Cur<'a>(&'a [u8]);
    impl<'a> Cur<'a> {
        fn take(&mut self, n: usize) -> Result<&'a [u8], ()> {
            if self.0.len() < n {
                return Err(());
            }
            let (a, b) = self.0.split_at(n);
            self.0 = b;
            Ok(a)
        }
        fn u8(&mut self) -> Result<usize, ()> {
            Ok(usize::from(self.take(1)?[0]))
        }
        fn u16(&mut self) -> Result<usize, ()> {
            let b = self.take(2)?;
            Ok(usize::from(u16::from_be_bytes([b[0], b[1]])))
        }
    }
    let mut c = Cur(h);
    if c.u8()? != 1 {
        return Err(());
    }
    let len = c.take(3)?;
    let len = (usize::from(len[0]) << 16) | (usize::from(len[1]) << 8) | usize::from(len[2]);
    let mut c = Cur(c.take(len)?);
    c.take(2 + 32)?;
    let n = c.u8()?;
    c.take(n)?;
    let n = c.u16()?;
    c.take(n)?;
    let n = c.u8()?;
    c.take(n)?;
    if c.0.is_empty() {
        return Ok(None);
    }
    let n = c.u16()?;
    let mut ext = Cur(c.take(n)?);
    let mut found = None;
    while !ext.0.is_empty() {
        let typ = ext.u16()?;
        let n = ext.u16()?;
        let data = ext.take(n)?;
        if typ == 0 {
            if found.is_some() {
                return Err(());
            }
            let mut d = Cur(data);
            let n = d.u16()?;
            let mut list = Cur(d.take(n)?);
            while !list.0.is_empty() {
                let kind = list.u8()?;
                let n = list.u16()?;
                let name = list.take(n)?;
                if kind == 0 {
                    if found.is_some() {
                        return Err(());
                    }
                    found = Some(String::from_utf8(name.to_vec()).map_err(|_| ())?);
                }
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(sni: Option<&str>) -> Vec<u8> {
        let mut ext = Vec::new();
        if let Some(name) = sni {
            let mut list = vec![0u8];
            list.extend_from_slice(&(name.len() as u16).to_be_bytes());
            list.extend_from_slice(name.as_bytes());
            let mut data = (list.len() as u16).to_be_bytes().to_vec();
            data.extend_from_slice(&list);
            ext.extend_from_slice(&0u16.to_be_bytes());
            ext.extend_from_slice(&(data.len() as u16).to_be_bytes());
            ext.extend_from_slice(&data);
        }
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7u8; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
        body.extend_from_slice(&[1, 0]); // null compression
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut hs = vec![1u8];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut rec = vec![0x16, 3, 1];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn tunnels_must_name_the_connect_host() {
        let ok = hello(Some("deb.debian.org"));
        assert_eq!(tunnel_check(&ok, "deb.debian.org"), Check::Pass);
        assert_eq!(tunnel_check(&ok[..20], "deb.debian.org"), Check::Need);
        let other = hello(Some("pypi.org"));
        assert_eq!(tunnel_check(&other, "deb.debian.org"), Check::Refuse);
        assert_eq!(tunnel_check(&hello(None), "deb.debian.org"), Check::Pass);
        assert_eq!(
            tunnel_check(
                b"GET / HTTP/1.1\r\nHost: pypi.org\r\n\r\n",
                "deb.debian.org"
            ),
            Check::Refuse
        );
        assert_eq!(tunnel_check(b"GE", "deb.debian.org"), Check::Need);
        assert_eq!(
            tunnel_check(b"SSH-2.0-OpenSSH\r\n", "deb.debian.org"),
            Check::Pass
        );
        assert_eq!(
            tunnel_check(&[0x16, 3, 1, 0, 3, 9, 9, 9], "x"),
            Check::Refuse
        );
    }

    #[test]
    fn authorities_split() {
        assert_eq!(
            split_authority("pypi.org:443", None),
            Some(("pypi.org".into(), 443))
        );
        assert_eq!(
            split_authority("pypi.org", Some(80)),
            Some(("pypi.org".into(), 80))
        );
        assert_eq!(split_authority("pypi.org", None), None);
        assert_eq!(
            split_authority("[2001:db8::1]:443", None),
            Some(("2001:db8::1".into(), 443))
        );
        assert_eq!(split_authority("pypi.org:0", None), None);
        assert_eq!(split_authority(":443", None), None);
    }

    async fn proxy_for(hosts: &[&str]) -> EgressProxy {
        let allow =
            Allowlist::new(&hosts.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        let clients = Allowlist::new(&["127.0.0.0/8".to_string()]).unwrap();
        EgressProxy::start("127.0.0.1".parse().unwrap(), clients, allow)
            .await
            .unwrap()
    }

    async fn ask(proxy: &EgressProxy, request: &str) -> String {
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn unlisted_destinations_are_refused_before_any_connection() {
        let proxy = proxy_for(&["deb.debian.org"]).await;
        for req in [
            "CONNECT pypi.org:443 HTTP/1.1\r\nHost: pypi.org:443\r\n\r\n",
            "CONNECT 203.0.113.80:443 HTTP/1.1\r\n\r\n",
            "GET http://pypi.org/simple/ HTTP/1.1\r\nHost: deb.debian.org\r\n\r\n",
            "GET http://deb.debian.org.pypi.org/ HTTP/1.1\r\n\r\n",
        ] {
            let got = ask(&proxy, req).await;
            assert!(got.starts_with("HTTP/1.1 403"), "{req:?} -> {got}");
        }
        let got = ask(
            &proxy,
            "GET /simple/ HTTP/1.1\r\nHost: deb.debian.org\r\n\r\n",
        )
        .await;
        assert!(got.starts_with("HTTP/1.1 400"), "{got}");
    }

    #[tokio::test]
    async fn plain_requests_reach_the_listed_host_once_with_its_host_header() {
        // A local "upstream" listed by address, recording what it receives.
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = upstream.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut s, _) = upstream.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            loop {
                let n = s.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
                if n == 0 || find_head_end(&got).is_some_and(|e| got.len() >= e + 2) {
                    break;
                }
            }
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await
                .unwrap();
            s.shutdown().await.unwrap();
            // Whatever else the proxy sends (a pipelined request must not come).
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest).await;
            got.extend_from_slice(&rest);
            String::from_utf8_lossy(&got).into_owned()
        });
        let proxy = proxy_for(&["127.0.0.1"]).await;
        let got = ask(
            &proxy,
            &format!(
                "POST http://127.0.0.1:{port}/x HTTP/1.1\r\nHost: pypi.org\r\nContent-Length: 2\r\n\r\nhi\
                 GET http://127.0.0.1:{port}/second HTTP/1.1\r\nHost: pypi.org\r\n\r\n"
            ),
        )
        .await;
        assert!(got.starts_with("HTTP/1.1 200 OK"), "{got}");
        let seen = server.await.unwrap();
        assert!(seen.starts_with("POST /x HTTP/1.1\r\n"), "{seen}");
        assert!(
            seen.contains(&format!("Host: 127.0.0.1:{port}\r\n")),
            "{seen}"
        );
        assert!(!seen.contains("pypi.org"), "{seen}");
        assert!(!seen.contains("/second"), "{seen}");
        assert!(seen.ends_with("\r\n\r\nhi"), "{seen}");
    }
}
