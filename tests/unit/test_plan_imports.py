"""`plan` answers in about a second because it imports none of the training stack: a check that needs torch,
trl, peft or datasets makes every plan pay seconds (benchmarks/plan_time.py measures it)."""
import json
import subprocess
import sys

import pytest


HEAVY = ("torch", "trl", "peft", "datasets", "accelerate", "deepspeed", "transformers.training_args",
         "transformers.modeling_utils")


def imported_by_plan(tmp_path, *args: str) -> list[str]:
    code = ("import json, sys\nfrom launcher.cli import main\n"
            f"rc = main(['plan', *{list(args)!r}])\n"
            f"print(json.dumps([rc, [m for m in {HEAVY!r} if m in sys.modules]]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    rc, heavy = json.loads(out.stdout.strip().splitlines()[-1])
    assert rc == 0, out.stderr[-2000:]
    return heavy


@pytest.mark.parametrize("recipe", ["sft/chat_tiny", "dpo/preference_tiny"])
def test_plan_of_a_recipe_imports_no_training_library(tmp_path, recipe):
    from launcher.embedded import build_tiny_llama

    build_tiny_llama()  # the recipe's model, built beforehand (building it imports torch)
    assert imported_by_plan(tmp_path, f"recipe={recipe}", f"project_name={tmp_path / 'run'}") == []
