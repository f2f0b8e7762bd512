"""benchmarks/gpu.py, the one-go GPU benchmark, checked where there is no GPU: its FLOPs/MFU arithmetic on known
numbers, the Liger patch being undone after its rows, and `--dry-run --results DIR` run as a user runs it (a
subprocess): DIR/gpu.jsonl holds a line per row and DIR/gpu.md the section in RESULTS.md's format, with every row,
the expected columns, skipped rows with their reason, no MFU without a GPU, the CLI smoke rows planned on CPU and
one trained for real (its loss and tokens/s read by the probe). A run stopped by SIGTERM or by its budget's alarm
leaves the rows done so far and kills the smoke row's whole process group; `results.py merge` replaces the GPU
section, never duplicates it. Row ids and columns are written out here, not read from the script, so a row the
script stops producing fails the test."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
import types

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "benchmarks" / "gpu.py"

CHECK_COLUMNS = ["#", "row", "check", "status", "measured"]
BENCH_COLUMNS = ["#", "row", "configuration", "params (N)", "status", "real tokens/s/GPU", "real/computed tokens",
                 "FLOP/token", "MFU (datasheet)", "MFU (matmul ceiling)", "peak mem GiB", "step ms (median)",
                 "loss first → last"]
SMOKE_COLUMNS = ["#", "row", "check", "command", "status", "exit code", "seconds", "tokens/s", "MFU (datasheet)",
                 "MFU (matmul ceiling)", "peak mem GiB", "loss first → last", "last lines (failure)"]
ROWS = ["matmul", "packed-equality", "1b-full-product-packed", "1b-full-sdpa-padded", "1b-full-sdpa-packed",
        "smoke-fsdp", "smoke-zero3", "smoke-qlora", "smoke-bf16-ckpt", "smoke-liger", "smoke-compile",
        "1b-full-product-packed-ckpt", "1b-full-product-packed-liger", "1b-lora-product-packed",
        "1b-full-fa2-packed", "0.5b-full-product-packed", "0.5b-lora-product-packed", "0.5b-full-sdpa-padded"]
CHECKS = {"matmul", "packed-equality"}
SMOKES = {r for r in ROWS if r.startswith("smoke-")}


def load_script():
    """benchmarks/ is no package: the script is loaded from its file, once (it imports torch only inside
    functions). It is registered before it runs, as its dataclasses look their module up."""
    if "benchmarks_gpu" not in sys.modules:
        spec = importlib.util.spec_from_file_location("benchmarks_gpu", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules["benchmarks_gpu"] = module
        spec.loader.exec_module(module)
    return sys.modules["benchmarks_gpu"]


def tables(text: str) -> list[list[dict]]:
    """Every Markdown table of a text, as lists of {column: cell}; the header is kept under the key None."""
    found, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("| ") and i + 1 < len(lines) and lines[i + 1].startswith("| ---"):
            header = split_row(lines[i])
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("| "):
                rows.append(dict(zip(header, split_row(lines[i]))))
                i += 1
            found.append([{None: header}] + rows)
        else:
            i += 1
    return found


def split_row(line: str) -> list[str]:
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def number(cell: str) -> float:
    return float(cell.replace(",", ""))


# ---------------------------------------------------------------------------------------------------------------


def test_flops_per_token_and_mfu_on_known_numbers():
    gpu = load_script()
    flops = gpu.model_flops_per_token(1e9, 0, 0, 0)
    assert flops == 6e9                                       # 6N per token, full fine-tune
    assert flops * 1000 == 6e12                               # 1000 tokens/s -> 6e12 FLOP/s
    assert gpu.mfu(flops, 1000, 989.4e12) == pytest.approx(6e12 / 989.4e12)
    assert gpu.mfu_cell(flops, 1000, "NVIDIA H100 80GB HBM3") == "0.606%"
    assert gpu.model_flops_per_token(1e9, 0, 0, 0, lora=True) == 4e9            # no weight gradients
    assert gpu.model_flops_per_token(0, 16, 2048, 1000) == 12 * 16 * 2048 * 1000  # attention, full or LoRA
    assert gpu.model_flops_per_token(0, 16, 2048, 1000, lora=True) == 393_216_000
    assert gpu.effective_seq_len([2, 4]) == pytest.approx((4 + 16) / 6)


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H200", 989.4e12), ("NVIDIA H200 NVL", 835.5e12), ("NVIDIA H100 80GB HBM3", 989.4e12),
    ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA A100 80GB PCIe", 312e12), ("NVIDIA L40S", 362e12),
    ("NVIDIA A10", None), ("NVIDIA L40", None), ("NVIDIA H100 NVL", None), ("", None),
])
def test_peak_table(name, peak):
    assert load_script().peak_bf16_flops(name) == peak


def test_mfu_cell_says_why_it_is_omitted():
    gpu = load_script()
    assert gpu.mfu_cell(6e9, 1000, None) == "n/a (no GPU)"
    assert gpu.mfu_cell(6e9, 1000, "NVIDIA A10") == "n/a (unknown bf16 peak for NVIDIA A10)"
    assert gpu.mfu_cell(6e9, 66e3, "NVIDIA H200") == "40%"


def test_liger_patches_are_undone(monkeypatch):
    """apply_liger_kernel_to_llama rebinds names in transformers' modeling_llama; a fake one does the same here,
    and every later row must see the originals again."""
    from transformers.models.llama import modeling_llama

    gpu = load_script()
    originals = (modeling_llama.apply_rotary_pos_emb, modeling_llama.LlamaRMSNorm,
                 modeling_llama.LlamaForCausalLM.forward)

    def fake_apply(model=None, **kwargs):
        modeling_llama.apply_rotary_pos_emb = "liger rope"
        modeling_llama.LlamaRMSNorm = "liger norm"
        modeling_llama.LlamaForCausalLM.forward = "liger forward"
        modeling_llama.liger_extra = True

    fake = types.ModuleType("liger_kernel.transformers")
    fake.apply_liger_kernel_to_llama = fake_apply
    monkeypatch.setitem(sys.modules, "liger_kernel", types.ModuleType("liger_kernel"))
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", fake)
    with gpu.liger_applied(object()):
        assert modeling_llama.apply_rotary_pos_emb == "liger rope"
    assert (modeling_llama.apply_rotary_pos_emb, modeling_llama.LlamaRMSNorm,
            modeling_llama.LlamaForCausalLM.forward) == originals
    assert not hasattr(modeling_llama, "liger_extra")


# ---------------------------------------------------------------------------------------------------------------


def run_script(*args, timeout=600):
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def rows_of(folder):
    return [json.loads(line) for line in (folder / "gpu.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """One `python benchmarks/gpu.py --dry-run --results DIR` (about a minute here); benchmarks/RESULTS.md must not
    change."""
    folder = tmp_path_factory.mktemp("gpu")
    real = REPO / "benchmarks" / "RESULTS.md"
    before = real.read_bytes()
    out = run_script("--dry-run", "--results", str(folder))
    assert real.read_bytes() == before, "the dry run wrote to benchmarks/RESULTS.md"
    return out, folder


def test_dry_run_exits_0_and_writes_one_section_and_a_line_per_row(dry_run):
    out, folder = dry_run
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = (folder / "gpu.md").read_text()
    assert text.startswith("<!-- section: gpu -->\n## GPU benchmark (benchmarks/gpu.py)\n")
    assert text.rstrip().endswith("<!-- end: gpu -->") and text.count("<!-- section: gpu -->") == 1
    assert re.search(r"_\d{4}-\d\d-\d\d \d\d:\d\d UTC · CPU \(dry run\) · torch \S+, transformers \S+, peft \S+", text)
    assert [r["row"] for r in rows_of(folder)] == ROWS
    assert all(r["status"] for r in rows_of(folder))


def test_dry_run_has_every_row_with_the_expected_columns(dry_run):
    checks, bench, smoke, target = tables((dry_run[1] / "gpu.md").read_text())
    assert checks[0][None] == CHECK_COLUMNS and bench[0][None] == BENCH_COLUMNS and smoke[0][None] == SMOKE_COLUMNS
    assert [r["row"] for r in checks[1:] + bench[1:] + smoke[1:]] == \
        [r for r in ROWS if r in CHECKS] + [r for r in ROWS if r not in CHECKS | SMOKES] + \
        [r for r in ROWS if r in SMOKES]
    assert sorted(int(r["#"]) for r in checks[1:] + bench[1:] + smoke[1:]) == list(range(1, len(ROWS) + 1))
    assert target[0][None] == ["target", "measured", "verdict"]


def test_dry_run_checks(dry_run):
    rows = {r["row"]: r for r in rows_of(dry_run[1])}
    assert rows["matmul"]["status"] == "ok" and rows["matmul"]["tflops"] > 0
    equality = rows["packed-equality"]
    # on CPU the product's packed kernel is sdpa per sample: the same arithmetic as one sample alone
    assert equality["status"] == "ok" and equality["kernel"] == "sdpa per sample", equality
    assert equality["max_abs_diff"] <= 1e-4


def test_dry_run_throughput_rows(dry_run):
    bench = tables((dry_run[1] / "gpu.md").read_text())[1][1:]
    for row in bench:
        name, status = row["configuration"], row["status"]
        if ", fa2, " in name or "liger on" in name:
            # No CUDA here: these rows are skipped, with the reason.
            assert status.startswith("skipped: ") and "CUDA GPU" in status, row
            assert row["MFU (datasheet)"] == "—" and row["real tokens/s/GPU"] == "—"
            continue
        assert status == "ok", row                            # every sdpa path runs on CPU
        n, flops = number(row["params (N)"]), number(row["FLOP/token"])
        assert n > 0 and number(row["real tokens/s/GPU"]) > 0 and number(row["step ms (median)"]) > 0
        assert row["MFU (datasheet)"] == row["MFU (matmul ceiling)"] == row["peak mem GiB"] == "n/a (no GPU)"
        first, last = (float(x) for x in row["loss first → last"].split(" → "))
        assert 0 < last < 20 and 0 < first < 20, row
        if ", lora, " in name:
            assert 4 * n < flops < 6 * n, row                 # 4N + attention
        else:
            assert 6 * n < flops < 7 * n, row                 # 6N + attention (tiny model: small share)
        real_share = int(row["real/computed tokens"].rstrip("%"))
        assert real_share == 100 if ", packed, " in name else real_share < 100, row


def test_dry_run_smoke_rows_plan_each_gpu_path_and_train_one(dry_run):
    rows = {r["row"]: r for r in rows_of(dry_run[1])}
    for name in SMOKES - {"smoke-bf16-ckpt"}:
        row = rows[name]
        assert row["status"] == "planned" and row["exit code"] == "0", row
        assert row["command"].startswith("`tunelaunch plan recipe=sft/chat_tiny"), row
    assert "distributed=fsdp distributed.num_processes=1" in rows["smoke-fsdp"]["command"]
    assert "distributed=zero3" in rows["smoke-zero3"]["command"] and "peft=qlora" in rows["smoke-qlora"]["command"]
    trained = rows["smoke-bf16-ckpt"]
    assert trained["status"] == "ok" and trained["command"].startswith("`tunelaunch train "), trained
    first, last = (float(x) for x in trained["loss first → last"].split(" → "))
    assert last < first, trained                              # read from the training process by the probe
    assert number(trained["tokens/s"]) > 0


def test_only_reruns_the_rows_named_and_refuses_an_unknown_one(tmp_path):
    out = run_script("--dry-run", "--results", str(tmp_path), "--only", "1b-full-sdpa-padded,matmul")
    assert out.returncode == 0, out.stderr[-2000:]
    assert [r["row"] for r in rows_of(tmp_path)] == ["matmul", "1b-full-sdpa-padded"]
    bad = run_script("--dry-run", "--results", str(tmp_path), "--only", "matmul,no-such-row")
    assert bad.returncode != 0 and "no-such-row" in bad.stderr and "smoke-fsdp" in bad.stderr


def _smoke_processes(marker: str) -> list[str]:
    found = []
    for proc in os.listdir("/proc"):
        if proc.isdigit():
            try:
                cmdline = open(f"/proc/{proc}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in cmdline and "launcher.cli" in cmdline:
                found.append(cmdline)
    return found


def test_the_budget_alarm_stops_the_row_running_and_kills_its_process_group(tmp_path):
    """The dry run's CPU train of the tiny model takes ~18 s (its estimate is 10 s): an 11 s budget's alarm lands
    inside it. The row says it was stopped, the files are complete, exit 0, and no process of the training run is
    left."""
    out = run_script("--dry-run", "--results", str(tmp_path), "--only", "smoke-bf16-ckpt,0.5b-full-sdpa-padded",
                     "--budget", "11")
    assert out.returncode == 0, out.stderr[-2000:]
    rows = rows_of(tmp_path)
    assert [r["row"] for r in rows] == ["smoke-bf16-ckpt"], (rows, out.stdout[-3000:])
    assert rows[0]["status"] == "stopped: time budget", rows
    text = (tmp_path / "gpu.md").read_text()
    assert "| stopped: time budget |" in text and "skipped: not reached (time budget)" in text
    assert text.rstrip().endswith("<!-- end: gpu -->")
    assert _smoke_processes("smoke-bf16-ckpt-") == []


def test_sigterm_mid_run_leaves_the_rows_done_so_far(tmp_path):
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--dry-run", "--results", str(tmp_path)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    jsonl = tmp_path / "gpu.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if jsonl.is_file() and len(jsonl.read_text().splitlines()) >= 3:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the dry run ended before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    rows = rows_of(tmp_path)
    assert len(rows) >= 4 and [r["row"] for r in rows] == ROWS[:len(rows)]
    assert all(r["status"] in ("ok", "planned") for r in rows[:3]), rows
    assert rows[-1]["status"] in ("stopped: SIGTERM", "ok", "planned"), rows[-1]
    text = (tmp_path / "gpu.md").read_text()
    assert "skipped: not reached (SIGTERM)" in text and text.rstrip().endswith("<!-- end: gpu -->")


def test_results_merge_replaces_the_gpu_section_and_never_duplicates_it(tmp_path, dry_run):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n<!-- section: memory -->\n## Memory\n\nkept\n<!-- end: memory -->\n")
    merge = [sys.executable, str(REPO / "benchmarks" / "results.py"), "merge"]
    section = dry_run[1] / "gpu.md"
    for _ in range(2):
        out = subprocess.run([*merge, str(section), "--results", str(results)], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
    text = results.read_text()
    assert text.count("<!-- section: gpu -->") == 1 and text.count("<!-- end: gpu -->") == 1
    assert "## Memory\n\nkept\n" in text and section.read_text().strip() in text
    newer = tmp_path / "gpu.md"
    newer.write_text(section.read_text().replace("bf16 matmul ceiling", "bf16 matmul ceiling, rerun"))
    subprocess.run([*merge, str(newer), "--results", str(results)], check=True, capture_output=True)
    text = results.read_text()
    assert text.count("<!-- section: gpu -->") == 1 and "ceiling, rerun" in text and "kept" in text
    broken = tmp_path / "broken.md"
    broken.write_text("## GPU benchmark\nno markers\n")
    out = subprocess.run([*merge, str(broken), "--results", str(results)], capture_output=True, text=True)
    assert out.returncode == 2 and str(broken) in out.stderr and "<!-- section: NAME -->" in out.stderr
    assert results.read_text() == text


def test_without_a_gpu_the_real_run_refuses_before_writing_anything(tmp_path):
    out = run_script("--results", str(tmp_path / "out"))
    assert out.returncode == 2 and "no CUDA GPU here: run with --dry-run" in out.stderr
    assert not (tmp_path / "out").exists()
    bad = run_script("--dry-run", "--steps", "0")
    assert bad.returncode == 2 and "--steps must be at least 1" in bad.stderr
