"""Golden losses: the first training losses of every tiny recipe, against figures stored in tests/golden/losses.json.

Each case is a real `tunelaunch train` subprocess (the CLI, accelerate launch, the worker) on the embedded tiny
Llama, logging every step for 5 steps; its losses come from trainer_state.json's log_history. A change anywhere
between the data files and the optimizer (templates, loss masks, packing, collators, trainer arguments, package
versions) moves them, and the test says which case and step moved by how much (relative tolerance 1e-4).

The figures are only ever rewritten on request:

    TUNELAUNCH_UPDATE_GOLDEN=1 python -m pytest tests/integration/test_golden_losses.py -m slow

writes the new figures and fails ("updated, re-run"), so an update never passes silently; the re-run without the
variable checks them, and `git diff tests/golden/losses.json` shows what moved.

The runs are kept deterministic: CPU only (CUDA_VISIBLE_DEVICES=""), fp32, one process, a full fine-tune (no
LoRA dropout; the tiny Llama has no dropout either), the recipes' fixed seed; evaluation and intermediate saves
are switched off (they come after the logged steps and only cost time).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli
from .conftest import losses

# Six `tunelaunch train` runs of ~30-60 s each on two busy CPU cores (most of it process start-up): ~4 minutes.
pytestmark = pytest.mark.slow

GOLDEN = REPO / "tests" / "golden" / "losses.json"
UPDATE = "TUNELAUNCH_UPDATE_GOLDEN"
STEPS = 5
RTOL = 1e-4
COMMON = (f"training.max_steps={STEPS}", "logging.steps=1", "training.eval_strategy=no", "training.save_strategy=no",
          "precision=fp32", "peft=none", "distributed=none")
CASES = {
    "default": ("recipe=default/text_tiny",),
    "sft_unpacked": ("recipe=sft/chat_tiny", "data.packing=false"),
    "sft_packed": ("recipe=sft/chat_tiny", "data.packing=true"),
    "reward": ("recipe=reward/pairs_tiny",),
    "dpo": ("recipe=dpo/preference_tiny",),
    "orpo": ("recipe=orpo/preference_chat_tiny",),
}
@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_model) -> Path:
    """One folder for all cases (tiny_model: the embedded model and tokenizer are built once, before any run)."""
    return tmp_path_factory.mktemp("golden")


def train(name: str, workdir: Path) -> tuple[list[float], dict]:
    run = workdir / name
    overrides = (*CASES[name], *COMMON, f"project_name={run}", f"data.cache_dir={workdir / 'data-cache'}")
    result = run_cli("train", *overrides, cwd=workdir, env={"CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 0, f"{name}: `tunelaunch train {' '.join(overrides)}` failed:\n{result.stderr[-3000:]}"
    versions = json.loads((run / "manifest.json").read_text()).get("versions", {})
    return losses(run), versions


def stored() -> dict:
    return json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {"cases": {}}


def store(name: str, curve: list[float], versions: dict) -> None:
    """Rewrite this case's entry (the other cases are kept as they are)."""
    data = stored()
    data["about"] = (f"First {STEPS} training losses of each tiny recipe, written by "
                     f"tests/integration/test_golden_losses.py with {UPDATE}=1 (never by a passing test).")
    data.setdefault("cases", {})[name] = {"overrides": [*CASES[name], *COMMON], "losses": curve, "versions": versions}
    data["cases"] = dict(sorted(data["cases"].items()))
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps(data, indent=1) + "\n")


@pytest.mark.parametrize("name", list(CASES))
def test_first_losses_match_the_golden_figures(name, workdir):
    curve, versions = train(name, workdir)
    assert len(curve) == STEPS and all(math.isfinite(x) for x in curve), curve
    if os.environ.get(UPDATE) == "1":
        store(name, curve, versions)
        pytest.fail(f"{name}: golden losses updated in {GOLDEN.relative_to(REPO)} ({curve}); re-run without {UPDATE} "
                    f"to check them, and review `git diff {GOLDEN.relative_to(REPO)}`")
    golden = stored()["cases"].get(name)
    assert golden is not None, f"{name}: no golden losses in {GOLDEN}; write them with {UPDATE}=1"
    assert golden["overrides"] == [*CASES[name], *COMMON], (
        f"{name}: the golden figures were made with other settings {golden['overrides']}; regenerate with {UPDATE}=1")
    moved = [f"  step {step}: golden {want!r}, now {got!r} (relative difference {abs(got - want) / abs(want):.2e})"
             for step, (want, got) in enumerate(zip(golden["losses"], curve), 1)
             if not math.isclose(got, want, rel_tol=RTOL)]
    changed = {k: (v, versions.get(k)) for k, v in golden.get("versions", {}).items() if versions.get(k) != v}
    report = (f"{name}: {len(moved)} of {STEPS} losses differ from {GOLDEN.relative_to(REPO)} beyond rtol {RTOL}:\n"
              + "\n".join(moved) + (f"\n  package versions (golden, now): {changed}" if changed else ""))
    assert not moved, report
