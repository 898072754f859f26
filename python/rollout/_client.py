"""Synchronous client of ``rollout serve``'s session API (standard library HTTP only)."""

from __future__ import annotations

import http.client
import json
import os
import threading
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

from . import _errors as errors

Command = Union[str, Sequence[str]]


@dataclass
class ExecResult:
    """How a command ended. ``exit_code`` is None when it was killed at its timeout."""

    exit_code: Optional[int]
    stdout: str
    stderr: str
    timed_out: bool = False
    output_limit_exceeded: bool = False
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    @classmethod
    def _of(cls, d: Mapping[str, Any]) -> "ExecResult":
        return cls(
            exit_code=d.get("exit_code"),
            stdout=d.get("stdout", ""),
            stderr=d.get("stderr", ""),
            timed_out=bool(d.get("timed_out")),
            output_limit_exceeded=bool(d.get("output_limit_exceeded")),
            stdout_truncated=bool(d.get("stdout_truncated")),
            stderr_truncated=bool(d.get("stderr_truncated")),
            seconds=float(d.get("seconds") or 0.0),
        )


class Rewards(dict):
    """The rewards of a graded session (``{"reward": 1.0}``): a dict, with ``.rewards`` (itself,
    as Harbor's ``grade()`` result has) and ``.reward`` (the main reward)."""

    @property
    def rewards(self) -> Dict[str, float]:
        return self

    @property
    def reward(self) -> Optional[float]:
        if "reward" in self:
            return self["reward"]
        if len(self) == 1:
            return next(iter(self.values()))
        return None


# Harbor's RL interface (``harbor.rl``): ``env.step([ToolInput(name="bash", arguments={...})])``
# returns one output per call with ``content`` (text items) and ``isError``.


@dataclass
class ToolInput:
    name: str
    arguments: Dict[str, Any] = field(default_factory=dict)


@dataclass
class TextContent:
    text: str
    type: str = "text"


@dataclass
class ToolOutput:
    content: List[TextContent]
    isError: bool = False

    @property
    def text(self) -> str:
        return "\n".join(c.text for c in self.content)


def _tool_call(call: Any) -> ToolInput:
    if isinstance(call, ToolInput):
        return call
    if isinstance(call, Mapping):
        args = call.get("arguments", call.get("input", {}))
        if isinstance(args, str):
            args = json.loads(args or "{}")
        return ToolInput(name=call["name"], arguments=dict(args))
    name = getattr(call, "name", None)
    if name is None:
        raise TypeError(f"a tool call needs a name and arguments, got {call!r}")
    return ToolInput(name=name, arguments=dict(getattr(call, "arguments", {}) or {}))


#: Tools :meth:`Session.step` understands.
TOOLS = ("bash", "read_file", "write_file")


class _Http:
    """One keep-alive connection per thread to the server."""

    def __init__(self, url: str, token: Optional[str], timeout: float):
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("http", "https"):
            raise ValueError(f"{url!r}: expected an http(s) URL")
        self.scheme = u.scheme
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port
        self.base = u.path.rstrip("/")
        self.token = token
        self.timeout = timeout
        self._local = threading.local()

    def _conn(self) -> http.client.HTTPConnection:
        c = getattr(self._local, "conn", None)
        if c is None:
            cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
            c = cls(self.host, self.port, timeout=self.timeout)
            self._local.conn = c
        return c

    def close(self) -> None:
        c = getattr(self._local, "conn", None)
        if c is not None:
            c.close()
            self._local.conn = None

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        raw: Optional[bytes] = None,
        timeout: Optional[float] = None,
        expect_json: bool = True,
        content_type: str = "application/octet-stream",
    ) -> Any:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data: Optional[bytes] = None
        if raw is not None:
            data = raw
            headers["Content-Type"] = content_type
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        url = self.base + path
        for attempt in (0, 1):
            conn = self._conn()
            conn.timeout = timeout or self.timeout
            if conn.sock is not None:
                conn.sock.settimeout(conn.timeout)
            try:
                conn.request(method, url, body=data, headers=headers)
                resp = conn.getresponse()
                payload = resp.read()
                break
            except (ConnectionError, http.client.BadStatusLine, http.client.CannotSendRequest) as e:
                # A keep-alive connection the server closed: retry once on a new one.
                self.close()
                if attempt == 1:
                    raise errors.ConnectionFailed(f"{method} {path}: {e}") from e
            except OSError as e:
                self.close()
                raise errors.ConnectionFailed(f"{method} {path}: {e}") from e
        if resp.status >= 400:
            try:
                parsed = json.loads(payload or b"null")
            except ValueError:
                parsed = payload.decode("utf-8", "replace")
            raise errors.from_response(resp.status, parsed, path)
        if not expect_json:
            return payload, dict(resp.getheaders())
        return json.loads(payload or b"null")


