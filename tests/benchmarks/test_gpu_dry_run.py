"""benchmarks/gpu.py, the one-go GPU benchmark, checked where there is no GPU: its FLOPs/MFU arithmetic on known
numbers, the Liger patch being undone after its rows, and `--dry-run` run as a user runs it (a subprocess), whose
results file must hold a row for every configuration with the expected columns, skipped rows with their reason,
no MFU without a GPU, and the CLI smoke rows with FSDP and ZeRO-3 planned on CPU (exit 0). The configurations and columns are
written out here, not read from the script, so a row the script stops producing fails the test."""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import types

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "benchmarks" / "gpu.py"

BENCH_COLUMNS = ["#", "configuration", "params (N)", "status", "real tokens/s/GPU", "real/computed tokens",
                 "FLOP/token", "MFU", "peak mem GiB", "step ms (median)", "GPU"]
SMOKE_COLUMNS = ["#", "check", "command", "result", "exit code", "seconds", "last lines (failure or refusal)"]
CONFIGURATIONS = {
    "1B, full, sdpa, packed, ckpt off, liger off",
    "1B, full, fa2, packed, ckpt off, liger off",
    "1B, full, sdpa, padded, ckpt off, liger off",
    "1B, full, sdpa, packed, ckpt on, liger off",
    "1B, full, sdpa, packed, ckpt off, liger on",
    "1B, full, fa2, packed, ckpt off, liger on",
    "1B, lora, sdpa, packed, ckpt off, liger off",
    "1B, lora, sdpa, packed, ckpt on, liger off",
    "1B, full, fa2, padded, ckpt off, liger off",
    "0.5B, full, sdpa, packed, ckpt off, liger off",
    "0.5B, full, fa2, packed, ckpt off, liger off",
    "0.5B, lora, sdpa, packed, ckpt off, liger off",
    "0.5B, full, sdpa, padded, ckpt off, liger off",
}
SMOKES = {"CLI smoke: distributed=fsdp", "CLI smoke: distributed=zero3"}


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
    ("NVIDIA H200", 989.4e12), ("NVIDIA H100 80GB HBM3", 989.4e12), ("NVIDIA H100 PCIe", 756e12),
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


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """One `python benchmarks/gpu.py --dry-run --results FILE` (about 40 s here); benchmarks/RESULTS.md must not
    change."""
    results = tmp_path_factory.mktemp("gpu") / "results.md"
    real = REPO / "benchmarks" / "RESULTS.md"
    before = real.read_bytes() if real.exists() else None
    out = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--results", str(results)], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert (real.read_bytes() if real.exists() else None) == before, "the dry run wrote to benchmarks/RESULTS.md"
    return out, results


def test_dry_run_exits_0_and_writes_one_section(dry_run):
    out, results = dry_run
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = results.read_text()
    assert text.count("## GPU benchmark (benchmarks/gpu.py) — ") == 1
    assert re.search(r"## GPU benchmark \(benchmarks/gpu\.py\) — \d{4}-\d\d-\d\d .*, CPU \(dry run\), "
                     r"torch \S+, transformers \S+, peft \S+", text)


def test_dry_run_has_every_configuration_with_the_expected_columns(dry_run):
    bench, smoke, target = tables(dry_run[1].read_text())
    assert bench[0][None] == BENCH_COLUMNS
    assert smoke[0][None] == SMOKE_COLUMNS
    names = [r["configuration"] for r in bench[1:]]
    assert sorted(names) == sorted(CONFIGURATIONS)
    assert {r["check"] for r in smoke[1:]} == SMOKES
    assert sorted(int(r["#"]) for r in bench[1:] + smoke[1:]) == list(range(1, 16))
    assert target[0][None] == ["target", "measured", "verdict"]


def test_dry_run_rows(dry_run):
    bench = tables(dry_run[1].read_text())[0][1:]
    for row in bench:
        name, status = row["configuration"], row["status"]
        if ", fa2, " in name or "liger on" in name:
            # No CUDA here: these rows are skipped, with the reason.
            assert status.startswith("skipped: ") and "CUDA GPU" in status, row
            assert row["MFU"] == "—" and row["real tokens/s/GPU"] == "—"
            continue
        assert status == "ok", row                            # every sdpa path runs on CPU
        n, flops = number(row["params (N)"]), number(row["FLOP/token"])
        assert n > 0 and number(row["real tokens/s/GPU"]) > 0 and number(row["step ms (median)"]) > 0
        assert row["MFU"] == "n/a (no GPU)" and row["peak mem GiB"] == "n/a (no GPU)"
        if ", lora, " in name:
            assert 4 * n < flops < 6 * n, row                 # 4N + attention
        else:
            assert 6 * n < flops < 7 * n, row                 # 6N + attention (tiny model: small share)
        real_share = int(row["real/computed tokens"].rstrip("%"))
        assert real_share == 100 if ", packed, " in name else real_share < 100, row
        assert row["GPU"] == "CPU (dry run)"


def test_dry_run_cli_smoke_rows_plan_fsdp_and_zero3_on_cpu(dry_run):
    smoke = {r["check"]: r for r in tables(dry_run[1].read_text())[1][1:]}
    fsdp, zero3 = smoke["CLI smoke: distributed=fsdp"], smoke["CLI smoke: distributed=zero3"]
    for row in (fsdp, zero3):
        assert row["exit code"] == "0" and row["result"].startswith("planned"), row
    assert "tunelaunch plan" in fsdp["command"] and "distributed.num_processes=1" in fsdp["command"]


def test_an_exhausted_budget_skips_every_row_and_still_writes(tmp_path):
    results = tmp_path / "results.md"
    out = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--budget", "0", "--results", str(results)],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    bench, smoke, _ = tables(results.read_text())
    assert len(bench) - 1 == len(CONFIGURATIONS) and len(smoke) - 1 == len(SMOKES)
    assert {r["status"] for r in bench[1:]} == {"skipped: time budget"}
    assert {r["result"] for r in smoke[1:]} == {"skipped: time budget"}
