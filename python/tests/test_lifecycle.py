"""Server-level behaviour: TTLs, crash recovery, auth, limits. Each test starts its own server."""

from __future__ import annotations

import time

import pytest

import rollout
from conftest import container_exists, containers_labelled


def wait_until(what: str, timeout: float, cond) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def server_id(data_dir) -> str:
    return (data_dir / "server-id").read_text().strip()


def test_an_idle_session_expires_and_its_container_goes(tasks, tmp_path):
    with rollout.Server(
        allow_local_paths=[tasks], data_dir=tmp_path / "d", args=["--session-idle-ttl", "2s"]
    ) as server:
        c = server.client()
        s = c.open(str(tasks / "answer"))
        cid = s.info["container_id"]
        # A command longer than the TTL does not expire its session.
        assert s.exec("sleep 3; echo alive", timeout=10).stdout.strip() == "alive"
        wait_until("the session to expire", 60, lambda: not container_exists(cid))
        with pytest.raises(rollout.SessionExpiredError):
            s.exec("true")
        trial = c._http.request("GET", f"/api/v1/jobs/{s.id}/trials")["trials"][0]
        assert "expired" in (trial["error"] or ""), trial


def test_kill_9_then_restart_leaves_no_container(tasks, tmp_path):
    data = tmp_path / "d"
    server = rollout.Server(allow_local_paths=[tasks], warm_pool={tasks / "answer": 1}, data_dir=data)
    server.start()
    try:
        server.wait_pools_ready(timeout=600)
        s = server.client().open(str(tasks / "multi"))
        sid = server_id(data)
        assert len(containers_labelled("io.rollout.server", sid)) == 2  # the session + the pool's
        server.kill()
        assert len(containers_labelled("io.rollout.server", sid)) == 2  # SIGKILL: nothing cleaned
    finally:
        server.kill()
    # The same data directory: the restarted server removes what its predecessor left.
    with rollout.Server(allow_local_paths=[tasks], data_dir=data) as again:
        assert containers_labelled("io.rollout.server", sid) == []
        job = again.client().job(s.id)
        assert job["status"] == "interrupted"


def test_sigterm_removes_every_session_and_pool_container(tasks, tmp_path):
    data = tmp_path / "d"
    with rollout.Server(allow_local_paths=[tasks], warm_pool={tasks / "answer": 1}, data_dir=data) as server:
        server.wait_pools_ready(timeout=600)
        server.client().open(str(tasks / "answer"))
        sid = server_id(data)
        assert containers_labelled("io.rollout.server", sid)
    assert containers_labelled("io.rollout.server", sid) == []


def test_auth_is_required_and_sessions_are_per_token(tasks, tmp_path):
    with rollout.Server(
        allow_local_paths=[tasks], data_dir=tmp_path / "d", token="s3cret-token",
        args=["--max-sessions-per-token", "1"],
    ) as server:
        anon = rollout.Client(server.url, token="")
        with pytest.raises(rollout.AuthenticationError):
            anon.open(str(tasks / "answer"))
        with pytest.raises(rollout.AuthenticationError):
            rollout.Client(server.url, token="wrong").sessions()
        c = server.client()
        s = c.open(str(tasks / "answer"))
        with pytest.raises(rollout.LimitError) as e:
            c.open(str(tasks / "answer"))
        assert e.value.code == "too_many_sessions"
        with pytest.raises(rollout.AuthenticationError):
            anon._http.request("POST", f"/api/v1/sessions/{s.id}/exec", {"command": "true"})
        s.close()
        c.open(str(tasks / "answer")).close()
