"""benchmarks/preprocessing.py --quick as a user runs it (a subprocess, the tiny tokenizer, 1,000 rows): its
self-check passes (our ids and labels equal transformers' `apply_chat_template(return_assistant_tokens_mask=True)`,
2 processes prepare what 1 does), every arm ran on every row with both process counts (and on 1 and 2 cores), and
RESULTS.md is left as it was. Timings are not asserted (they are benchmarks/RESULTS.md's, from a full run)."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO

RESULTS_MD = REPO / "benchmarks" / "RESULTS.md"


def test_preprocessing_quick_runs_and_checks_itself(tmp_path):
    before = RESULTS_MD.read_bytes()
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "preprocessing.py"), "--quick", "--rows", "400",
                          "--json", str(tmp_path / "m.json")], cwd=tmp_path, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert RESULTS_MD.read_bytes() == before, "preprocessing.py --quick wrote to benchmarks/RESULTS.md"
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["self_check"].startswith("Self-check: on 200 rows our ids and labels equal transformers'")
    tokens = {m[f"{arm}/{workers}/{state}"]["tokens"] for arm in ("ours/None", "bare/False", "bare/True")
              for workers in (1, 2) for state in ("cold", "warm")}
    rows = {m[f"{arm}/{workers}/{state}"]["rows"] for arm in ("ours/None", "bare/False", "bare/True")
            for workers in (1, 2) for state in ("cold", "warm")}
    assert rows == {400} and len(tokens) == 1 and tokens.pop() > 400 * 10
    assert m["ratio"] > 0 and m["scaling"] > 0 and m["core_scaling"] > 0
    # the CPU measure behind the 2-process ceiling: busy cores of one process, at most the cores it may use
    busy = m["busy"]
    assert 0 < busy["ours"] <= busy["cores"] + 0.2 and 0 < busy["bare"] <= busy["cores"] + 0.2
    assert "Why, measured: one process of ours keeps" in out.stdout
    assert m["side_by_side"] > 0.5 and "in two processes side by side on the two cores takes" in out.stdout
    assert "Ours, cold, 2 processes:" in out.stdout and "n/a" not in out.stdout
