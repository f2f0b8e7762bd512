"""From the user's side (`tunelaunch` in a subprocess): validation never reuses training rows, and a mistyped
data.path is refused with the local path it probably meant, before any model loads."""
import json
import shutil

from tests.conftest import REPO, run_cli

CHAT_FILE = REPO / "samples" / "chat" / "train.jsonl"  # 40 rows; recipe=sft/chat_tiny sets valid_split: valid


def test_a_single_file_with_the_recipes_valid_split_exits_2_naming_both_keys(tmp_path):
    result = run_cli("plan", "recipe=sft/chat_tiny", f"data.path={CHAT_FILE}", f"project_name={tmp_path / 'r'}",
                     cwd=tmp_path)
    assert result.returncode == 2, result.stdout[-2000:]
    assert "data.path / data.valid_split" in result.stderr and "single file" in result.stderr
    assert "data.valid_split=null" in result.stderr and "data.validation_fraction=0.05" in result.stderr
    assert "40 validation rows" not in result.stdout


def test_validation_fraction_is_stated_in_the_plan_and_prepare_tokenises_the_rest(tmp_path):
    args = ("recipe=sft/chat_tiny", f"data.path={CHAT_FILE}", "data.validation_fraction=0.1",
            f"project_name={tmp_path / 'r'}", f"data.cache_dir={tmp_path / 'cache'}")
    planned = run_cli("plan", *args, cwd=tmp_path)
    assert planned.returncode == 0, planned.stderr[-3000:]
    assert "36 train rows, 4 validation rows" in planned.stdout
    assert "validation: 10% of train.jsonl held out (4 rows, seed 42)" in planned.stdout

    prepared = run_cli("prepare", "--show", "0", *args, cwd=tmp_path)
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    assert "train: 0 of 36 samples truncated" in prepared.stdout and "valid: 4 rows -> 4 samples" in prepared.stdout


def test_training_with_validation_fraction_trains_on_the_remaining_rows(tmp_path):
    run = tmp_path / "run"
    result = run_cli("train", "recipe=sft/chat_tiny", f"data.path={CHAT_FILE}", "data.validation_fraction=0.1",
                     f"project_name={run}", "training.max_steps=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run / "manifest.json").read_text())["metrics"]["train_rows"] == 36


def test_a_misspelled_data_folder_exits_2_with_the_folder_it_meant(tmp_path):
    shutil.copytree(REPO / "samples" / "chat", tmp_path / "samples" / "chat")
    result = run_cli("plan", "recipe=sft/chat_tiny", "data.path=sampels/chat", f"project_name={tmp_path / 'r'}",
                     cwd=tmp_path)
    assert result.returncode == 2, result.stdout[-2000:]
    assert "data.path: sampels/chat is not a local folder or file. Did you mean samples/chat?" in result.stderr

    bare = run_cli("plan", "recipe=sft/chat_tiny", "data.path=mydata", f"project_name={tmp_path / 'r'}",
                   cwd=tmp_path)
    assert bare.returncode == 2, bare.stdout[-2000:]
    assert "hub dataset id only in the form org/name" in bare.stderr
