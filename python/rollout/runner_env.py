"""The OpenCode-FSM runner's entry points (``runner_env``) over ``rollout pipeline run``.

    from rollout import runner_env

    sess = runner_env.setup("https://github.com/<owner>/<repo>")
    sess.rollout(llm="deepseek-v3.2", mode="smoke", require_samples=True, repair_iters=0)
    res = sess.evaluate(mode="smoke", repair_iters=0)
    print(res.ok, res.metrics)

Every call runs the ``rollout`` binary (``$ROLLOUT_BIN``, the wheel's, or PATH) as
``rollout pipeline run <repo> --json --stages ...``: the contract, its verification, evidence
and provenance are the binary's (docs/pipeline.md). ``rollout()`` runs deploy and rollout,
``evaluate()`` evaluation and benchmark (with deploy again when the contract has one, since each
call is one run and tears down per ``teardown_policy``). A repository without ``pipeline.yml``
is scaffolded by the first call that has a model.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from ._server import find_binary

__all__ = ["setup", "EnvSession", "PipelineCallResult"]

#: Longest one ``rollout pipeline run`` may take (seconds); each stage has its own timeouts.
DEFAULT_TIMEOUT = 6 * 3600.0


@dataclass
class PipelineCallResult:
    """What one call found: ``ok``, the metrics/samples, and the whole ``pipeline_result.json``."""

    ok: bool
    exit_code: int
    metrics: Optional[dict] = None
    samples: Optional[int] = None
    failed_stage: Optional[str] = None
    failure: Optional[str] = None
    artifacts_dir: Optional[str] = None
    result: dict = field(default_factory=dict)
    stderr: str = ""


def _is_url(target: str) -> bool:
    return target.startswith(("http://", "https://", "ssh://", "git://", "file://", "git@"))


class EnvSession:
    """One target repository (a local directory; a git URL is cloned once by :func:`setup`)."""

    def __init__(self, repo: Path, *, env: str = "local", image: Optional[str] = None,
                 binary: Optional[str] = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.repo = repo
        self.env = env
        self.image = image
        self.binary = binary or find_binary()
        self.timeout = timeout
        self.llm: Optional[str] = None
        self._clone: Optional[tempfile.TemporaryDirectory] = None

    def _sections(self) -> list[str]:
        if not (self.repo / "pipeline.yml").is_file():
            return []
        out = subprocess.run([self.binary, "pipeline", "validate", str(self.repo), "--json"],
                             capture_output=True, text=True, timeout=120)
        try:
            stages = json.loads(out.stdout).get("stages", [])
        except json.JSONDecodeError:
            return []
        return sorted({s.split("_")[0] for s in stages})

    def _run(self, wanted: Sequence[str], llm: Optional[str], mode: str, repair_iters: int,
             extra: Sequence[str] = ()) -> PipelineCallResult:
        model = llm or self.llm
        if model:
            self.llm = model
        if repair_iters and not model:
            raise ValueError("repair_iters needs a model: pass llm=...")
        sections = self._sections()
        args = [self.binary, "pipeline", "run", str(self.repo), "--json", "--mode", mode,
                "--env", self.env, "--repair-iters", str(repair_iters), *extra]
        if self.image:
            args += ["--image", self.image]
        if model:
            args += ["-m", model]
        stages = [s for s in wanted if s in sections] if sections else []
        if sections and not stages:
            raise ValueError(f"pipeline.yml has none of the sections {', '.join(wanted)}")
        if stages:
            args += ["--stages", ",".join(stages)]
        out = subprocess.run(args, capture_output=True, text=True, timeout=self.timeout)
        if out.returncode == 2 or not out.stdout.strip():
            raise ValueError(f"rollout pipeline run refused ({out.returncode}): {out.stderr.strip()}")
        r: dict[str, Any] = json.loads(out.stdout)
        return PipelineCallResult(
            ok=bool(r.get("ok")), exit_code=out.returncode, metrics=r.get("metrics"),
            samples=r.get("samples"), failed_stage=r.get("failed_stage"),
            failure=r.get("failure"), artifacts_dir=r.get("artifacts_dir"), result=r,
            stderr=out.stderr)

    def rollout(self, llm: str, *, mode: str = "smoke", require_samples: bool = True,
                repair_iters: int = 0) -> PipelineCallResult:
        """Deploy (bootstrap first) and roll out; ``require_samples`` as ``--require-samples``."""
        if not llm:
            raise ValueError("rollout() needs llm=... (a model id, or a local model directory)")
        return self._run(["deploy", "rollout"], llm, mode, repair_iters,
                         ["--require-samples", "true" if require_samples else "false"])

    def evaluate(self, *, llm: Optional[str] = None, mode: str = "smoke",
                 repair_iters: int = 0) -> PipelineCallResult:
        """Evaluation and benchmark (deploy first when the contract has one), then teardown."""
        return self._run(["deploy", "evaluation", "benchmark"], llm, mode, repair_iters)


def setup(target: str, *, env: str = "local", image: Optional[str] = None,
          rev: Optional[str] = None, timeout: float = DEFAULT_TIMEOUT) -> EnvSession:
    """Open ``target`` (a directory or a git URL, cloned into a temporary directory)."""
    if _is_url(target) and not os.path.isdir(target):
        tmp = tempfile.TemporaryDirectory(prefix="rollout-runner-env-")
        dest = Path(tmp.name) / "repo"
        cmd = ["git", "clone", "-q", target, str(dest)]
        subprocess.run(cmd, check=True, timeout=600, env={**os.environ, "GIT_TERMINAL_PROMPT": "0"})
        if rev:
            subprocess.run(["git", "-C", str(dest), "checkout", "-q", rev], check=True, timeout=120)
        sess = EnvSession(dest, env=env, image=image, timeout=timeout)
        sess._clone = tmp
        return sess
    repo = Path(target)
    if not repo.is_dir():
        raise ValueError(f"{target}: not a directory or a git URL")
    return EnvSession(repo.resolve(), env=env, image=image, timeout=timeout)
