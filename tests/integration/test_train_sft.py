"""`tunelaunch train` end to end on the embedded tiny model: real subprocesses through accelerate launch."""
import json

import yaml

from launcher.config.autotrain import PARAMS
from launcher.generate import from_run

from tests.conftest import run_cli
from .conftest import losses

PLANTED = "hf_PLANTEDtokenNEVERwrite1234567890"


def test_sft_chat_run_leaves_a_complete_output_folder_and_learns(tmp_path):
    run = tmp_path / "chat-run"
    result = run_cli("train", "recipe=sft/chat_tiny", f"project_name={run}", "training.max_steps=12",
                     f"hub.token={PLANTED}", cwd=tmp_path, env={"HF_TOKEN": PLANTED})
    assert result.returncode == 0, result.stderr[-3000:]

    for name in ("config.yaml", "training_params.json", "accelerate_config.yaml", "README.md", "manifest.json",
                 "model.safetensors", "tokenizer.json", "tokenizer_config.json", "trainer_state.json", "train.log"):
        assert (run / name).is_file(), name
    assert json.loads((run / "run_state.json").read_text())["status"] == "finished"

    # the tokenizer carries the chat template used in training (ours, with generation markers)
    saved_template = (run / "chat_template.jinja").read_text()
    assert "{% generation %}" in saved_template and "<|im_end|>" in saved_template

    # the loss fell
    curve = losses(run)
    assert len(curve) >= 6
    assert sum(curve[-3:]) / 3 < sum(curve[:3]) / 3 - 0.05, curve

    # the resolved config is what the worker read, with AutoTrain's names beside it
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["precision"]["mixed_precision"] == "fp32"  # auto on CPU
    assert cfg["training"]["gradient_checkpointing"] is False
    params = json.loads((run / "training_params.json").read_text())
    assert list(params) == [p.name for p in PARAMS]
    assert params["trainer"] == "sft" and params["chat_template"] == "chatml" and params["token"] == "<redacted>"

    # the secret is in no file and in no line of output
    for f in run.rglob("*"):
        if f.is_file():
            assert PLANTED.encode() not in f.read_bytes(), f
    assert PLANTED not in result.stdout and PLANTED not in result.stderr

    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["versions"]["trl"] and "launcher.worker" in manifest["launch"]["command"]
    assert manifest["metrics"]["global_step"] == 12
    assert any(digest != "hub" and len(digest) == 64 for digest in manifest["data"].values())


def test_a_finished_run_is_never_overwritten_silently(tmp_path):
    run = tmp_path / "keep-me"
    args = ("train", "recipe=sft/chat_tiny", f"project_name={run}", "training.max_steps=2")
    assert run_cli(*args, cwd=tmp_path).returncode == 0
    weights = (run / "model.safetensors").read_bytes()

    again = run_cli(*args, cwd=tmp_path)
    assert again.returncode == 2
    assert "already holds a finished run" in again.stderr and "overwrite=true" in again.stderr
    assert (run / "model.safetensors").read_bytes() == weights

    fresh = run_cli(*args, "overwrite=true", cwd=tmp_path)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    moved = list(tmp_path.glob("keep-me.old-*"))
    assert len(moved) == 1 and (moved[0] / "model.safetensors").read_bytes() == weights


def test_an_interrupted_run_resumes_from_its_newest_complete_checkpoint(tmp_path):
    run = tmp_path / "resume-me"
    first = run_cli("train", "recipe=sft/chat_tiny", f"project_name={run}", "training.max_steps=2",
                    "training.save_strategy=steps", "training.save_steps=2", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    # Make it look killed after checkpoint-2, with a half-written checkpoint-3 that must be ignored.
    (run / "run_state.json").write_text(json.dumps({"status": "running"}))
    (run / "checkpoint-3").mkdir()
    (run / "checkpoint-3" / "model.safetensors").write_bytes(b"torn write")

    plan = run_cli("plan", "recipe=sft/chat_tiny", f"project_name={run}", cwd=tmp_path)
    assert plan.returncode == 0 and "resumes from checkpoint-2" in plan.stdout

    second = run_cli("train", "recipe=sft/chat_tiny", f"project_name={run}", "training.max_steps=4",
                     "training.save_strategy=steps", "training.save_steps=2", cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resuming from checkpoint-2" in (run / "train.log").read_text()
    state = json.loads((run / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    # The restored history holds steps 1-2; this process itself trained and logged only steps 3 and 4.
    assert [h["step"] for h in state["log_history"] if "loss" in h] == [1, 2, 3, 4]
    printed = (second.stdout + second.stderr).count("'loss':")
    assert printed == 2, printed


def test_lora_run_saves_an_adapter_that_generates_with_the_training_template(tmp_path):
    run = tmp_path / "lora-run"
    result = run_cli("train", "recipe=sft/chat_tiny", "peft=lora", f"project_name={run}", "training.max_steps=3",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (run / "adapter_config.json").is_file() and (run / "adapter_model.safetensors").is_file()
    assert not (run / "model.safetensors").exists()

    gen = from_run(run)
    conversation = [{"role": "user", "content": "Name a planet."}, {"role": "assistant", "content": "Mars."}]
    trained = gen.tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=True)["input_ids"]
    prompt = gen.prompt_ids(messages=conversation[:1])
    assert list(trained[:len(prompt)]) == prompt  # generate feeds exactly the training prompt prefix
    assert gen.tokenizer.convert_tokens_to_ids("<|im_end|>") in gen.stop_ids
    assert isinstance(gen.complete(text="Name a planet.", max_new_tokens=5), str)


def test_bad_data_is_reported_before_any_model_loads(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text('{"text": "fine"}\n{"text": broken}\n')
    result = run_cli("train", "recipe=sft/chat_tiny", f"data.path={data}", f"project_name={tmp_path / 'r'}",
                     "training.lrr=1", cwd=tmp_path)
    assert result.returncode == 2
    assert f"{data / 'train.jsonl'}:2" in result.stderr  # file and line
    assert "training.lrr" in result.stderr and "Did you mean 'training.lr'" in result.stderr
    assert not (tmp_path / "r").exists()
    assert "launcher.worker" not in result.stdout
