"""A local ``rollout serve`` for the length of a ``with`` block."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from . import _errors as errors
from ._async import AsyncClient
from ._client import Client, Session

PathLike = Union[str, "os.PathLike[str]"]


def find_binary() -> str:
    """The ``rollout`` binary: the one this wheel installed, else $ROLLOUT_BIN, else PATH."""
    exe = "rollout" + (".exe" if sys.platform == "win32" else "")
    candidates = []
    for scheme in (None, f"{os.name}_user"):
        try:
            d = sysconfig.get_path("scripts", scheme) if scheme else sysconfig.get_path("scripts")
        except KeyError:
            continue
        if d:
            candidates.append(os.path.join(d, exe))
    # The scripts directory next to this interpreter (a venv not activated).
    candidates.append(os.path.join(os.path.dirname(sys.executable), exe))
    for c in candidates:
        if os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    env = os.environ.get("ROLLOUT_BIN")
    if env:
        if os.path.isfile(env) and os.access(env, os.X_OK):
            return env
        raise errors.BinaryNotFound(f"ROLLOUT_BIN={env!r} is not an executable file")
    found = shutil.which("rollout")
    if found:
        return found
    raise errors.BinaryNotFound(
        "no rollout binary: install the rollout wheel, set ROLLOUT_BIN, or put rollout on PATH"
    )


_LISTENING = re.compile(r"listening on (http://\S+)")


class Server:
    """Start ``rollout serve`` on a free loopback port; stop it (SIGTERM: sessions closed,
    containers removed) on exit.

    ``warm_pool={task_dir: n}`` keeps ``n`` started environments of each task ready;
    ``allow_local_paths`` lists directories whose tasks sessions may open (the warm pools'
    tasks may always be opened). ``token`` turns on ``--auth token`` with that token.
    ``args`` are passed to ``rollout serve`` as they are (``["--session-idle-ttl", "30s"]``).
    """

    def __init__(
        self,
        warm_pool: Optional[Mapping[PathLike, int]] = None,
        allow_local_paths: Sequence[PathLike] = (),
        data_dir: Optional[PathLike] = None,
        token: Optional[str] = None,
        args: Sequence[str] = (),
        binary: Optional[str] = None,
        port: int = 0,
        start_timeout: float = 120.0,
        log: Optional[PathLike] = None,
    ):
        self.binary = binary or find_binary()
        self.warm_pool = dict(warm_pool or {})
        self.allow_local_paths = [os.fspath(p) for p in allow_local_paths]
        self._own_data = data_dir is None
        self.data_dir = os.fspath(data_dir) if data_dir is not None else None
        self.token = token
        self.args = list(args)
        self.port = port
        self.start_timeout = start_timeout
        self.log_path = os.fspath(log) if log is not None else None
        self.url: Optional[str] = None
        self.proc: Optional[subprocess.Popen] = None
        self._tmp: Optional[tempfile.TemporaryDirectory] = None
        self._lines: List[str] = []

    def command(self) -> List[str]:
        cmd = [self.binary, "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        cmd += ["--data-dir", str(self.data_dir)]
        for task, n in self.warm_pool.items():
            cmd += ["--warm-pool", f"{os.fspath(task)}={int(n)}"]
        for p in self.allow_local_paths:
            cmd += ["--allow-local-paths", p]
        if self.token:
            cmd += ["--auth", "token"]
        return cmd + self.args

    def start(self) -> "Server":
        if self.data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="rollout-serve-")
            self.data_dir = self._tmp.name
        env = dict(os.environ)
        if self.token:
            env["ROLLOUT_SERVE_TOKEN_HASHES"] = _blake3_hex(self.token)
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            self.command(),
            stdout=subprocess.PIPE,
            stderr=out,
            env=env,
            start_new_session=True,
        )
        deadline = time.monotonic() + self.start_timeout
        assert self.proc.stdout is not None
        found: Dict[str, str] = {}

        def read() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for raw in self.proc.stdout:
                line = raw.decode("utf-8", "replace").rstrip()
                self._lines.append(line)
                m = _LISTENING.search(line)
                if m and "url" not in found:
                    found["url"] = m.group(1)

        t = threading.Thread(target=read, daemon=True)
        t.start()
        while "url" not in found:
            if self.proc.poll() is not None:
                raise errors.ServerStartError(
                    f"rollout serve exited with {self.proc.returncode}: {' | '.join(self._lines[-5:])}"
                    + (f" (log: {self.log_path})" if self.log_path else "")
                )
            if time.monotonic() > deadline:
                self.stop()
                raise errors.ServerStartError(f"rollout serve did not listen within {self.start_timeout} s")
            time.sleep(0.02)
        self.url = found["url"]
        return self

    def client(self) -> Client:
        if self.url is None:
            raise errors.ServerStartError("the server is not started")
        return Client(self.url, token=self.token)

    def async_client(self, **kw: Any) -> AsyncClient:
        if self.url is None:
            raise errors.ServerStartError("the server is not started")
        return AsyncClient(self.url, token=self.token, **kw)

    def open(self, task: str, **kw: Any) -> Session:
        """Open a session with a new client (see :meth:`Client.open`)."""
        return self.client().open(task, **kw)

    def wait_pools_ready(self, timeout: float = 300.0) -> None:
        """Wait until every warm pool holds its environments (raises on timeout)."""
        c = self.client()
        deadline = time.monotonic() + timeout
        while True:
            pools = c.pools()
            if pools and all(p["ready"] >= p["size"] for p in pools):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"warm pools not ready after {timeout} s: {pools}")
            time.sleep(0.1)

    def stop(self, timeout: float = 60.0) -> Optional[int]:
        """SIGTERM, then wait (SIGKILL after ``timeout``)."""
        code = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                code = self.proc.wait()
        elif self.proc is not None:
            code = self.proc.returncode
        return code

    def kill(self) -> None:
        """SIGKILL the server (no cleanup: for tests of crash recovery)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()


def _blake3_hex(token: str) -> str:
    """BLAKE3 of the token (Python's hashlib has no BLAKE3: the ``blake3`` package)."""
    try:
        import blake3  # type: ignore
    except ImportError as e:
        raise errors.ServerStartError(
            "Server(token=...) needs the token's BLAKE3 hash: `pip install blake3`, or start rollout serve yourself with --tokens-file"
        ) from e
    return blake3.blake3(token.encode()).hexdigest()
