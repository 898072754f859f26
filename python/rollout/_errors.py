"""Typed errors of the rollout client."""

from __future__ import annotations

from typing import Any, Optional


class RolloutError(Exception):
    """Base class: something rollout could not do."""


class ServerError(RolloutError):
    """The server answered with an error: ``status`` (HTTP), ``code`` (stable snake_case
    identifier, e.g. ``verifier_reward_missing``) and ``message`` (what failed, what to do)."""

    def __init__(self, status: int, code: str, message: str, body: Any = None):
        super().__init__(f"{code}: {message}" if code else message)
        self.status = status
        self.code = code
        self.message = message
        self.body = body


class AuthenticationError(ServerError):
    """401/403: missing or refused credentials."""


class NotFoundError(ServerError):
    """404: no such session (or file, or endpoint)."""


class SessionClosedError(ServerError):
    """410: the session has ended (closed, or the server shut down)."""


class SessionExpiredError(SessionClosedError):
    """410 ``session_expired``: idle longer than the server's TTL, or past its lifetime."""


class SessionGradedError(ServerError):
    """409 ``session_graded``: a graded session takes no more commands or files."""


class LimitError(ServerError):
    """Over one of the server's limits (429 too many sessions, 413 too large, 400 over_limit)."""


class RequestError(ServerError):
    """400: the request was refused (invalid task, path, command…)."""


class GradingError(ServerError):
    """422 from grading: the tests ran but gave no usable reward (e.g. ``verifier_reward_missing``,
    ``verifier_timeout``)."""


class EnvironmentError_(ServerError):
    """502: the environment (container engine) failed."""


class ConnectionFailed(RolloutError):
    """The server could not be reached."""


class ServerStartError(RolloutError):
    """A local ``rollout serve`` could not be started."""


class BinaryNotFound(ServerStartError):
    """No ``rollout`` binary: not in the wheel, not at $ROLLOUT_BIN, not on PATH."""


def from_response(status: int, body: Any, path: str = "") -> ServerError:
    code: str = ""
    message: Optional[str] = None
    if isinstance(body, dict):
        code = str(body.get("error") or "")
        message = body.get("message")
    if message is None:
        message = body if isinstance(body, str) and body else f"HTTP {status} from {path}"
    cls: type = ServerError
    if status in (401, 403):
        cls = AuthenticationError
    elif status == 404:
        cls = NotFoundError
    elif status == 410:
        cls = SessionExpiredError if code == "session_expired" else SessionClosedError
    elif status == 409 and code == "session_graded":
        cls = SessionGradedError
    elif status in (413, 429) or code in ("over_limit", "too_many_sessions"):
        cls = LimitError
    elif status == 400:
        cls = RequestError
    elif status == 422:
        cls = GradingError
    elif status == 502:
        cls = EnvironmentError_
    return cls(status, code, str(message), body)