def _archive_bytes(archive: Union[str, bytes, os.PathLike]) -> "tuple[bytes, str]":
    """An archive to upload and its content type: a directory is packed as tar.gz (regular
    files and directories only: a link or special file is refused, never followed)."""
    if isinstance(archive, (bytes, bytearray)):
        return bytes(archive), "application/octet-stream"
    p = os.fspath(archive)
    if os.path.isdir(p):
        import io
        import tarfile

        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            root = os.path.basename(os.path.normpath(p)) or "task"
            for dirpath, dirnames, filenames in os.walk(p):
                dirnames.sort()
                rel = os.path.relpath(dirpath, p)
                for name in sorted(filenames) + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
                    full = os.path.join(dirpath, name)
                    if os.path.islink(full) or not os.path.isfile(full):
                        raise ValueError(
                            f"{full}: not a regular file (a link or a special file); a task archive holds "
                            "regular files and directories only: replace it with the file it stands for"
                        )
                    arc = os.path.normpath(os.path.join(root, rel, name))
                    tar.add(full, arcname=arc, recursive=False)
        return buf.getvalue(), "application/gzip"
    with open(p, "rb") as f:
        data = f.read()
    if p.endswith(".zip"):
        return data, "application/zip"
    if p.endswith(".tar"):
        return data, "application/x-tar"
    return data, "application/gzip"


def _quote_path(path: str) -> str:
    return urllib.parse.quote(path.lstrip("/"), safe="/")


