"""The real `tunelaunch` console script (launcher/cli.py), run as a user runs it: on AutoTrain's documented
config.yaml, on AutoTrain files whose trainer does not read a key they set, and `explain` / `recipes`.
How long `plan` takes is measured by benchmarks/plan_time.py, not asserted here."""
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from launcher.embedded import build_tiny_llama
from tests.conftest import cli_env, run_cli, tunelaunch
from tests.unit.helpers import SAMPLES, SEED_CONFIG

PREFERENCE = SAMPLES / "preference"
PLANTED_TOKEN = "hf_tlTESTplanted0d15ea5e5ecret"
PLANTED_USER = "tl-test-user"

PROJECT = "autotrain-llama3-8b-orpo"


def edit(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


def seed_config(model: Path, block_size: int, model_max_length: int) -> str:
    text = edit(SEED_CONFIG, "task: llm-orpo", "task: llm-sft")
    text = edit(text, "base_model: meta-llama/Meta-Llama-3-8B-Instruct", f"base_model: {model}")
    text = edit(text, "path: argilla/distilabel-capybara-dpo-7k-binarized", f"path: {PREFERENCE}")
    text = edit(text, "block_size: 1024", f"block_size: {block_size}")
    return edit(text, "model_max_length: 8192", f"model_max_length: {model_max_length}")


# planted credentials: the tests below check that the token never reaches the output or the run folder
PLANTED_ENV = {"HF_TOKEN": PLANTED_TOKEN, "HF_USERNAME": PLANTED_USER}


class Run:
    """One CLI run, started at once (several run side by side): exit code, output, and the folder it ran in."""

    def __init__(self, args, cwd: Path):
        self.cwd = cwd
        self._process = subprocess.Popen(tunelaunch(*args), cwd=cwd, env=cli_env(**PLANTED_ENV), text=True,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._done = None

    def result(self):
        if self._done is None:
            stdout, stderr = self._process.communicate(timeout=300)
            self._done = self._process.returncode, stdout, stderr
        return self._done


@pytest.fixture(scope="module")
def tiny_model() -> Path:
    return build_tiny_llama()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model):
    # (a) the seed file: block_size lowered to 512 because the tiny model has only 512 positions
    #     (1024 is rightly refused for it), model_max_length left at the seed's 8192.
    good_dir = tmp_path_factory.mktemp("plan_ok")
    (good_dir / "config.yaml").write_text(seed_config(tiny_model, 512, 8192))
    # (b) block_size 4096 > model_max_length 1024. The model folder holds no weights at all: a plan that
    #     tried to load them would crash instead of reporting the configuration problem.
    bad_dir = tmp_path_factory.mktemp("plan_bad")
    weightless = bad_dir / "weightless-model"
    weightless.mkdir()
    for f in tiny_model.iterdir():
        if f.is_file() and not f.name.endswith((".safetensors", ".bin")):
            shutil.copy(f, weightless / f.name)
    (bad_dir / "config.yaml").write_text(seed_config(weightless, 4096, 1024))
    started = {"good": Run(["plan", "--show-config", "--config", "config.yaml"], good_dir),
               "bad": Run(["plan", "--config", "config.yaml"], bad_dir)}
    for run in started.values():
        run.result()
    return started


def test_seed_config_plans(runs):
    code, stdout, stderr = runs["good"].result()
    assert code == 0, stderr
    assert stdout.startswith("Plan (valid):")
    assert "Launch command" in stdout
    assert "launcher.worker" in stdout
    assert f"{PROJECT}/config.yaml" in stdout
    # the translation reached the plan
    assert "trainer    sft (LoRA r=16, int4 base)" in stdout
    assert f"{PREFERENCE}" in stdout and "30 train rows" in stdout
    # AutoTrain's mixed_precision fp16: kept on a GPU, replaced by fp32 (and said so) on a CPU-only machine
    assert "mixed_precision: fp16" in stdout or "precision: fp16 needs a GPU" in stdout
    assert f"username: {PLANTED_USER}" in stdout


def test_seed_config_plan_never_shows_the_token(runs):
    code, stdout, stderr = runs["good"].result()
    assert code == 0, stderr
    assert PLANTED_TOKEN not in stdout
    assert PLANTED_TOKEN not in stderr
    assert "token: <redacted>" in stdout  # the token was read, and redacted


def test_plan_creates_no_run_folder(runs):
    runs["good"].result()
    assert not (runs["good"].cwd / PROJECT).exists()
    assert sorted(p.name for p in runs["good"].cwd.iterdir()) == ["config.yaml"]


def test_block_size_above_model_max_length_fails_fast_with_the_users_keys(runs):
    code, stdout, stderr = runs["bad"].result()
    assert code == 2, stderr
    assert "params.block_size" in stderr and "params.model_max_length" in stderr
    assert "4096" in stderr and "1024" in stderr
    assert "Nothing was started." in stderr
    assert "Launch command" not in stdout
    assert PLANTED_TOKEN not in stdout + stderr
    # No model was loaded: the weightless model folder did not make it crash, nothing says "Loading",
    # no traceback, no run folder.
    assert "Traceback" not in stderr
    assert "Loading" not in stderr and "Loading" not in stdout
    assert not (runs["bad"].cwd / PROJECT).exists()


def test_explain_prints_the_docstring(tmp_path):
    out = run_cli("explain", "training.lr", cwd=tmp_path, env=PLANTED_ENV, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("training.lr  (a number, default 3.0e-05)")
    assert "Peak learning rate. [lr]" in out.stdout
    assert "training.lr" in out.stdout and "training.epochs" not in out.stdout


def test_explain_unknown_key_fails(tmp_path):
    out = run_cli("explain", "training.nosuch", cwd=tmp_path, env=PLANTED_ENV, timeout=60)
    assert out.returncode == 2
    assert "training.nosuch" in out.stderr


def test_recipes_lists_chat_tiny(tmp_path):
    out = run_cli("recipes", cwd=tmp_path, env=PLANTED_ENV, timeout=60)
    assert out.returncode == 0, out.stderr
    names = [line.split()[0] for line in out.stdout.splitlines() if line.strip()]
    assert "sft/chat_tiny" in names
    assert "tunelaunch train recipe=sft/chat_tiny" in out.stdout


# ---- AutoTrain files whose trainer does not read a key they set (or leave at AutoTrain's default)

def autotrain_doc(model: Path, task: str, data: str, **params) -> dict:
    return {"task": task, "base_model": str(model), "project_name": "scoped-run", "backend": "local",
            "data": {"path": str(SAMPLES / data), "train_split": "train", "valid_split": None},
            "params": params}


SCOPED = {
    # task llm: the default trainer, which never reads the prompt limits (max_prompt_length keeps its 128 > 32)
    "llm": ("llm", "text", {"block_size": 32}),
    # sft does not read them either, even when set above block_size
    "sft": ("llm-sft", "text", {"block_size": 32, "max_prompt_length": 300}),
    # dpo reads them: 128 > 32 is refused
    "dpo": ("llm-dpo", "preference", {"block_size": 32, "max_prompt_length": 128}),
}


@pytest.fixture(scope="module")
def scoped_runs(tmp_path_factory, tiny_model):
    started = {}
    for name, (task, data, params) in SCOPED.items():
        folder = tmp_path_factory.mktemp(f"scoped_{name}")
        (folder / "config.yaml").write_text(yaml.safe_dump(autotrain_doc(tiny_model, task, data, **params)))
        started[name] = Run(["plan", "--show-config", "--config", "config.yaml"], folder)
    return {name: run.result() for name, run in started.items()}


def test_task_llm_with_a_small_block_size_plans(scoped_runs):
    code, stdout, stderr = scoped_runs["llm"]
    assert code == 0, stderr
    assert "trainer    default (full fine-tune)" in stdout and "block_size: 32" in stdout
    assert "max_prompt_length" not in stderr


def test_sft_with_max_prompt_length_above_block_size_plans_with_a_note(scoped_runs):
    code, stdout, stderr = scoped_runs["sft"]
    assert code == 0, stderr
    assert "trainer    sft" in stdout
    assert "data.max_prompt_length: 300 is not used by the sft trainer (read by dpo, orpo" in stdout
    assert "exceeds" not in stdout + stderr


def test_dpo_with_max_prompt_length_above_block_size_exits_2_naming_both_keys(scoped_runs):
    code, stdout, stderr = scoped_runs["dpo"]
    assert code == 2, stdout + stderr
    assert ("data.max_prompt_length (params.max_prompt_length) / data.block_size (params.block_size): "
            "max_prompt_length 128 exceeds block_size 32") in stderr
    assert "Nothing was started." in stderr and "Launch command" not in stdout


# ---- train's run folder: the resolved configuration and the launch files, written once

def test_write_run_writes_the_resolved_configuration_and_the_launch_files(tmp_path, monkeypatch):
    from launcher.planning import write_run
    from launcher.hardware import Hardware
    from launcher.planning import make_plan
    from launcher.run_dir import read_config

    monkeypatch.setenv("HF_TOKEN", PLANTED_TOKEN)
    plan = make_plan(None, ["recipe=sft/chat_tiny", f"project_name={tmp_path / 'run'}", "distributed=zero2",
                            "distributed.num_processes=2", f"hub.token={PLANTED_TOKEN}"], Hardware())
    folder, launch = write_run(plan)
    assert folder == tmp_path / "run"
    assert sorted(f.name for f in folder.iterdir()) == [
        "accelerate_config.yaml", "config.yaml", "data_hash.json", "deepspeed.json", "launch.json",
        "run_state.json", "training_params.json"]
    assert read_config(folder) == plan.cfg  # the token comes back from HF_TOKEN, never from the file
    for f in folder.iterdir():
        assert PLANTED_TOKEN not in f.read_text(), f
    info = json.loads((folder / "launch.json").read_text())
    assert (info["backend"], info["world_size"]) == ("deepspeed", 2)
    assert launch.command[-1] == str(folder / "config.yaml")
