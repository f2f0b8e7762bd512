"""The README's main job: LoRA SFT of the real SmolLM2-135M-Instruct on the pirate sample, on CPU."""
import pytest

from launcher.embedded import smollm2_folder
from launcher.generate import from_base, from_run

from .conftest import losses, run_cli


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
