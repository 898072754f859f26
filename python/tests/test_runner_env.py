"""rollout.runner_env: the OpenCode-FSM seed's setup()/rollout()/evaluate() over the binary."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from rollout import runner_env

FIXTURE = Path(__file__).resolve().parents[2] / "tests/fixtures/pipelines/passing"


def test_setup_rollout_and_evaluate_run_the_contract(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(FIXTURE, repo)
    sess = runner_env.setup(str(repo))
    with pytest.raises(ValueError, match="llm"):
        sess.rollout(llm="")
    r = sess.rollout(llm="some-model", mode="smoke", require_samples=True, repair_iters=0)
    assert r.ok, r.stderr
    assert r.samples == 2
    stages = [s["stage"] for s in r.result["stages"]]
    assert "rollout" in stages and "evaluation" not in stages
    # The model reaches the stages; evaluate() reuses the session's.
    res = sess.evaluate(mode="smoke", repair_iters=0)
    assert res.ok, res.stderr
    assert res.metrics == {"ok": True, "score": 0.5, "n": 2}
    assert Path(res.artifacts_dir, "evaluation_summary.json").is_file()


def test_require_samples_false_accepts_a_rollout_without_samples(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / ".aider_fsm").mkdir(parents=True)
    (repo / "pipeline.yml").write_text(
        "version: 1\nrollout:\n  run_cmds: [\"echo '{}' > .aider_fsm/rollout.json\"]\n"
    )
    sess = runner_env.setup(str(repo))
    strict = sess.rollout(llm="m")
    assert not strict.ok and strict.failure.startswith("rollout.samples_path_missing")
    lenient = sess.rollout(llm="m", require_samples=False)
    assert lenient.ok, lenient.stderr


def test_a_missing_contract_without_a_model_is_refused(tmp_path: Path) -> None:
    sess = runner_env.setup(str(tmp_path))
    with pytest.raises(ValueError, match="pass -m"):
        sess.evaluate()
