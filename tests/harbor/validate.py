"""Validate a rollout job directory with Harbor's own models (harbor==0.26.0).

Usage: validate.py JOB_DIR. Reads, never writes. Checks:
- the job's result.json with JobResult,
- every trial result.json (and earlier tries' under previous-tries/) with TrialResult,
- every trajectory.json with the ATIF Trajectory model,
- that the job's Harbor stats equal JobStats.from_trial_results over the trial results.
Prints one JSON report on stdout; exit status 1 when anything failed.
"""

import json
import sys
from pathlib import Path

import harbor
from harbor.models.job.result import JobResult, JobStats
from harbor.models.trajectories import Trajectory
from harbor.models.trial.result import TrialResult


def main() -> int:
    job_dir = Path(sys.argv[1])
    report = {
        "harbor_version": getattr(harbor, "__version__", "unknown"),
        "job": None,
        "trials": [],
        "trajectories": [],
        "errors": [],
    }
    job_file = job_dir / "result.json"
    job = None
    try:
        job = JobResult.model_validate_json(job_file.read_text())
        report["job"] = str(job_file.relative_to(job_dir))
    except Exception as e:  # noqa: BLE001 - every failure is reported
        report["errors"].append({"file": "result.json", "error": str(e)})

    trials: list[TrialResult] = []
    for path in sorted(job_dir.rglob("result.json")):
        if path == job_file:
            continue
        rel = str(path.relative_to(job_dir))
        try:
            t = TrialResult.model_validate_json(path.read_text())
        except Exception as e:  # noqa: BLE001
            report["errors"].append({"file": rel, "error": str(e)})
            continue
        report["trials"].append(
            {
                "file": rel,
                "trial_name": t.trial_name,
                "reward_valid": t.reward_valid,
                "rewards": t.verifier_result.rewards if t.verifier_result else None,
                "exception_type": t.exception_info.exception_type
                if t.exception_info
                else None,
                "n_input_tokens": t.agent_result.n_input_tokens
                if t.agent_result
                else None,
            }
        )
        if "previous-tries" not in path.parts:
            trials.append(t)

    for path in sorted(job_dir.rglob("trajectory.json")):
        rel = str(path.relative_to(job_dir))
        try:
            tr = Trajectory.model_validate_json(path.read_text())
            report["trajectories"].append(
                {"file": rel, "schema_version": tr.schema_version, "steps": len(tr.steps)}
            )
        except Exception as e:  # noqa: BLE001
            report["errors"].append({"file": rel, "error": str(e)})

    if job is not None:
        expected = JobStats.from_trial_results(trials, n_total_trials=job.n_total_trials)
        got = job.stats
        for field in (
            "n_completed_trials",
            "n_errored_trials",
            "n_cancelled_trials",
            "n_pending_trials",
            "n_input_tokens",
            "n_output_tokens",
        ):
            if getattr(got, field) != getattr(expected, field):
                report["errors"].append(
                    {
                        "file": "result.json",
                        "error": f"stats.{field}: rollout wrote {getattr(got, field)!r}, "
                        f"Harbor computes {getattr(expected, field)!r}",
                    }
                )
        if set(got.evals) != set(expected.evals):
            report["errors"].append(
                {
                    "file": "result.json",
                    "error": f"stats.evals keys: rollout {sorted(got.evals)}, "
                    f"Harbor {sorted(expected.evals)}",
                }
            )
        for key in set(got.evals) & set(expected.evals):
            g, x = got.evals[key], expected.evals[key]
            norm = lambda d: {k: sorted(v) for k, v in d.items()}  # noqa: E731
            checks = {
                "n_trials": (g.n_trials, x.n_trials),
                "n_errors": (g.n_errors, x.n_errors),
                "exception_stats": (norm(g.exception_stats), norm(x.exception_stats)),
                "reward_stats": (
                    {k: norm(v) for k, v in g.reward_stats.items()},
                    {k: norm(v) for k, v in x.reward_stats.items()},
                ),
            }
            for name, (a, b) in checks.items():
                if a != b:
                    report["errors"].append(
                        {
                            "file": "result.json",
                            "error": f"stats.evals[{key}].{name}: rollout {a!r}, Harbor {b!r}",
                        }
                    )

    print(json.dumps(report, indent=2, default=str))
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