class Session:
    """One sandbox of a task, driven step by step. A context manager: leaving it closes the
    session (its container is removed; its trial is recorded)."""

    def __init__(self, client: "Client", info: Mapping[str, Any]):
        self._client = client
        self.info = dict(info)
        self.id: str = info["id"]
        self.instruction: str = info.get("instruction", "")
        self.task_name: str = info.get("task_name", "")
        self.warm: bool = bool(info.get("warm"))
        self.closed = False

    def __repr__(self) -> str:
        return f"Session(id={self.id!r}, task={self.task_name!r})"

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _path(self, tail: str = "") -> str:
        return f"/api/v1/sessions/{self.id}{tail}"

    def get_prompt(self) -> str:
        """The task's instruction (Harbor's ``RLEnvironment.get_prompt``)."""
        return self.instruction

    def exec(
        self,
        command: Command,
        timeout: float = 60.0,
        user: Optional[str] = None,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        stdin: Optional[str] = None,
        max_output_bytes: Optional[int] = None,
    ) -> ExecResult:
        """Run ``command`` (a shell script run with ``bash -c``, or an argv list)."""
        body: Dict[str, Any] = {
            "command": command if isinstance(command, str) else list(command),
            "timeout_sec": timeout,
        }
        if user is not None:
            body["user"] = user
        if env:
            body["env"] = dict(env)
        if cwd is not None:
            body["cwd"] = cwd
        if stdin is not None:
            body["stdin"] = stdin
        if max_output_bytes is not None:
            body["max_output_bytes"] = max_output_bytes
        d = self._client._http.request("POST", self._path("/exec"), body, timeout=timeout + 30)
        return ExecResult._of(d)

    def upload(self, source: Union[str, bytes, os.PathLike], dest: str, mode: Optional[int] = None) -> None:
        """Put a local file (a path) or ``bytes`` at ``dest`` in the environment; a local
        directory is uploaded file by file below ``dest``."""
        if isinstance(source, (bytes, bytearray)):
            self._put(dest, bytes(source), mode)
            return
        src = os.fspath(source)
        if os.path.isdir(src):
            for root, _dirs, files in os.walk(src):
                for name in files:
                    p = os.path.join(root, name)
                    if os.path.islink(p):
                        continue
                    rel = os.path.relpath(p, src).replace(os.sep, "/")
                    st = os.stat(p)
                    self._put(f"{dest.rstrip('/')}/{rel}", open(p, "rb").read(), st.st_mode & 0o777)
            return
        st = os.stat(src)
        with open(src, "rb") as f:
            self._put(dest, f.read(), mode if mode is not None else st.st_mode & 0o777)

    def _put(self, dest: str, data: bytes, mode: Optional[int]) -> None:
        q = f"?mode={mode:o}" if mode is not None else ""
        self._client._http.request("PUT", self._path(f"/files/{_quote_path(dest)}{q}"), raw=data)

    def download(self, path: str, dest: Optional[Union[str, os.PathLike]] = None) -> bytes:
        """The bytes of file ``path`` in the environment (a directory comes as a tar archive);
        written to ``dest`` too when given (a directory is extracted there)."""
        data, headers = self._client._http.request(
            "GET", self._path(f"/files/{_quote_path(path)}"), expect_json=False
        )
        kind = {k.lower(): v for k, v in headers.items()}.get("x-rollout-kind", "file")
        if dest is not None:
            dest = os.fspath(dest)
            if kind == "directory":
                import io
                import tarfile

                os.makedirs(dest, exist_ok=True)
                with tarfile.open(fileobj=io.BytesIO(data)) as tf:
                    members = [m for m in tf.getmembers() if m.isfile() or m.isdir()]
                    tf.extractall(dest, members=members, filter="data")
            else:
                with open(dest, "wb") as f:
                    f.write(data)
        return data

    def read_text(self, path: str) -> str:
        return self.download(path).decode("utf-8", "replace")

    def write_text(self, path: str, text: str, mode: Optional[int] = None) -> None:
        self._put(path, text.encode(), mode)

    def grade(self) -> Rewards:
        """Run the task's tests (every process the session started is killed first) and return
        the rewards. The session takes no more commands afterwards."""
        d = self._client._http.request("POST", self._path("/grade"), {}, timeout=24 * 3600)
        return Rewards(d.get("rewards") or {})

    def step(self, tool_calls: Iterable[Any]) -> List[ToolOutput]:
        """Run tool calls in the shape of Harbor's RL interface (``ToolInput(name, arguments)``
        objects or ``{"name", "arguments"}`` dicts) and return one :class:`ToolOutput` per call.
        Tools: ``bash`` (``command``, optional ``timeout``), ``read_file`` (``path``),
        ``write_file`` (``path``, ``content``). A tool that fails is an output with
        ``isError=True``, as Harbor's are; a session that has ended raises."""
        outputs: List[ToolOutput] = []
        for raw in tool_calls:
            call = _tool_call(raw)
            a = call.arguments
            try:
                if call.name == "bash":
                    r = self.exec(a["command"], timeout=float(a.get("timeout", 60)))
                    text = r.stdout + (("\n" + r.stderr) if r.stderr else "")
                    if r.timed_out:
                        text += f"\n[command timed out after {a.get('timeout', 60)} s]"
                    elif r.exit_code != 0:
                        text += f"\n[exit code {r.exit_code}]"
                    outputs.append(ToolOutput([TextContent(text)], isError=not r.ok))
                elif call.name == "read_file":
                    outputs.append(ToolOutput([TextContent(self.read_text(a["path"]))]))
                elif call.name == "write_file":
                    self.write_text(a["path"], a.get("content", ""))
                    outputs.append(ToolOutput([TextContent(f"wrote {a['path']}")]))
                else:
                    outputs.append(
                        ToolOutput(
                            [TextContent(f"unknown tool {call.name!r}: use one of {', '.join(TOOLS)}")],
                            isError=True,
                        )
                    )
            except KeyError as e:
                outputs.append(ToolOutput([TextContent(f"{call.name}: missing argument {e}")], isError=True))
            except (errors.NotFoundError, errors.RequestError) as e:
                outputs.append(ToolOutput([TextContent(str(e))], isError=True))
        return outputs

    def refresh(self) -> Dict[str, Any]:
        self.info = self._client._http.request("GET", self._path())
        return self.info

    def close(self) -> Optional[Dict[str, Any]]:
        """Close the session (idempotent); returns the trial's final rewards when it closed now."""
        if self.closed:
            return None
        self.closed = True
        try:
            return self._client._http.request("DELETE", self._path())
        except errors.SessionClosedError:
            return None


