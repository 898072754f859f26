//! The compose tasks the Docker and Kubernetes tests share: an HTTP sidecar built FROM
//! debian:bookworm-slim (a few lines of the base image's perl, so nothing is downloaded) that
//! `main` waits for with service_healthy, and a verifier that checks what it answered.

use std::path::{Path, PathBuf};

/// A tiny HTTP server: answers every request with `$TOKEN`.
pub const SERVER_PL: &str = r#"use IO::Socket::INET;
my $s = IO::Socket::INET->new(LocalPort => 8080, Listen => 16, ReuseAddr => 1) or die "listen: $!";
while (my $c = $s->accept) {
    my $line = <$c>;
    while (my $h = <$c>) { last if $h =~ /^\r?\n$/; }
    print $c "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n$ENV{TOKEN}\n";
    close $c;
}
"#;

pub const FETCH_SH: &str = r#"#!/bin/bash
# Reference solution: ask the api service for the token.
set -euo pipefail
perl -MIO::Socket::INET -e '
  my $c = IO::Socket::INET->new(PeerAddr => "api:8080", Timeout => 5) or die "connect: $!";
  print $c "GET / HTTP/1.0\r\nHost: api\r\n\r\n";
  my $body = 0;
  while (my $l = <$c>) { if ($body) { print $l } elsif ($l =~ /^\r?\n$/) { $body = 1 } }
' > /app/answer.txt
"#;

pub fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, text).unwrap();
    if rel.ends_with(".sh") {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// A task whose verifier gives 1 when /app/answer.txt holds `expected`.
pub fn task(root: &Path, name: &str, compose: &str, solve: &str, expected: &str) -> PathBuf {
    let t = root.join(name);
    write(
        &t,
        "instruction.md",
        "Write the answer to /app/answer.txt.\n",
    );
    write(
        &t,
        "task.toml",
        "version = \"1.0\"\n[agent]\ntimeout_sec = 120.0\n[verifier]\ntimeout_sec = 60.0\n[environment]\nworkdir = \"/app\"\nmemory_mb = 512\n",
    );
    write(
        &t,
        "environment/Dockerfile",
        "FROM debian:bookworm-slim\nWORKDIR /app\n",
    );
    write(&t, "environment/docker-compose.yaml", compose);
    write(&t, "solution/solve.sh", solve);
    write(
        &t,
        "tests/test.sh",
        &format!(
            "#!/bin/bash\necho 0 > /logs/verifier/reward.txt\n[ \"$(cat /app/answer.txt 2>/dev/null)\" = '{expected}' ] && echo 1 > /logs/verifier/reward.txt\nexit 0\n"
        ),
    );
    t
}

/// The HTTP sidecar task (api built from its own Dockerfile, healthchecked, `main` waits for
/// service_healthy). `solve_prefix` runs before the fetch (the cleanup tests make it slow).
pub fn http_task(root: &Path, name: &str, solve_prefix: &str) -> PathBuf {
    let compose = r#"services:
  main:
    depends_on:
      api:
        condition: service_healthy
  api:
    build:
      context: ./api
    expose:
      - "8080"
    environment:
      - TOKEN=${ROLLOUT_TEST_UNSET_TOKEN:-tok-4711}
    volumes:
      - cache:/cache
    healthcheck:
      test: ["CMD", "perl", "-MIO::Socket::INET", "-e", "IO::Socket::INET->new(PeerAddr => 'localhost:8080') or exit 1"]
      interval: 1s
      timeout: 5s
      retries: 30
volumes:
  cache:
"#;
    let solve = FETCH_SH.replacen(
        "set -euo pipefail\n",
        &format!("set -euo pipefail\n{solve_prefix}\n"),
        1,
    );
    let t = task(root, name, compose, &solve, "tok-4711");
    write(
        &t,
        "environment/api/Dockerfile",
        "FROM debian:bookworm-slim\nCOPY server.pl /server.pl\nCMD [\"perl\", \"/server.pl\"]\n",
    );
    write(&t, "environment/api/server.pl", SERVER_PL);
    t
}
