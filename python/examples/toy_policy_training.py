"""A toy policy trained through rollout sessions, in the shape of an RL training loop.

The "policy" picks one of a few shell commands (a softmax over preferences); each episode is a
session: the instruction is the observation, the command is the action (a Harbor-style tool
call through ``step``), ``grade()`` is the reward. A REINFORCE update moves the preferences
toward commands that solve the task. A real trainer swaps the policy for a model and keeps the
loop: open a group of sessions concurrently, roll out, grade, close, update.

    python examples/toy_policy_training.py [TASK_DIR]

Without TASK_DIR a small task is written to a temporary directory. Needs Docker and the
`rollout` binary (the wheel's, $ROLLOUT_BIN, or PATH).
"""

from __future__ import annotations

import asyncio
import math
import random
import sys
import tempfile
from pathlib import Path

import rollout

ACTIONS = [
    "echo nothing",
    "echo wrong > /app/answer.txt",
    "echo done > /app/answer.txt",
    "rm -f /app/answer.txt",
]


def write_toy_task(root: Path) -> Path:
    d = root / "toy"
    (d / "environment").mkdir(parents=True)
    (d / "tests").mkdir()
    (d / "environment" / "Dockerfile").write_text("FROM debian:bookworm-slim\nWORKDIR /app\n")
    (d / "instruction.md").write_text("Write the word `done` into /app/answer.txt.\n")
    (d / "task.toml").write_text('version = "1.0"\n[environment]\ncpus = 0.5\nmemory_mb = 256\n')
    (d / "tests" / "test.sh").write_text(
        '#!/bin/bash\n[ "$(cat /app/answer.txt 2>/dev/null)" = done ] && r=1 || r=0\necho $r > /logs/verifier/reward.txt\n'
    )
    return d


class Policy:
    def __init__(self, n: int, lr: float = 0.5):
        self.prefs = [0.0] * n
        self.lr = lr

    def probs(self) -> list[float]:
        m = max(self.prefs)
        e = [math.exp(p - m) for p in self.prefs]
        z = sum(e)
        return [x / z for x in e]

    def act(self, observation: str) -> int:
        return random.choices(range(len(self.prefs)), weights=self.probs())[0]

    def update(self, batch: list[tuple[int, float]]) -> None:
        baseline = sum(r for _, r in batch) / len(batch)
        p = self.probs()
        for a, r in batch:
            adv = r - baseline
            for i in range(len(self.prefs)):
                grad = (1.0 if i == a else 0.0) - p[i]
                self.prefs[i] += self.lr * adv * grad / len(batch)


async def episode(client: rollout.AsyncClient, task: str, policy: Policy) -> tuple[int, float]:
    async with await client.open(task) as env:
        action = policy.act(env.instruction)
        [out] = await env.step([rollout.ToolInput("bash", {"command": ACTIONS[action]})])
        rewards = await env.grade()
        return action, rewards.reward or 0.0


async def train(server: rollout.Server, task: str, steps: int = 8, group: int = 4) -> Policy:
    policy = Policy(len(ACTIONS))
    async with server.async_client() as client:
        for step in range(steps):
            batch = await asyncio.gather(*(episode(client, task, policy) for _ in range(group)))
            policy.update(batch)
            mean = sum(r for _, r in batch) / len(batch)
            best = ACTIONS[max(range(len(ACTIONS)), key=lambda i: policy.prefs[i])]
            print(f"step {step}: mean reward {mean:.2f}  p(best)={max(policy.probs()):.2f}  favourite: {best!r}")
    return policy


def main() -> None:
    random.seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        task = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else write_toy_task(Path(tmp))
        # Four environments kept warm: each episode's open takes one, the pool refills.
        with rollout.Server(warm_pool={task: 4}) as server:
            server.wait_pools_ready()
            asyncio.run(train(server, str(task)))


if __name__ == "__main__":
    main()
