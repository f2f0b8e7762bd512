"""The README's Methods block, run line by line through bash exactly as written (slow: six tiny runs), each
checked for what the line promises."""
import json
import math
import subprocess
from pathlib import Path

import pytest
from safetensors import safe_open

from tests.conftest import REPO, cli_env



def methods_block() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Methods"):]
    block = section[section.index("```bash") + len("```bash"):]
    return [line for line in block[:block.index("```")].strip().splitlines() if line.strip()]


def logged(run: Path, key: str) -> list[float]:
    history = json.loads((run / "trainer_state.json").read_text())["log_history"]
    return [h[key] for h in history if key in h]


def finished(run: Path) -> bool:
    return json.loads((run / "run_state.json").read_text())["status"] == "finished"


@pytest.mark.slow
def test_the_methods_block_runs_as_written(tmp_path):
    lines = methods_block()
    assert len(lines) == 6 and all(line.startswith(("tunelaunch ", "printf ")) for line in lines)
    env = cli_env()
    outputs = []
    for line in lines:
        done = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=900)
        assert done.returncode == 0, f"{line}\n{(done.stdout + done.stderr)[-3000:]}"
        outputs.append(done)
    runs = tmp_path / "runs"

    for name in ("kto-unpaired-tiny", "cpo-preference-tiny", "simpo-preference-chat-tiny", "dpo-preference-tiny"):
        margins = logged(runs / name, "rewards/margins")
        assert finished(runs / name) and margins and all(math.isfinite(m) for m in margins), name
        assert all(math.isfinite(loss) for loss in logged(runs / name, "loss")), name
    assert logged(runs / "kto-unpaired-tiny", "kl")  # KTO's own metric

    dpo = json.loads((runs / "dpo-preference-tiny" / "training_params.json").read_text())
    config = (runs / "dpo-preference-tiny" / "config.yaml").read_text()
    assert "bco_pair" in config and "0.8" in config, dpo

    sft = runs / "sft-chat-tiny"
    assert finished(sft)
    with safe_open(str(sft / "adapter_model.safetensors"), "pt") as f:
        assert any("lora_magnitude_vector" in k for k in f.keys())  # DoRA
    adapter = json.loads((sft / "adapter_config.json").read_text())
    assert adapter["use_dora"] is True and adapter["use_rslora"] is True
    assert "neftune_noise_alpha: 5" in (sft / "config.yaml").read_text()

    chat = outputs[-1]
    assert len(chat.stdout.splitlines()) == 2, chat.stdout  # one reply per piped line, nothing else on stdout
