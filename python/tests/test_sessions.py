"""Sessions against the real server and engine."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

import rollout
from conftest import ANSWER_TEST, container_exists, containers_labelled, write_task


def test_the_package_finds_its_binary_and_version():
    assert rollout.find_binary()
    assert rollout.__version__


def test_a_solved_task_grades_1_and_an_unsolved_one_0(client, tasks):
    with client.open(str(tasks / "answer")) as s:
        assert "answer.txt" in s.instruction
        r = s.exec("echo done > /app/answer.txt && cat /app/answer.txt")
        assert r.exit_code == 0 and r.stdout.strip() == "done"
        assert s.grade() == {"reward": 1.0}
    with client.open(str(tasks / "answer")) as s:
        r = s.exec("echo wrong > /app/answer.txt")
        assert r.exit_code == 0
        rewards = s.grade()
        assert rewards.reward == 0.0


def test_a_graded_session_takes_no_more_commands_and_grades_the_same(client, tasks):
    with client.open(str(tasks / "answer")) as s:
        s.exec("echo done > /app/answer.txt")
        assert s.grade().reward == 1.0
        with pytest.raises(rollout.SessionGradedError):
            s.exec("cat /tests/test.sh")
        assert s.grade().reward == 1.0


def test_processes_the_session_left_are_killed_before_grading(client, tasks):
    # A process left behind that keeps writing a winning reward: it must be gone when the
    # verifier runs, so the unsolved task still grades 0.
    with client.open(str(tasks / "answer")) as s:
        r = s.exec(
            "nohup sh -c 'while :; do mkdir -p /logs/verifier; echo 1 > /logs/verifier/reward.txt; sleep 0.005; done' >/dev/null 2>&1 & echo started",
            timeout=10,
        )
        assert r.stdout.strip() == "started"
        # (rollout's exec may already end a command's leftovers; either way none may score)
        assert s.grade().reward == 0.0


def test_several_reward_keys_and_a_missing_reward(client, tasks):
    with client.open(str(tasks / "multi")) as s:
        s.exec("touch /app/a")
        assert s.grade() == {"reward": 1.0, "style": 0.5}
    with client.open(str(tasks / "noreward")) as s:
        with pytest.raises(rollout.GradingError) as e:
            s.grade()
        assert e.value.code == "verifier_reward_missing"


def test_exec_options_and_timeout(client, tasks):
    with client.open(str(tasks / "answer")) as s:
        r = s.exec(["sh", "-c", 'echo "$FOO $(pwd) $(id -u)"; echo err >&2; exit 7'], env={"FOO": "bar"}, cwd="/tmp")
        assert r.exit_code == 7
        assert r.stdout.strip() == "bar /tmp 0"
        assert r.stderr.strip() == "err"
        r = s.exec("id -un", user="nobody")
        assert r.stdout.strip() == "nobody"
        t0 = time.monotonic()
        r = s.exec("sleep 30", timeout=1)
        assert r.timed_out and r.exit_code is None
        assert time.monotonic() - t0 < 20
        r = s.exec("head -c 5000000 /dev/zero | tr '\\0' x", max_output_bytes=1000)
        assert len(r.stdout) == 1000 and r.stdout_truncated


def test_upload_and_download(client, tasks, tmp_path):
    with client.open(str(tasks / "answer")) as s:
        s.upload(b"done\n", "/app/answer.txt")
        assert s.exec("cat /app/answer.txt").stdout == "done\n"
        local = tmp_path / "script.sh"
        local.write_text("#!/bin/sh\necho from-script\n")
        local.chmod(0o755)
        s.upload(local, "/opt/new/dir/script.sh")
        assert s.exec("/opt/new/dir/script.sh").stdout == "from-script\n"
        s.exec("mkdir -p /app/out/sub && echo a > /app/out/a.txt && echo b > /app/out/sub/b.txt && ln -s /etc/passwd /app/out/link")
        assert s.download("/app/answer.txt") == b"done\n"
        s.download("/app/out", tmp_path / "out")
        assert (tmp_path / "out" / "a.txt").read_text() == "a\n"
        assert (tmp_path / "out" / "sub" / "b.txt").read_text() == "b\n"
        assert not (tmp_path / "out" / "link").exists()  # links are never materialised
        with pytest.raises(rollout.NotFoundError):
            s.download("/nope")
        with pytest.raises(rollout.RequestError):
            s.upload(b"x", "/app/../etc/x")
        assert s.grade().reward == 1.0


def test_close_removes_the_container_and_records_the_trial(client, tasks):
    s = client.open(str(tasks / "answer"))
    cid = s.info["container_id"]
    assert container_exists(cid)
    s.exec("echo done > /app/answer.txt")
    s.grade()
    closed = s.close()
    assert closed["reward"] == 1.0
    assert not container_exists(cid)
    with pytest.raises(rollout.SessionClosedError):
        s._client._http.request("GET", f"/api/v1/sessions/{s.id}")
    job = client.job(s.id)
    assert job["status"] == "completed"
    assert job["n_trials"] == 1 and job["mean_reward"] == 1.0


def test_the_trajectory_is_recorded(client, tasks, server):
    s = client.open(str(tasks / "answer"))
    s.exec("echo step-one")
    s.exec("echo done > /app/answer.txt")
    s.grade()
    s.close()
    trial = client._http.request("GET", f"/api/v1/jobs/{s.id}/trials")["trials"][0]
    data, _ = client._http.request(
        "GET", f"/api/v1/jobs/{s.id}/trials/{trial['name']}/files/agent/trajectory.json", expect_json=False
    )
    traj = json.loads(data)
    kinds = [st["type"] for st in traj["steps"]]
    assert kinds == ["exec", "exec", "grade"]
    assert traj["steps"][0]["stdout"] == "step-one\n"
    assert trial["reward"] == 1.0


def test_step_takes_harbor_tool_calls(client, tasks):
    with client.open(str(tasks / "answer")) as s:
        out = s.step([
            rollout.ToolInput(name="bash", arguments={"command": "echo done > /app/answer.txt; echo ok"}),
            {"name": "read_file", "arguments": {"path": "/app/answer.txt"}},
            {"name": "bash", "arguments": {"command": "exit 4"}},
            {"name": "teleport", "arguments": {}},
        ])
        assert [o.isError for o in out] == [False, False, True, True]
        assert out[0].content[0].text.strip() == "ok"
        assert out[1].text == "done\n"
        assert s.grade().rewards["reward"] == 1.0


def test_warm_pool_hands_out_distinct_environments_and_refills(server, client, tasks):
    server.wait_pools_ready(timeout=600)
    a = client.open("answer")
    b = client.open("answer")
    try:
        assert a.warm and b.warm
        assert a.info["container_id"] != b.info["container_id"]
        # One session's work is not the other's.
        a.exec("echo done > /app/answer.txt")
        assert b.exec("cat /app/answer.txt").exit_code != 0
        assert b.grade().reward == 0.0
        assert a.grade().reward == 1.0
    finally:
        a.close()
        b.close()
    server.wait_pools_ready(timeout=600)
    pool = [p for p in client.pools() if p["task_name"] == "answer"][0]
    assert pool["ready"] == 2 and pool["taken"] >= 2


def test_pool_via_the_api(server, client, tasks):
    p = client.warm_pool(str(tasks / "multi"), 1)
    assert p["size"] == 1
    deadline = time.monotonic() + 600
    while [x for x in client.pools() if x["task_name"] == "multi"][0]["ready"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    with client.open(str(tasks / "multi")) as s:
        assert s.warm
    client.warm_pool(str(tasks / "multi"), 0)


def test_paths_outside_the_allowed_roots_are_refused(client, tmp_path):
    other = write_task(tmp_path, "elsewhere", ANSWER_TEST)
    with pytest.raises(rollout.RequestError) as e:
        client.open(str(other))
    assert e.value.code == "source_refused"
    with pytest.raises(rollout.RequestError):
        client.open("/etc/../etc")


def test_async_sessions_run_concurrently(server, tasks):
    async def episode(c: rollout.AsyncClient, solve: bool) -> float:
        async with await c.open(str(tasks / "answer")) as s:
            if solve:
                await s.exec("echo done > /app/answer.txt")
            return (await s.grade()).reward

    async def main():
        async with server.async_client() as c:
            return await asyncio.gather(*(episode(c, i % 2 == 0) for i in range(4)))

    assert asyncio.run(main()) == [1.0, 0.0, 1.0, 0.0]


def _tar_gz(entries) -> bytes:
    """A tar.gz of (name, TarInfo type, data or link target) entries, built here."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, kind, data in entries:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.REGTYPE:
                info.size = len(data)
                info.mode = 0o755
                tar.addfile(info, io.BytesIO(data))
            else:
                info.linkname = data or ""
                tar.addfile(info)
    return buf.getvalue()


