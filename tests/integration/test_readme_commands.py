"""README commands run as commands: a local `train -m` sweep (one run folder per combination, all finished) and
`generate` on the finished run (the CLI, not its library function)."""
import json

from tests.conftest import run_cli


def test_train_m_sweep_runs_every_trial_and_generate_answers(tmp_path, tiny_model):
    done = run_cli("train", "-m", "recipe=sft/chat_tiny", "training.lr=1e-4,3e-4", "training.max_steps=2",
                   cwd=tmp_path)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "== sweep: 2 of 2 jobs succeeded" in done.stdout
    trials = sorted((tmp_path / "runs" / "sft-chat-tiny").glob("*/run_state.json"))
    assert [t.parent.name for t in trials] == ["training.lr=0.0001", "training.lr=0.0003"]
    assert all(json.loads(t.read_text())["status"] == "finished" for t in trials)
    answer = run_cli("generate", str(trials[0].parent), "--prompt", "Hello?", "--max-new-tokens", "4", cwd=tmp_path)
    assert answer.returncode == 0, answer.stderr[-3000:]
