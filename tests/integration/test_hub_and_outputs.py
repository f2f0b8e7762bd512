"""Push to a (local) hub, merge, QLoRA, validation samples and the loss curve, through the real CLI."""
import json

import pytest
import torch

from launcher.generate import from_run

from tests.conftest import run_cli
from .fake_hub import FakeHub

PLANTED = "hf_PLANTEDpushTOKEN0987654321abcdef"


def test_push_uploads_a_private_repo_and_the_token_lands_nowhere(tmp_path):
    run = tmp_path / "pushed-run"
    with FakeHub() as hub:
        result = run_cli("train", "recipe=sft/chat_tiny", "peft=lora", f"project_name={run}", "training.max_steps=2",
                         "hub.push_to_hub=true", "hub.username=alice", f"hub.token={PLANTED}", cwd=tmp_path,
                         env={"HF_TOKEN": PLANTED, "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert hub.repos["alice/pushed-run"]["is_private"] is True
    uploaded = hub.files["alice/pushed-run"]
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "README.md", "config.yaml",
            "training_params.json"} <= set(uploaded)
    assert not any(name.startswith("checkpoint-") or name.endswith(".log") for name in uploaded)
    # the token authenticated the upload ...
    assert any(PLANTED in header for header in hub.auth_headers)
    # ... and is in no uploaded file, no file of the run folder, no line of output
    assert all(PLANTED.encode() not in content for content in uploaded.values())
    assert b"<redacted>" in uploaded["config.yaml"]
    for f in run.rglob("*"):
        if f.is_file():
            assert PLANTED.encode() not in f.read_bytes(), f
    assert PLANTED not in result.stdout + result.stderr


def test_a_failed_upload_keeps_the_finished_run(tmp_path):
    run = tmp_path / "unpushed"
    result = run_cli("train", "recipe=sft/chat_tiny", f"project_name={run}", "training.max_steps=1",
                     "hub.push_to_hub=true", "hub.username=alice", cwd=tmp_path,
                     env={"HF_TOKEN": PLANTED, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_DISABLE_XET": "1"})
    assert result.returncode == 3
    assert json.loads((run / "run_state.json").read_text())["status"] == "finished"
    assert "tunelaunch push" in (run / "train.log").read_text()
    assert PLANTED not in result.stdout + result.stderr + (run / "train.log").read_text()

    # the retry the log names, as the README writes it: `tunelaunch push RUN_DIR [--username U]`
    no_token = run_cli("push", str(run), "--username", "bob", cwd=tmp_path, env={"HF_TOKEN": None})
    assert no_token.returncode == 2 and "HF_TOKEN" in no_token.stderr
    with FakeHub() as hub:
        pushed = run_cli("push", str(run), "--username", "bob", cwd=tmp_path,
                         env={"HF_TOKEN": PLANTED, "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1"})
    assert pushed.returncode == 0, pushed.stderr[-3000:]
    assert "pushed to" in pushed.stdout and "bob/unpushed" in pushed.stdout
    assert hub.repos["bob/unpushed"]["is_private"] is True
    assert {"model.safetensors", "config.yaml", "README.md"} <= set(hub.files["bob/unpushed"])
    assert any(PLANTED in header for header in hub.auth_headers)
    assert all(PLANTED.encode() not in content for content in hub.files["bob/unpushed"].values())
    assert PLANTED not in pushed.stdout + pushed.stderr


def test_merged_model_gives_the_adapter_logits(tmp_path):
    run = tmp_path / "to-merge"
    assert run_cli("train", "recipe=sft/chat_tiny", "peft=lora", f"project_name={run}", "training.max_steps=3",
                   "training.lr=5e-3", cwd=tmp_path).returncode == 0
    merged_dir = tmp_path / "merged"
    result = run_cli("merge", str(run), "--output", str(merged_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]

    from transformers import AutoModelForCausalLM

    adapter = from_run(run)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    ids = torch.tensor([adapter.prompt_ids(text="Tell me about the moon.")])
    with torch.no_grad():
        a = adapter.model(input_ids=ids).logits
        m = merged(input_ids=ids).logits
        base = adapter.model.get_base_model()
        with adapter.model.disable_adapter():
            b = adapter.model(input_ids=ids).logits
    assert (a - b).abs().max() > 1e-4  # the adapter learned something, so the comparison means something
    assert torch.allclose(a, m, atol=1e-5), (a - m).abs().max()
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    assert base is not None

    again = run_cli("merge", str(run), "--output", str(merged_dir), cwd=tmp_path)
    assert again.returncode == 1 and "not empty" in again.stderr


@pytest.mark.parametrize("mode", ["int4", "int8"])
def test_qlora_trains_on_quantized_base_weights(tmp_path, mode):
    run = tmp_path / f"qlora-{mode}"
    result = run_cli("train", "recipe=sft/chat_tiny", "peft=qlora", f"quantization.mode={mode}",
                     f"project_name={run}", "training.max_steps=3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    log = (run / "train.log").read_text()
    assert f"{mode}: " in log and " 0 quantized linear layers" not in log
    state = json.loads((run / "trainer_state.json").read_text())
    assert all(h["loss"] == h["loss"] and h["loss"] < 100 for h in state["log_history"] if "loss" in h)
    assert (run / "adapter_model.safetensors").is_file()


def test_validation_prompt_is_answered_at_each_evaluation_and_the_loss_curve_is_drawn(tmp_path):
    run = tmp_path / "watched"
    result = run_cli("train", "recipe=sft/chat_tiny", f"project_name={run}", "training.max_steps=4",
                     "training.eval_strategy=steps", "training.save_steps=2",
                     "training.validation_prompt=What is the capital of Peru?", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    samples = [json.loads(line) for line in (run / "validation_samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [2, 4]
    assert all(s["prompt"] == "What is the capital of Peru?" and isinstance(s["answer"], str) for s in samples)
    assert "validation sample at step 2" in (run / "train.log").read_text()
    png = (run / "loss_curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


@pytest.mark.parametrize("tracker, expected", [("tensorboard", "tensorboard/**/events.out.tfevents.*"),
                                               ("wandb", "wandb/offline-run-*/run-*.wandb")])
def test_trackers_log_into_the_run_folder_without_network(tmp_path, tracker, expected):
    run = tmp_path / f"logged-{tracker}"
    result = run_cli("train", "recipe=sft/chat_tiny", f"logger={tracker}", f"project_name={run}",
                     "training.max_steps=2", cwd=tmp_path, env={"WANDB_API_KEY": None, "WANDB_MODE": None})
    assert result.returncode == 0, result.stderr[-3000:]
    assert list(run.glob(expected)), sorted(str(p.relative_to(run)) for p in run.rglob("*"))[:50]
