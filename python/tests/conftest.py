"""Fixtures: tasks written here, and a real `rollout serve` on the local Docker engine.

The tests need a running Docker engine and the local image debian:bookworm-slim; without them
they fail loudly (they never skip).
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
import uuid
from pathlib import Path

import pytest

import rollout

BASE_IMAGE = "debian:bookworm-slim"


def docker(*args: str, timeout: float = 60) -> str:
    out = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"docker {' '.join(args)}: {out.stderr}"
    return out.stdout


def containers_labelled(key: str, value: str) -> list[str]:
    """Ids of containers (running or not) carrying label key=value."""
    return docker("ps", "-aq", "--filter", f"label={key}={value}").split()


def container_exists(cid: str) -> bool:
    out = subprocess.run(["docker", "inspect", cid], capture_output=True, timeout=60)
    return out.returncode == 0


@pytest.fixture(scope="session", autouse=True)
def require_docker() -> None:
    out = subprocess.run(["docker", "image", "inspect", BASE_IMAGE], capture_output=True, timeout=60)
    assert out.returncode == 0, (
        f"these tests need a running Docker engine and the local image {BASE_IMAGE}: run scripts/setup"
    )


def write_task(root: Path, name: str, test_sh: str, instruction: str = "", task_toml: str = "") -> Path:
    """A Harbor-format task: FROM the local base image, a verifier script `test_sh`."""
    d = root / name
    (d / "environment").mkdir(parents=True)
    (d / "tests").mkdir()
    # A label makes each test run's image its own; the base is the same local image.
    (d / "environment" / "Dockerfile").write_text(
        f"FROM {BASE_IMAGE}\nWORKDIR /app\nLABEL io.rollout.test=python-sessions\n"
    )
    (d / "instruction.md").write_text(instruction or f"Task {name}: write `done` into /app/answer.txt.\n")
    (d / "task.toml").write_text(
        task_toml
        or textwrap.dedent(
            """
            version = "1.0"
            [verifier]
            timeout_sec = 60
            [agent]
            timeout_sec = 600
            [environment]
            build_timeout_sec = 300
            cpus = 1
            memory_mb = 512
            """
        )
    )
    (d / "tests" / "test.sh").write_text(test_sh)
    return d


ANSWER_TEST = """#!/bin/bash
if [ "$(cat /app/answer.txt 2>/dev/null)" = "done" ]; then echo 1 > /logs/verifier/reward.txt; else echo 0 > /logs/verifier/reward.txt; fi
"""


@pytest.fixture(scope="session")
def tasks(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tasks")
    write_task(root, "answer", ANSWER_TEST)
    # Sleeps a little so that a test can see a grade waiting on the verifier.
    write_task(
        root,
        "multi",
        """#!/bin/bash
cat > /logs/verifier/reward.json <<J
{"reward": $( [ -f /app/a ] && echo 1 || echo 0 ), "style": 0.5}
J
""",
    )
    write_task(root, "noreward", "#!/bin/bash\necho no reward written; exit 3\n")
    return root


@pytest.fixture(scope="session")
def server(tasks: Path, tmp_path_factory):
    data = tmp_path_factory.mktemp("serve-data")
    log = tmp_path_factory.mktemp("logs") / "serve.log"
    with rollout.Server(
        allow_local_paths=[tasks],
        warm_pool={tasks / "answer": 2},
        data_dir=data,
        args=["--session-idle-ttl", "5m"],
        log=log,
    ) as s:
        s.wait_pools_ready(timeout=600)
        yield s


@pytest.fixture()
def client(server):
    with server.client() as c:
        yield c
