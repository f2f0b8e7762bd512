"""The README's "Your own data" walk, run as written: its bash block in a fresh folder (with the repository's
samples/ beside it, as in a checkout), `tunelaunch` on the PATH as an activated venv has it."""
import json
import re

from tests.conftest import run_readme_block


def test_the_own_data_walk_runs_as_written(tmp_path):
    done, out = run_readme_block("## Your own data", tmp_path, timeout=900)
    assert done.returncode == 0, out[-5000:]
    # plan: the file's held-out rows and the run's name, stated
    assert "validation: 20% of train.csv held out (2 rows, seed 42); training uses the other 8" in out
    assert "project_name: runs/sft-my_data (from the method and the data" in out
    # prepare: the question masked, the answer trained
    assert "Prepared prompt_completion rows for the sft trainer: my_data" in out
    assert re.search(r"<\|im_start\|>user\n.+<\|im_end\|>\n<\|im_start\|>assistant\n\[\[.+<\|im_end\|>\]\]", out)
    run = tmp_path / "runs" / "sft-my_data"
    state = json.loads((run / "run_state.json").read_text())
    assert state["status"] == "finished" and state["global_step"] == 4
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["metrics"]["train_rows"] == 8
    # chat answered (a random tiny model: any text) without the bars of loading a local model
    assert "Loading weights" not in out
    # the ShareGPT file prepared as chat turns
    assert "Prepared messages rows for the sft trainer: samples/sharegpt/train.json" in out
    assert "What is the boiling point of water?<|im_end|>" in out
