"""The README's "Mixtures, streaming, tool calls and reasoning" block, run as written: its bash block in a fresh
folder (with the repository's samples/ beside it, as in a checkout), `tunelaunch` on the PATH as an activated venv
has it."""
import json
import re

from tests.conftest import run_readme_block


def test_the_data_at_scale_block_runs_as_written(tmp_path):
    done, out = run_readme_block("### Mixtures, streaming, tool calls and reasoning", tmp_path, timeout=900)
    assert done.returncode == 0, out[-5000:]

    # the mixture: every source with its rows before and after weighting and the realised shares; samples labelled
    assert "== mixture (interleave, first_exhausted) of 3 sources as messages rows" in out
    shares = {name: float(share) for name, share in re.findall(
        r"data\.datasets\[\d\] \((chat|alpaca|qa)\)\s+\S+\s+[\d.]+%\s+\d+\s+\d+\s+([\d.]+)%", out)}
    assert set(shares) == {"chat", "alpaca", "qa"} and abs(sum(shares.values()) - 100) < 0.5, shares
    assert re.search(r"-- sample \d: \d+ tokens, \d+ trained, from data\.datasets\[\d\] \((chat|alpaca|qa)\)", out)
    run = tmp_path / "runs" / "sft-mixture-tiny"
    assert json.loads((run / "run_state.json").read_text())["status"] == "finished"
    manifest = json.loads((run / "manifest.json").read_text())
    hashed = [file for source in manifest["data_sources"] for file in source["files"]]
    assert {"train.jsonl", "alpaca.csv", "prompt_completion.parquet"} <= {p.rsplit("/", 1)[-1] for p in hashed}
    assert re.search(r"data: num_proc null -> 1 tokenising process\(es\) \((77 training rows|\d+ CPU core)", out)

    # the stream: trained to max_steps without counting its rows
    streamed = tmp_path / "runs" / "default-streamed"
    state = json.loads((streamed / "run_state.json").read_text())
    assert state["status"] == "finished" and state["global_step"] == 6
    assert json.loads((streamed / "manifest.json").read_text())["metrics"]["train_rows"] == "streamed"
    assert "streamed (its first 40 rows checked)" in out
    assert "rows are read (shuffled within windows of 50 rows" in out  # plan's note of data.shuffle_window
    # the streamed mixture: trained to max_steps, its shares drawn from the checked heads
    state = json.loads((tmp_path / "runs" / "sft-mixture-streamed" / "run_state.json").read_text())
    assert state["status"] == "finished" and state["global_step"] == 4
    assert "training draws the same way from the whole streams" in out

    # tool calls trained, the tool's result not; the reasoning trace shown but not trained
    assert '[[<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call><|im_end|>]]' in out
    assert "<|im_start|>tool\n4 C, rain<|im_end|>" in out and "[[4 C, rain" not in out
    assert re.search(r"<\|im_start\|>assistant\n<think>\n[^\[\]]+\n</think>\n\n\[\[42\.<\|im_end\|>\]\]", out)
    assert "Plan (valid):\n  run        runs/sft-chat-tiny" in out