def test_a_session_opens_on_an_uploaded_task_directory_or_archive(client, tasks, tmp_path):
    # A task that exists only on the client: packed from its directory, or sent as a tar.gz.
    mine = write_task(tmp_path / "mine", "uploaded", ANSWER_TEST, instruction="Only here: write done.\n")
    with client.open(archive=mine) as s:
        assert s.instruction == "Only here: write done.\n"
        assert s.info["task_name"] == "uploaded"
        s.exec("echo done > /app/answer.txt")
        assert s.grade().reward == 1.0
    import shutil

    tgz = shutil.make_archive(str(tmp_path / "ds"), "gztar", root_dir=tasks)
    with pytest.raises(rollout.RequestError) as e:
        client.open(archive=tgz)  # a directory of three tasks, none named
    assert "exactly one" in e.value.message, e.value.message
    with client.open("multi", archive=Path(tgz)) as s:
        assert s.info["task_name"] == "multi"
        s.exec("touch /app/a")
        assert s.grade() == {"reward": 1.0, "style": 0.5}


def test_a_hostile_task_archive_is_refused_with_the_reason(client, tmp_path):
    import tarfile

    ok = [
        ("t/task.toml", tarfile.REGTYPE, b'version = "1.0"\n'),
        ("t/instruction.md", tarfile.REGTYPE, b"x\n"),
        ("t/environment/Dockerfile", tarfile.REGTYPE, b"FROM debian:bookworm-slim\n"),
        ("t/tests/test.sh", tarfile.REGTYPE, b"#!/bin/bash\necho 1 > /logs/verifier/reward.txt\n"),
    ]
    cases = {
        "escapes the destination": ok + [("t/../../evil.sh", tarfile.REGTYPE, b"x")],
        "points outside the destination": ok + [("t/tests/passwd", tarfile.SYMTYPE, "/etc/passwd")],
        "is a fifo": ok + [("t/tests/pipe", tarfile.FIFOTYPE, None)],
        "character device": ok + [("t/tests/tty", tarfile.CHRTYPE, None)],
    }
    before = {s["id"] for s in client.sessions()}
    for says, entries in cases.items():
        with pytest.raises(rollout.RequestError) as e:
            client.open(archive=_tar_gz(entries))
        assert e.value.code == "invalid_archive", e.value
        assert says in e.value.message, e.value.message
    # A link on the client side is refused before anything is sent.
    d = tmp_path / "linked"
    write_task(tmp_path, "linked", ANSWER_TEST)
    (d / "tests" / "secret").symlink_to("/etc/passwd")
    with pytest.raises(ValueError, match="not a regular file"):
        client.open(archive=d)
    assert {s["id"] for s in client.sessions()} == before
