"""The README's main job: LoRA SFT of the real SmolLM2-135M-Instruct on the pirate sample, on CPU."""
import pytest

from launcher.embedded import smollm2_folder
from launcher.generate import from_base, from_run

from tests.conftest import cli_env, run_cli
from .conftest import losses


@pytest.mark.slow
def test_quickstart_recipe_teaches_smollm2_the_pirate_voice(tmp_path):
    model = smollm2_folder()
    question = "What is the capital of France?"  # held out of samples/pirate_chat
    before = from_base(str(model), "chatml").complete(text=question, max_new_tokens=40)
    assert "Paris" in before and "arr" not in before.lower()

    run = tmp_path / "quickstart"
    result = run_cli("train", "recipe=sft/quickstart", f"project_name={run}", cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run / "adapter_model.safetensors").is_file()
    curve = losses(run)
    assert curve[-1] < curve[0] * 0.6, curve

    after = from_run(run).complete(text=question, max_new_tokens=40)
    assert "arr" in after.lower() or "matey" in after.lower(), after
    assert "Paris" in after, after  # the style changed, the fact stayed


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tiny", "smollm2"])
def test_embedded_prints_only_the_folder_on_stdout_even_when_it_builds(name, tmp_path):
    """scripts/quickstart.sh reads the model folder with $(python -m launcher.embedded smollm2): a first build
    (fresh cache) must leave nothing else on stdout. DeepSpeed's import-time warning once did, and the quickstart's
    "before" answers were then empty (generate got two lines as its folder)."""
    import subprocess
    import sys
    from pathlib import Path

    env = cli_env(TUNELAUNCH_CACHE=str(tmp_path / "cache"))
    done = subprocess.run([sys.executable, "-m", "launcher.embedded", name], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert len(lines) == 1 and Path(lines[0]).is_dir() and (Path(lines[0]) / "config.json").is_file(), done.stdout