class Client:
    """A client of a ``rollout serve`` (``url``; ``token`` for ``--auth token``, default
    $ROLLOUT_TOKEN)."""

    def __init__(self, url: str, token: Optional[str] = None, timeout: float = 600.0):
        self.url = url
        self._http = _Http(url, token if token is not None else os.environ.get("ROLLOUT_TOKEN"), timeout)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def open(
        self,
        task: Optional[str] = None,
        dataset: Optional[Mapping[str, Any]] = None,
        *,
        archive: Optional[Union[str, bytes, os.PathLike]] = None,
    ) -> Session:
        """Open a session on ``task``: a task directory on the server (under its
        --allow-local-paths, or a warm pool's) or a warm pool's task name; with ``dataset`` (a
        registry dataset as in a job configuration), the name of a task in it.

        ``archive=`` uploads the task instead: a local task directory (packed here as tar.gz),
        a ``.tar.gz``/``.tar``/``.zip`` file of one, or the archive's bytes. ``task`` then names
        the task when the archive holds several."""
        if archive is not None:
            if dataset is not None:
                raise ValueError("give either archive= or dataset=, not both")
            data, content_type = _archive_bytes(archive)
            path = "/api/v1/sessions"
            if task:
                path += "?" + urllib.parse.urlencode({"task": os.fspath(task)})
            info = self._http.request("POST", path, raw=data, content_type=content_type)
            return Session(self, info)
        if task is None:
            raise ValueError("give a task (or archive=)")
        body: Dict[str, Any] = {"task": os.fspath(task)}
        if dataset is not None:
            body["dataset"] = dict(dataset)
        return Session(self, self._http.request("POST", "/api/v1/sessions", body))

    def open_archive(self, archive: Union[str, bytes, os.PathLike], task: Optional[str] = None) -> Session:
        """``open(task, archive=archive)``: a session on an uploaded task."""
        return self.open(task, archive=archive)

    session = open

    def sessions(self) -> List[Dict[str, Any]]:
        return self._http.request("GET", "/api/v1/sessions")["sessions"]

    def warm_pool(self, task: str, size: int) -> Dict[str, Any]:
        """Keep ``size`` started environments of ``task`` ready (0 empties the pool)."""
        return self._http.request("POST", "/api/v1/pools", {"task": os.fspath(task), "size": size})

    def pools(self) -> List[Dict[str, Any]]:
        return self._http.request("GET", "/api/v1/pools")["pools"]

    def job(self, job_id: str) -> Dict[str, Any]:
        """A session's job (its trial, rewards, result) from the job API."""
        return self._http.request("GET", f"/api/v1/jobs/{job_id}")

    def health(self) -> bool:
        try:
            return self._http.request("GET", "/health").get("status") == "ok"
        except errors.RolloutError:
            return False
