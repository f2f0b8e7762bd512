"""The CPU benchmarks of issue #11 kept from rotting: the generated data, the RESULTS.md writer, the token ratios
in the default suite (seconds; preprocessing's `--quick`: test_preprocessing_quick.py); the training scripts' `--quick` runs as a user
runs it (a subprocess, marked slow: a minute or two each). The measurements (`--json`) must make sense: the
assertions are on what was measured (ratios, token counts, losses), never on times, and a quick run must leave
benchmarks/RESULTS.md as it was."""
from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO))  # benchmarks/ is a folder of scripts, imported here as a package

from benchmarks import dataset, results  # noqa: E402

RESULTS_MD = REPO / "benchmarks" / "RESULTS.md"


def test_generated_rows_are_deterministic_and_long_tailed():
    rows = dataset.rows(2000, seed=0)
    assert rows == dataset.rows(2000, seed=0)
    assert dataset.rows(50, seed=0) == rows[:50]              # a shorter run is a prefix of a longer one
    assert dataset.rows(50, seed=1) != rows[:50]
    for row in rows[:200]:
        roles = [m["role"] for m in row["messages"]]
        assert roles in (["user", "assistant"], ["system", "user", "assistant"])
        assert all(m["content"].strip() for m in row["messages"])
    words = sorted(len(r["messages"][-1]["content"].split()) for r in rows)
    assert words[0] >= dataset.MIN_REPLY_WORDS and words[-1] == dataset.MAX_REPLY_WORDS  # capped tail reached
    assert 90 <= statistics.median(words) <= 160
    assert sum(w < 20 for w in words) > 20                    # short replies too
    assert statistics.fmean(words) > 1.4 * statistics.median(words)  # long-tailed: mean well above the median


def test_dataset_cli_writes_the_rows(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "dataset.py"), "--rows", "30", "--out",
                          str(tmp_path / "d" / "chat.jsonl"), "--seed", "3"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = (tmp_path / "d" / "chat.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == dataset.rows(30, seed=3)


def test_write_section_replaces_only_its_own(tmp_path):
    path = tmp_path / "RESULTS.md"
    results.write_section("a", "Title A", ["| x |", "| --- |", "| 1 |"], path=path)
    results.write_section("b", "Title B", ["b body"], quick=True, path=path)
    first = path.read_text()
    assert first.startswith(results.PREAMBLE)
    results.write_section("a", "Title A", ["| x |", "| --- |", "| 2 |"], path=path)
    text = path.read_text()
    assert "| 2 |" in text and "| 1 |" not in text
    assert text.count("<!-- section: a -->") == 1 and text.index("section: a") < text.index("section: b")
    b = text[text.index("<!-- section: b -->"):]
    assert b == first[first.index("<!-- section: b -->"):]   # the other section, byte for byte
    assert "QUICK run" in b and "full run" in text[:text.index("section: b")]
    for name in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "cores", "torch threads"):
        assert name in text


def test_quick_publish_prints_without_writing(tmp_path, capsys):
    import argparse

    parser = argparse.ArgumentParser()
    results.add_arguments(parser)
    path = tmp_path / "R.md"
    results.publish(parser.parse_args(["--quick", "--results", str(path)]), "s", "T", ["body"])
    assert not path.exists() and "body" in capsys.readouterr().out
    results.publish(parser.parse_args(["--quick", "--write", "--results", str(path)]), "s", "T", ["body"])
    assert "QUICK run" in path.read_text()


def test_cross_document_share_on_known_lengths():
    from benchmarks.packing import cross_document_share

    # Blocks of 4: [a a a b] [b b c c]: b's first token (block 1) and both c tokens start mid-block.
    assert cross_document_share([3, 3, 2], 4) == pytest.approx(3 / 8)
    assert cross_document_share([4, 4], 4) == 0.0


def test_token_ratios_on_generated_rows(tmp_path):
    """The packing table of benchmarks/packing.py on 120 rows and the tiny tokenizer: ours (best fit,
    padding-free) computes no padding and keeps samples apart; padding wastes; concatenation mixes samples."""
    from benchmarks.packing import LENGTHS, model_folder, ratio_table

    lines, figures = ratio_table(dataset.write(120, tmp_path / "chat.jsonl"), model_folder(quick=True))
    ratios = figures["ratios"]
    for length in LENGTHS:
        assert ratios[(length, "bfd")] >= 0.99
        assert ratios[(length, "none")] < ratios[(length, "bfd")]
        assert ratios[(length, "wrapped")] > max(0.95, ratios[(length, "none")])  # only its last block pads
    assert ratios[(2048, "none")] < ratios[(512, "none")]     # longer limit, longer tail padded to
    assert figures["isolation"] < 1e-4                        # a packed sample sees nothing of its neighbour
    assert sum("met" in line for line in lines) == len(LENGTHS)


def run_quick(script: str, tmp_path: Path, *extra: str) -> dict:
    before = RESULTS_MD.read_bytes()
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--quick", "--json",
                          str(tmp_path / "m.json"), *extra], cwd=tmp_path, capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert RESULTS_MD.read_bytes() == before, f"{script} --quick wrote to benchmarks/RESULTS.md"
    return json.loads((tmp_path / "m.json").read_text())


@pytest.mark.slow
def test_packing_quick(tmp_path):
    m = run_quick("packing.py", tmp_path)
    assert m["ratios"]["512/bfd"] >= 0.99 and m["ratios"]["512/none"] < m["ratios"]["512/bfd"]
    assert m["trained_tokens"]["padded"] == m["trained_tokens"]["packed"] > 0
    losses = m["losses"]
    assert m["finite"] and all(losses["padded"]) and all(losses["packed"])
    assert len(losses["packed"]) < len(losses["padded"])       # fewer, fuller steps
    # Same samples, per-token loss: the curves over matching token counts stay together (tiny model, low lr).
    assert m["curve_gap"] < 0.05
    assert abs(losses["padded"][0] - losses["packed"][0]) / losses["padded"][0] < 0.05
    assert m["speedup"] > 0


@pytest.mark.slow
def test_trl_by_hand_quick(tmp_path):
    m = run_quick("trl_by_hand.py", tmp_path)
    arms = m["lora"]
    assert len(arms) == 3
    for name, arm in arms.items():
        assert arm["ok"], f"{name}: {arm['output']}"
        assert arm["steps"] == 6 and arm["first_step_s"] > 0 and arm["median_step_s"] > 0, name
        assert arm["peak_rss_mib"] > 100, name
        assert math.isfinite(arm["final_loss"]), name
    # The same SFT three ways: the same adapters, and with the same data order, loss mask and seed the same loss
    # (tolerance: kernels).
    trainable = {arm["trainable_params"] for arm in arms.values()}
    assert len(trainable) == 1 and trainable.pop() > 0, trainable
    losses = [arm["final_loss"] for arm in arms.values()]
    assert max(losses) - min(losses) < 0.01 * min(losses), losses
