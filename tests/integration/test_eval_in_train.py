"""eval.tasks scores a run when its training ends (rank 0, after the run is marked finished): the harness's JSON
in <run>/eval/, the scores in the model card, the manifest and `tunelaunch runs`."""
import json

from tests.conftest import REPO, run_cli

TASK = REPO / "samples" / "eval" / "pirate.yaml"


def test_eval_tasks_score_the_run_when_training_ends(tmp_path):
    run = tmp_path / "scored"
    planned = run_cli("plan", "recipe=sft/chat_tiny", f"eval.tasks=[{TASK}]", "eval.limit=4", cwd=tmp_path)
    assert planned.returncode == 0, planned.stderr[-2000:]
    assert "eval: pirate, the first 4 examples of each, by rank 0 alone when training ends" in planned.stdout
    done = run_cli("train", "recipe=sft/chat_tiny", f"project_name={run}", "training.max_steps=2",
                   f"eval.tasks=[{TASK}]", "eval.limit=4", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((run / "run_state.json").read_text())["status"] == "finished"
    results = json.loads((run / "eval" / "pirate.json").read_text())
    acc = results["results"]["pirate"]["acc,none"]
    assert 0.0 <= acc <= 1.0
    assert json.loads((run / "manifest.json").read_text())["eval"]["scores"]["pirate/acc"] == acc
    assert "pirate" in (run / "README.md").read_text().split("## Evaluation", 1)[1]
    table = run_cli("runs", str(tmp_path), cwd=tmp_path)
    assert "pirate/acc" in table.stdout, table.stdout + table.stderr


def test_a_misspelt_eval_task_stops_the_run_before_it_starts(tmp_path):
    done = run_cli("train", "recipe=sft/chat_tiny", f"project_name={tmp_path / 'never'}", "eval.tasks=[arc_easyy]",
                   cwd=tmp_path)
    assert done.returncode == 2
    assert "eval.tasks" in done.stderr and "arc_easy" in done.stderr, done.stderr[-2000:]
    assert not (tmp_path / "never").exists()
