"""The README's "Online RL" block, run line by line through bash exactly as written (slow: five tiny runs), each
checked for what the line promises: GRPO and RLOO raise the mean `format` reward (the last quarter of the run above
the first), the user's reward function is called and weighted, and a run folder teaches the distilled student."""
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, cli_env



def online_block() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text[text.index("### Online RL"):]
    block = section[section.index("```bash") + len("```bash"):]
    return [line for line in block[:block.index("```")].strip().splitlines() if line.strip()]


def rewards(run: Path, key: str = "reward") -> list[float]:
    history = json.loads((run / "trainer_state.json").read_text())["log_history"]
    return [h[key] for h in history if key in h]


def quarters(values: list[float]) -> tuple[float, float]:
    q = max(1, len(values) // 4)
    return sum(values[:q]) / q, sum(values[-q:]) / q


@pytest.mark.slow
def test_the_online_rl_block_runs_as_written(tmp_path):
    lines = online_block()
    assert len(lines) == 4 and all(line.startswith("tunelaunch ") for line in lines)
    shutil.copytree(REPO / "examples", tmp_path / "examples")  # the README runs from the checkout
    env = cli_env()
    for line in lines:
        done = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=1200)
        assert done.returncode == 0, f"{line}\n{(done.stdout + done.stderr)[-3000:]}"
    runs = tmp_path / "runs"

    # the recipes learn what they are paid for: the format reward of the last quarter above the first quarter's
    for name in ("grpo-format-tiny", "rloo-format-tiny"):
        first, last = quarters(rewards(runs / name, "rewards/format/mean"))
        assert last > first + 0.2, (name, first, last, rewards(runs / name, "rewards/format/mean"))
        assert (runs / name / "samples.jsonl").is_file() and (runs / name / "reward_curve.png").is_file()

    # the user's function, weighted: trl's total is format + 0.5 x brevity at every step
    brevity = runs / "grpo-brevity"
    for total, fmt, short in zip(rewards(brevity), rewards(brevity, "rewards/format/mean"),
                                 rewards(brevity, "rewards/brevity/mean")):
        assert total == pytest.approx(fmt + 0.5 * short, abs=1e-5) and 0 < short <= 1

    # distillation from the sft run folder: finished, the divergence logged and finite
    distill = runs / "distill-tiny-from-run"
    state = json.loads((distill / "run_state.json").read_text())
    assert state["status"] == "finished" and state["final_divergence"] >= 0
