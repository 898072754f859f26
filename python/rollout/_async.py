"""asyncio face of the client.

Each call runs the synchronous client in a worker thread (``asyncio.to_thread``), each
thread keeping its own keep-alive connection: no dependency beyond the standard library, and a
trainer's event loop is never blocked. Concurrency is that of the default executor
(``min(32, cpus + 4)`` threads); pass ``max_concurrency`` for more sessions in flight.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from typing import Any, Dict, Iterable, List, Mapping, Optional

from ._client import Client, ExecResult, Rewards, Session, ToolOutput


class AsyncSession:
    """The asyncio twin of :class:`rollout.Session` (``async with``)."""

    def __init__(self, client: "AsyncClient", session: Session):
        self._client = client
        self._s = session
        self.id = session.id
        self.instruction = session.instruction
        self.task_name = session.task_name
        self.warm = session.warm
        self.info = session.info

    def __repr__(self) -> str:
        return f"AsyncSession(id={self.id!r}, task={self.task_name!r})"

    async def __aenter__(self) -> "AsyncSession":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def get_prompt(self) -> str:
        return self.instruction

    async def exec(self, command: Any, timeout: float = 60.0, **kw: Any) -> ExecResult:
        return await self._client._run(self._s.exec, command, timeout=timeout, **kw)

    async def upload(self, source: Any, dest: str, mode: Optional[int] = None) -> None:
        await self._client._run(self._s.upload, source, dest, mode)

    async def download(self, path: str, dest: Any = None) -> bytes:
        return await self._client._run(self._s.download, path, dest)

    async def read_text(self, path: str) -> str:
        return await self._client._run(self._s.read_text, path)

    async def write_text(self, path: str, text: str, mode: Optional[int] = None) -> None:
        await self._client._run(self._s.write_text, path, text, mode)

    async def grade(self) -> Rewards:
        return await self._client._run(self._s.grade)

    async def step(self, tool_calls: Iterable[Any]) -> List[ToolOutput]:
        return await self._client._run(self._s.step, list(tool_calls))

    async def close(self) -> Optional[Dict[str, Any]]:
        return await self._client._run(self._s.close)

    # Harbor's RLEnvironment names.
    async def stop(self) -> None:
        await self.close()


class AsyncClient:
    """The asyncio twin of :class:`rollout.Client`."""

    def __init__(
        self,
        url: str,
        token: Optional[str] = None,
        timeout: float = 600.0,
        max_concurrency: Optional[int] = None,
    ):
        self._sync = Client(url, token=token, timeout=timeout)
        self._pool = (
            concurrent.futures.ThreadPoolExecutor(max_concurrency, thread_name_prefix="rollout")
            if max_concurrency
            else None
        )

    async def _run(self, fn: Any, *args: Any, **kw: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kw))

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._sync.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    async def open(
        self, task: Optional[str] = None, dataset: Optional[Mapping[str, Any]] = None, *, archive: Any = None
    ) -> AsyncSession:
        s = await self._run(self._sync.open, task, dataset, archive=archive)
        return AsyncSession(self, s)

    async def open_archive(self, archive: Any, task: Optional[str] = None) -> AsyncSession:
        return await self.open(task, archive=archive)

    session = open

    async def sessions(self) -> List[Dict[str, Any]]:
        return await self._run(self._sync.sessions)

    async def warm_pool(self, task: str, size: int) -> Dict[str, Any]:
        return await self._run(self._sync.warm_pool, task, size)

    async def pools(self) -> List[Dict[str, Any]]:
        return await self._run(self._sync.pools)
