"""rollout: drive Harbor-format task sandboxes step by step from Python (RL sessions).

    import rollout

    with rollout.Server(warm_pool={"tasks/hello": 4}) as server:
        with server.open("hello") as s:
            print(s.instruction)
            r = s.exec("echo hi > /app/out.txt")
            rewards = s.grade()          # {"reward": 1.0}

``Client``/``Session`` are synchronous, ``AsyncClient``/``AsyncSession`` their asyncio twins.
Sessions are served by ``rollout serve`` (the binary this wheel carries): see docs/sessions.md.
"""

from ._async import AsyncClient, AsyncSession
from ._client import (
    TOOLS,
    Client,
    ExecResult,
    Rewards,
    Session,
    TextContent,
    ToolInput,
    ToolOutput,
)
from ._errors import (
    AuthenticationError,
    BinaryNotFound,
    ConnectionFailed,
    EnvironmentError_ as EnvironmentFailed,
    GradingError,
    LimitError,
    NotFoundError,
    RequestError,
    RolloutError,
    ServerError,
    ServerStartError,
    SessionClosedError,
    SessionExpiredError,
    SessionGradedError,
)
from ._server import Server, find_binary

try:
    from importlib.metadata import version as _version

    __version__ = _version("rollout")
except Exception:  # not installed (running from the source tree)
    __version__ = "0.0.0+source"

__all__ = [
    "AsyncClient",
    "AsyncSession",
    "AuthenticationError",
    "BinaryNotFound",
    "Client",
    "ConnectionFailed",
    "EnvironmentFailed",
    "ExecResult",
    "GradingError",
    "LimitError",
    "NotFoundError",
    "RequestError",
    "Rewards",
    "RolloutError",
    "Server",
    "ServerError",
    "ServerStartError",
    "Session",
    "SessionClosedError",
    "SessionExpiredError",
    "SessionGradedError",
    "TOOLS",
    "TextContent",
    "ToolInput",
    "ToolOutput",
    "find_binary",
]
