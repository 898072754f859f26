//! `network_mode = "allowlist"` on Docker, against the real engine and this machine's outside
//! network: a listed registry is reachable through rollout's egress proxy, an unlisted one is
//! not (neither directly nor through the proxy), and an agent trying to get around the filter
//! fails. The trial's internal network is removed with the job.

mod common;

use common::*;
use std::net::ToSocketAddrs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// This machine reaches both through its registry proxy; the tests list one and not the other.
const LISTED: &str = "deb.debian.org";
const UNLISTED: &str = "pypi.org";

/// An IPv4 address `host` resolves to on this machine (the tests need both registries).
fn resolve(host: &str) -> String {
    let addrs: Vec<_> = (host, 80)
        .to_socket_addrs()
        .unwrap_or_else(|e| panic!("these tests need {host} to resolve on this machine: {e}"))
        .filter(|a| a.is_ipv4())
        .collect();
    assert!(!addrs.is_empty(), "{host} has no IPv4 address here");
    addrs[0].ip().to_string()
}

/// Shell helpers for the task scripts: talk to the proxy named by HTTP_PROXY over bash's
/// /dev/tcp (the image has no curl or python), and try direct connections.
const HELPERS: &str = r#"
proxy_host() { local hp=${HTTP_PROXY#http://}; echo "${hp%:*}"; }
proxy_port() { local hp=${HTTP_PROXY#http://}; echo "${hp##*:}"; }
# The status line the proxy answers to request $1 (printf format), or "none".
via_proxy() {
  local line
  line=$(timeout 30 bash -c 'exec 3<>/dev/tcp/$0/$1 || exit 1; printf "$2" >&3; head -n1 <&3' "$(proxy_host)" "$(proxy_port)" "$1" 2>/dev/null | tr -d '\r')
  echo "${line:-none}"
}
# How many status lines the proxy answers to $1 before it closes the connection.
status_lines() {
  timeout 30 bash -c 'exec 3<>/dev/tcp/$0/$1 || exit 1; printf "$2" >&3; cat <&3' "$(proxy_host)" "$(proxy_port)" "$1" 2>/dev/null | tr -d '\r' | grep -c '^HTTP/'
}
# "open" when a direct TCP connection to $1:$2 succeeds, else "closed".
direct() {
  if timeout 10 bash -c 'exec 3<>/dev/tcp/$0/$1' "$1" "$2" 2>/dev/null; then echo open; else echo closed; fi
}
check() { # name, got, want
  if [ "$2" = "$3" ] || { [ "$3" = "403" ] && [[ "$2" == *" 403 "* ]]; } || { [ "$3" = "200" ] && [[ "$2" == *" 200 "* ]]; }; then
    echo "ok   $1: $2" >> /logs/verifier/checks.txt
  else
    echo "FAIL $1: got [$2], want $3" >> /logs/verifier/checks.txt
    fail=1
  fi
}
"#;

fn write_task(dir: &Path, toml: &str, solve: &str, test: &str) {
    std::fs::create_dir_all(dir.join("environment")).unwrap();
    std::fs::create_dir_all(dir.join("tests")).unwrap();
    std::fs::create_dir_all(dir.join("solution")).unwrap();
    std::fs::write(dir.join("task.toml"), toml).unwrap();
    std::fs::write(dir.join("instruction.md"), "Reach the package mirror.\n").unwrap();
    std::fs::write(
        dir.join("environment/Dockerfile"),
        "FROM debian:bookworm-slim\nWORKDIR /app\n",
    )
    .unwrap();
    for (path, body) in [("solution/solve.sh", solve), ("tests/test.sh", test)] {
        let p = dir.join(path);
        std::fs::write(&p, format!("#!/bin/bash\n{HELPERS}\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

fn allowlist_toml() -> String {
    format!(
        "[environment]\nnetwork_mode = \"allowlist\"\nallowed_hosts = [\"{LISTED}\"]\n\n[verifier]\ntimeout_sec = 240\n\n[agent]\ntimeout_sec = 400\n"
    )
}

/// The networks rollout left for job `id` (its allowlist network must be gone).
fn networks_of(job: &str) -> String {
    let out = Command::new("docker")
        .args([
            "network",
            "ls",
            "-q",
            "--filter",
            &format!("label=io.rollout.job={job}"),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn assert_rewarded(r: &Run) {
    let trial = r.trial();
    let checks = std::fs::read_to_string(
        r.job_dir
            .join(trial["trial_name"].as_str().unwrap_or_default())
            .join("verifier/checks.txt"),
    )
    .unwrap_or_default();
    assert_eq!(
        trial["reward"],
        1.0,
        "checks:\n{checks}\ntrial: {trial}\nstderr:\n{}",
        r.stderr()
    );
    assert!(!checks.contains("FAIL"), "{checks}");
    let job = r.job_result()["id"].as_str().unwrap().to_string();
    r.assert_no_containers();
    assert_eq!(
        networks_of(&job),
        "",
        "allowlist network of job {job} left behind"
    );
}

#[test]
fn an_allowlist_task_reaches_the_listed_host_and_nothing_else() {
    let ip = resolve(UNLISTED);
    let tmp = tempfile::tempdir().unwrap();
    let task = tmp.path().join("allowlist");
    // The oracle installs from the listed mirror through the proxy (apt reads http_proxy).
    let solve = "apt-get update > /app/apt.log 2>&1 && echo ok > /app/apt.ok";
    let test = format!(
        r#"fail=0
: > /logs/verifier/checks.txt
check "apt-get update through the proxy" "$(cat /app/apt.ok 2>/dev/null)" ok
check "proxy env" "$(test -n "$HTTP_PROXY" && test "$HTTPS_PROXY" = "$HTTP_PROXY" && echo set)" set
check "listed host via proxy" "$(via_proxy 'GET http://{LISTED}/debian/dists/bookworm/Release HTTP/1.1\r\nHost: {LISTED}\r\n\r\n')" 200
check "listed host via CONNECT" "$(via_proxy 'CONNECT {LISTED}:443 HTTP/1.1\r\nHost: {LISTED}:443\r\n\r\n')" 200
check "unlisted host via proxy" "$(via_proxy 'GET http://{UNLISTED}/simple/ HTTP/1.1\r\nHost: {UNLISTED}\r\n\r\n')" 403
check "unlisted host via CONNECT" "$(via_proxy 'CONNECT {UNLISTED}:443 HTTP/1.1\r\nHost: {UNLISTED}:443\r\n\r\n')" 403
check "unlisted host resolves" "$(getent hosts {UNLISTED} >/dev/null && echo yes || echo no)" no
check "listed host resolves directly" "$(getent hosts {LISTED} >/dev/null && echo yes || echo no)" no
check "unlisted host direct 443" "$(direct {ip} 443)" closed
check "unlisted host direct 80" "$(direct {ip} 80)" closed
if [ "$fail" = 0 ]; then echo 1 > /logs/verifier/reward.txt; else echo 0 > /logs/verifier/reward.txt; fi"#
    );
    write_task(&task, &allowlist_toml(), solve, &test);
    let r = run_task(&task, "oracle", &[]);
    assert_eq!(r.code(), 0, "stderr:\n{}", r.stderr());
    assert_rewarded(&r);
}

#[test]
fn an_agent_cannot_get_around_the_allowlist() {
    let ip = resolve(UNLISTED);
    let listed_ip = resolve(LISTED);
    let tmp = tempfile::tempdir().unwrap();
    let task = tmp.path().join("escape");
    // The "agent" (the oracle's script) tries every way out it can think of and records what
    // it got; the verifier rewards 1 only if every attempt failed.
    let solve = format!(
        r#"{{
echo "direct-ip-443 $(direct {ip} 443)"
echo "direct-ip-80 $(direct {ip} 80)"
echo "direct-listed-ip-80 $(direct {listed_ip} 80)"
echo "direct-dns-8.8.8.8 $(direct 8.8.8.8 53)"
echo "dns-unlisted $(getent hosts {UNLISTED} >/dev/null && echo resolved || echo none)"
echo "connect-ip-literal $(via_proxy 'CONNECT {ip}:443 HTTP/1.1\r\n\r\n')"
echo "get-ip-literal $(via_proxy 'GET http://{ip}/simple/ HTTP/1.1\r\nHost: {UNLISTED}\r\n\r\n')"
echo "host-header-swap $(via_proxy 'GET http://{LISTED}/simple/ HTTP/1.1\r\nHost: {UNLISTED}\r\n\r\n' )"
echo "suffix-trick $(via_proxy 'GET http://{LISTED}.{UNLISTED}/ HTTP/1.1\r\n\r\n')"
echo "userinfo-trick $(via_proxy 'GET http://{LISTED}@{UNLISTED}/ HTTP/1.1\r\n\r\n')"
echo "connect-then-http $(status_lines 'CONNECT {LISTED}:80 HTTP/1.1\r\n\r\nGET /simple/ HTTP/1.1\r\nHost: {UNLISTED}\r\n\r\n')"
echo "origin-form $(via_proxy 'GET /simple/ HTTP/1.1\r\nHost: {UNLISTED}\r\n\r\n')"
}} > /app/attempts.txt 2>&1"#
    );
    // A tunnel to the listed host whose first bytes are HTTP for another host is closed right
    // after "200 Connection established": its first line is that 200, with nothing after.
    let test = format!(
        r#"fail=0
: > /logs/verifier/checks.txt
cp /app/attempts.txt /logs/verifier/attempts.txt
get() {{ grep "^$1 " /app/attempts.txt | cut -d' ' -f2-; }}
check direct-ip-443 "$(get direct-ip-443)" closed
check direct-ip-80 "$(get direct-ip-80)" closed
check direct-listed-ip-80 "$(get direct-listed-ip-80)" closed
check direct-dns "$(get direct-dns-8.8.8.8)" closed
check dns-unlisted "$(get dns-unlisted)" none
check connect-ip-literal "$(get connect-ip-literal)" 403
check get-ip-literal "$(get get-ip-literal)" 403
check suffix-trick "$(get suffix-trick)" 403
check userinfo-trick "$(get userinfo-trick)" "HTTP/1.1 400 Bad Request"
check origin-form "$(get origin-form)" "HTTP/1.1 400 Bad Request"
check connect-then-http "$(get connect-then-http)" 1
# The Host header is rewritten to the listed host: whatever answers, it is {LISTED}.
check host-header-swap "$(get host-header-swap | grep -c pypi)" 0
if [ "$fail" = 0 ]; then echo 1 > /logs/verifier/reward.txt; else echo 0 > /logs/verifier/reward.txt; fi"#
    );
    write_task(&task, &allowlist_toml(), &solve, &test);
    let r = run_task(&task, "oracle", &[]);
    assert_eq!(r.code(), 0, "stderr:\n{}", r.stderr());
    assert_rewarded(&r);
}
