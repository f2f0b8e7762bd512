"""What only a GPU can show, measured in one go (under 8 minutes on one H200) and appended to benchmarks/RESULTS.md:

1. Training throughput of Llama-shaped ~0.5B and ~1B models built from a LlamaConfig with random weights (nothing
   is downloaded: the GPU machines this is run on reach no network), one row per configuration: sdpa vs
   flash_attention_2, padded vs packed (padding-free) batches, gradient checkpointing on/off, LoRA (r=16,
   all-linear) vs full fine-tune (AdamW), Liger kernels on/off. Each row gives real tokens/s per GPU (padding not
   counted), MFU against the GPU's dense bf16 peak, peak memory and the median step time.
2. A smoke test of the product's GPU launch path: `tunelaunch train recipe=sft/chat_tiny training.max_steps=3` with
   `distributed=fsdp` and with `distributed=zero3`, one process each, as a user runs it (a subprocess).

The batches are tokenizer-free: random token ids, sample lengths drawn from a seeded log-normal (long-tailed, as
chat data is). The same samples make both layouts: padded rows pad each step's samples to the longest with an
attention mask; packed rows concatenate them into one row whose position ids restart per sample (the padding-free
path `data.packing=true` takes), so the two differ only in the computation padding wastes. Precision follows the
product (launcher/models.py): full fine-tunes keep fp32 master weights under bf16 autocast, LoRA keeps the frozen
base in bf16; the optimizer is torch's AdamW, as `training.optimizer=adamw_torch` (the default) gives.

Rows run in priority order against a deadline (`--budget`, default 7.5 min): a row that would overrun it is
recorded as "skipped: time budget", and whatever was measured is written even when a row fails or the run is
interrupted (Ctrl-C, SIGTERM).

  python benchmarks/gpu.py                      # on a GPU machine: appends to benchmarks/RESULTS.md
  python benchmarks/gpu.py --dry-run            # on CPU: the whole control flow on a tiny Llama, in under a minute,
                                                # written to a temporary file (or --results FILE), never RESULTS.md

The dry run is what tests/benchmarks/test_gpu_dry_run.py runs: every configuration path on a tiny fp32 Llama, the
flash-attn and Liger rows skipped with their reason, MFU omitted ("no GPU"), and `tunelaunch plan` in place of the
CLI train runs (FSDP and ZeRO-3 must both plan on CPU, exit code 0).
This file imports nothing from launcher/ and only torch, transformers and peft beside the standard library, so it
also runs under a GPU image's own Python where tunelaunch's other dependencies are missing (the CLI smoke rows then
say which are).
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import importlib.metadata
import importlib.util
import json
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS = REPO / "benchmarks" / "RESULTS.md"
SECTION_TITLE = "## GPU benchmark (benchmarks/gpu.py)"
MFU_TARGET = 0.40  # the 1B full fine-tune's target

# Dense bf16 peaks (no sparsity), FLOP/s, from the vendors' datasheets, matched on torch's device name. The H200
# has the H100 SXM's arithmetic. Order matters: the first pattern found in the name wins ("H100 PCIe" before
# "H100"). H100 NVL (a different peak) is deliberately unknown rather than matched as an SXM part.
PEAK_BF16_FLOPS = (
    ("H100 NVL", None),
    ("H100 PCIe", 756e12),
    ("H200", 989.4e12),
    ("H100", 989.4e12),
    ("A100", 312e12),
    ("L40S", 362e12),
)

# Llama-3.2-1B's shape (1.24B parameters, tied embeddings) and a ~0.5B one with the same vocabulary and head size.
SHAPES = {
    "0.5B": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                 num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
    "1B": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
}
# The dry run's stand-ins: same row structure, a CPU-sized Llama.
TINY_SHAPES = {
    "0.5B": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1024, tie_word_embeddings=True),
    "1B": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=1024, tie_word_embeddings=True),
}

ATTN_SHORT = {"sdpa": "sdpa", "flash_attention_2": "fa2"}
BENCH_COLUMNS = ("#", "configuration", "params (N)", "status", "real tokens/s/GPU", "real/computed tokens",
                 "FLOP/token", "MFU", "peak mem GiB", "step ms (median)", "GPU")
SMOKE_COLUMNS = ("#", "check", "command", "result", "exit code", "seconds", "last lines (failure or refusal)")
# The packages `tunelaunch train` needs beyond what this script uses (pyproject's dependencies, import names).
CLI_MODULES = ("hydra", "omegaconf", "yaml", "trl", "datasets", "accelerate")


@dataclass(frozen=True)
class Bench:
    """One benchmark row's configuration."""
    model: str
    method: str = "full"          # full | lora
    attn: str = "sdpa"            # sdpa | flash_attention_2
    layout: str = "packed"        # packed | padded
    ckpt: bool = False
    liger: bool = False

    @property
    def name(self) -> str:
        return (f"{self.model}, {self.method}, {ATTN_SHORT[self.attn]}, {self.layout}, "
                f"ckpt {'on' if self.ckpt else 'off'}, liger {'on' if self.liger else 'off'}")


@dataclass(frozen=True)
class Smoke:
    """One CLI smoke row: `tunelaunch train` (GPU) or `tunelaunch plan` (dry run) with this backend."""
    backend: str                  # fsdp | zero3

    @property
    def name(self) -> str:
        return f"CLI smoke: distributed={self.backend}"

    def overrides(self) -> list[str]:
        return ["recipe=sft/chat_tiny", "training.max_steps=3", f"distributed={self.backend}",
                "distributed.num_processes=1"]

    def shown(self, dry_run: bool) -> str:
        return f"`tunelaunch {'plan' if dry_run else 'train'} {' '.join(self.overrides())}`"


# Priority order: the 1B full fine-tune (the MFU target) and its main levers first, then the never-run FSDP/ZeRO-3
# GPU launch, then LoRA, then the 0.5B model. A budget overrun drops rows from the end.
PLAN: tuple = (
    Bench("1B"),
    Bench("1B", attn="flash_attention_2"),
    Bench("1B", layout="padded"),
    Smoke("fsdp"),
    Smoke("zero3"),
    Bench("1B", ckpt=True),
    Bench("1B", liger=True),
    Bench("1B", attn="flash_attention_2", liger=True),
    Bench("1B", method="lora"),
    Bench("1B", method="lora", ckpt=True),
    Bench("1B", attn="flash_attention_2", layout="padded"),
    Bench("0.5B"),
    Bench("0.5B", attn="flash_attention_2"),
    Bench("0.5B", method="lora"),
    Bench("0.5B", layout="padded"),
)


@dataclass
class Settings:
    """What differs between a GPU run and the dry run."""
    dry_run: bool
    device: str
    gpu_name: str
    shapes: dict
    warmup: int
    steps: int
    samples_per_step: int
    median_len: int
    sigma: float
    min_len: int
    max_len: int
    seed: int
    estimate_bench_s: float
    estimate_smoke_s: float
    smoke_timeout_s: float
    pip_timeout_s: float
    find_links: Optional[str] = None


@dataclass
class Result:
    """One row of output. `cells` maps column names to text; status is 'ok', 'skipped: ...' or 'failed: ...'."""
    item: object
    cells: dict = field(default_factory=dict)
    seconds: float = 0.0


class Interrupted(Exception):
    """SIGTERM, turned into an exception so that what was measured is still written."""


# ---------------------------------------------------------------------------------------------------------------
# FLOPs and MFU


def model_flops_per_token(n_params: float, n_layers: int, hidden: int, seq_len: float, lora: bool = False) -> float:
    """Model FLOPs per trained token (PaLM's accounting, recomputation not counted, so checkpointing does not raise
    it): 2N forward + 4N backward for a full fine-tune; LoRA skips the frozen weights' gradients (2N of the
    backward), leaving about 4N (the r=16 adapters add under 1%). Attention adds 12 * layers * hidden * seq_len
    (scores and weighted sum, forward and backward, on activations only, so LoRA does not change it). N counts the
    parameters that take part in a matmul (model_matmul_params)."""
    return (4 if lora else 6) * n_params + 12 * n_layers * hidden * seq_len


def mfu(flops_per_token: float, tokens_per_s: float, peak_flops: float) -> float:
    """Model FLOPs utilisation, a fraction: the model FLOPs the real tokens needed per second over the peak."""
    return flops_per_token * tokens_per_s / peak_flops


def peak_bf16_flops(gpu_name: Optional[str]) -> Optional[float]:
    """The GPU's dense bf16 peak in FLOP/s from PEAK_BF16_FLOPS, None when the device is not in the table."""
    if not gpu_name:
        return None
    for pattern, peak in PEAK_BF16_FLOPS:
        if pattern.lower() in gpu_name.lower():
            return peak
    return None


def mfu_cell(flops_per_token: float, tokens_per_s: float, gpu_name: Optional[str]) -> str:
    """The MFU column: a percentage, or n/a with the reason (no GPU, or a GPU whose peak the table lacks)."""
    if not gpu_name:
        return "n/a (no GPU)"
    peak = peak_bf16_flops(gpu_name)
    if peak is None:
        return f"n/a (unknown bf16 peak for {gpu_name})"
    return f"{100 * mfu(flops_per_token, tokens_per_s, peak):.3g}%"


def effective_seq_len(lengths: list[int]) -> float:
    """The sequence length the attention term sees per token: a token of a sample of length s attends over s
    positions, so over many samples the token-weighted mean sum(s^2)/sum(s). Padded and packed rows share it:
    the attention padding costs is waste, not model FLOPs."""
    return sum(s * s for s in lengths) / sum(lengths)


def model_matmul_params(model) -> int:
    """Parameters of the nn.Linear layers: what the 6N rule counts. The input embedding is a lookup, not a matmul;
    a tied output head is the same matrix and is counted once, as the lm_head's matmul; norms are negligible."""
    import torch

    seen, total = set(), 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            for p in module.parameters(recurse=False):
                if id(p) not in seen:
                    seen.add(id(p))
                    total += p.numel()
    return total


# ---------------------------------------------------------------------------------------------------------------
# Synthetic batches


@dataclass
class Batch:
    """One step's inputs for one layout, on the device, and its token counts."""
    tensors: dict
    lengths: list
    computed_tokens: int

    @property
    def real_tokens(self) -> int:
        return sum(self.lengths)


def sample_lengths(settings: Settings, count: int) -> list[int]:
    """Long-tailed sample lengths: log-normal around the median, clipped, seeded (the same for every row)."""
    rng = random.Random(settings.seed)
    mu = math.log(settings.median_len)
    return [min(settings.max_len, max(settings.min_len, round(rng.lognormvariate(mu, settings.sigma))))
            for _ in range(count)]


def make_batch(lengths: list[int], layout: str, vocab: int, seed: int, device: str) -> Batch:
    """Random token ids for these samples in one layout. Packed: one row, position ids restarting at each sample
    and the first token of each sample unlabelled (the shifted loss must not predict across a boundary), no
    attention mask: transformers reads the boundaries from the position ids (sdpa builds a block-diagonal mask,
    flash-attn uses its varlen kernel). Padded: right-padded to the longest with an attention mask, padding
    unlabelled."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    samples = [torch.randint(1, vocab, (n,), generator=gen) for n in lengths]
    if layout == "packed":
        ids = torch.cat(samples)[None]
        positions = torch.cat([torch.arange(n) for n in lengths])[None]
        labels = ids.clone()
        starts = torch.tensor([0] + list(_cumsum(lengths))[:-1])
        labels[0, starts] = -100
        tensors = {"input_ids": ids, "position_ids": positions, "labels": labels}
        computed = ids.numel()
    else:
        width = max(lengths)
        ids = torch.zeros(len(lengths), width, dtype=torch.long)
        mask = torch.zeros(len(lengths), width, dtype=torch.long)
        for i, s in enumerate(samples):
            ids[i, :len(s)] = s
            mask[i, :len(s)] = 1
        labels = ids.masked_fill(mask == 0, -100)
        tensors = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        computed = ids.numel()
    return Batch({k: v.to(device) for k, v in tensors.items()}, list(lengths), computed)


def _cumsum(values):
    total = 0
    for v in values:
        total += v
        yield total


def make_batches(settings: Settings, layout: str, vocab: int) -> list[Batch]:
    """warmup + steps batches of samples_per_step samples each; the same samples for both layouts."""
    n = settings.samples_per_step
    lengths = sample_lengths(settings, n * (settings.warmup + settings.steps))
    return [make_batch(lengths[i * n:(i + 1) * n], layout, vocab, settings.seed + i, settings.device)
            for i in range(settings.warmup + settings.steps)]


# ---------------------------------------------------------------------------------------------------------------
# Availability of the optional kernels


_FLASH_STATE: dict = {}


def flash_attn_skip_reason(settings: Settings) -> Optional[str]:
    """None when flash_attention_2 can run; else why not. Without flash_attn, one `pip install` is tried with binary
    wheels only (--only-binary: never a compile, which takes hours) and no dependencies (never touching torch);
    machines without a network or a matching wheel fail it quickly, and the reason is pip's last line. Done once,
    before transformers is imported, whose availability checks are cached."""
    if settings.device != "cuda":
        return "flash_attention_2 needs a CUDA GPU"
    if "reason" in _FLASH_STATE:
        return _FLASH_STATE["reason"]
    reason = None
    if importlib.util.find_spec("flash_attn") is None:
        cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--only-binary=:all:",
               "--retries", "0", "--timeout", "10", "flash-attn"]
        if settings.find_links:
            cmd += ["--find-links", settings.find_links]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=settings.pip_timeout_s)
            importlib.invalidate_caches()
            if out.returncode != 0 or importlib.util.find_spec("flash_attn") is None:
                last = (out.stderr.strip() or out.stdout.strip() or "no output").splitlines()[-1]
                reason = f"flash-attn not installed and no wheel available offline (pip: {last.strip()[:160]})"
        except subprocess.TimeoutExpired:
            reason = f"flash-attn not installed; pip install gave no wheel within {settings.pip_timeout_s:.0f} s"
    if reason is None:
        try:
            importlib.import_module("flash_attn")
        except Exception as e:  # an ABI mismatch with this torch shows here
            reason = f"flash_attn does not import: {type(e).__name__}: {str(e)[:160]}"
    _FLASH_STATE["reason"] = reason
    return reason


def liger_skip_reason(settings: Settings) -> Optional[str]:
    """None when Liger's kernels can be applied; else why not (they are Triton kernels: CUDA only)."""
    if settings.device != "cuda":
        return "Liger kernels need a CUDA GPU (Triton)"
    try:
        importlib.import_module("liger_kernel.transformers")
    except Exception as e:
        return f"liger_kernel does not import: {type(e).__name__}: {str(e)[:160]}"
    return None


@contextlib.contextmanager
def liger_applied(model):
    """Liger's kernels on this model, undone afterwards. apply_liger_kernel_to_llama also rebinds names of
    transformers' modeling_llama module (RoPE, the norm and MLP classes), which would leak into every later row:
    the module's namespace and LlamaForCausalLM.forward are restored on exit."""
    from liger_kernel.transformers import apply_liger_kernel_to_llama
    from transformers.models.llama import modeling_llama

    saved = dict(vars(modeling_llama))
    saved_forward = modeling_llama.LlamaForCausalLM.__dict__.get("forward")
    try:
        apply_liger_kernel_to_llama(model=model)
        yield model
    finally:
        for name in set(vars(modeling_llama)) - set(saved):
            delattr(modeling_llama, name)
        for name, value in saved.items():
            if vars(modeling_llama).get(name) is not value:
                setattr(modeling_llama, name, value)
        if saved_forward is not None:
            modeling_llama.LlamaForCausalLM.forward = saved_forward


# ---------------------------------------------------------------------------------------------------------------
# One benchmark row


def build_model(bench: Bench, settings: Settings):
    """A random-init Llama of the row's shape, built directly on the device, in the product's dtype: fp32 for full
    fine-tunes (master weights; bf16 comes from autocast), bf16 for LoRA's frozen base; fp32 everything on CPU."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**settings.shapes[bench.model], max_position_embeddings=8192, rope_theta=500000.0,
                         use_cache=False, pad_token_id=0)
    dtype = torch.bfloat16 if (settings.device == "cuda" and bench.method == "lora") else torch.float32
    torch.manual_seed(settings.seed)
    with torch.device(settings.device):
        model = LlamaForCausalLM._from_config(config, dtype=dtype, attn_implementation=bench.attn)
    model.train()
    return model, config


def prepare_for_training(model, bench: Bench):
    """Checkpointing (non-reentrant, as the product sets it) and LoRA r=16 on all linear layers; returns the model
    to train and its trainable parameters."""
    if bench.ckpt:
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x; the old name warns there
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if bench.method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))
    return model, [p for p in model.parameters() if p.requires_grad]


def timed_steps(model, optimizer, batches: list[Batch], settings: Settings) -> tuple[list[float], int, list[int]]:
    """Forward, backward and optimizer step per batch, synchronised around each step so the wall time is the GPU's;
    the first `warmup` steps (allocator growth, kernel selection) are not kept. Returns the kept step times, their
    real tokens and their sample lengths."""
    import torch

    cuda = settings.device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext
    times, tokens, lengths = [], 0, []
    loss = None
    for i, batch in enumerate(batches):
        sync()
        start = time.perf_counter()
        with autocast():
            loss = model(**batch.tensors).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        if i >= settings.warmup:
            times.append(time.perf_counter() - start)
            tokens += batch.real_tokens
            lengths += batch.lengths
    if loss is not None and not torch.isfinite(loss.detach()).item():
        raise FloatingPointError(f"loss is {loss.item()}")
    return times, tokens, lengths


def measure(bench: Bench, settings: Settings) -> dict:
    """The row's figures. Everything the row allocates lives in this frame, so it is freed when it returns or
    raises (the caller then empties the CUDA cache before the next row)."""
    import torch

    model, config = build_model(bench, settings)
    n_params = model_matmul_params(model)
    batches = make_batches(settings, bench.layout, config.vocab_size)
    with (liger_applied(model) if bench.liger else contextlib.nullcontext()):
        model, trainable = prepare_for_training(model, bench)
        optimizer = torch.optim.AdamW(trainable, lr=1e-5)
        times, tokens, lengths = timed_steps(model, optimizer, batches, settings)
    kept = batches[settings.warmup:]
    tokens_per_s = tokens / sum(times)
    flops = model_flops_per_token(n_params, config.num_hidden_layers, config.hidden_size,
                                  effective_seq_len(lengths), lora=bench.method == "lora")
    gpu = settings.gpu_name if settings.device == "cuda" else None
    peak = (f"{torch.cuda.max_memory_allocated() / 2**30:.1f}" if settings.device == "cuda" else "n/a (no GPU)")
    return {
        "params (N)": f"{n_params:,}",
        "status": "ok",
        "real tokens/s/GPU": f"{tokens_per_s:,.0f}",
        "real/computed tokens": f"{sum(b.real_tokens for b in kept) / sum(b.computed_tokens for b in kept):.0%}",
        "FLOP/token": f"{flops:.4g}",
        "MFU": mfu_cell(flops, tokens_per_s, gpu),
        "peak mem GiB": peak,
        "step ms (median)": f"{statistics.median(times) * 1000:.1f}",
    }


def run_bench(bench: Bench, settings: Settings) -> dict:
    """A row: skipped with the reason when its kernels are unavailable, failed with the error when it raises (an
    out-of-memory among them), measured otherwise; the GPU's memory is released before the next row."""
    reason = ((flash_attn_skip_reason(settings) if bench.attn == "flash_attention_2" else None)
              or (liger_skip_reason(settings) if bench.liger else None))
    if reason:
        return {"status": f"skipped: {reason}"}
    import torch

    if settings.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    try:
        return measure(bench, settings)
    except Interrupted:
        raise
    except Exception as e:
        message = " ".join(f"{type(e).__name__}: {e}".split())
        return {"status": f"failed: {message[:300]}"}
    finally:
        gc.collect()
        if settings.device == "cuda":
            torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------------------------
# CLI smoke rows


def tunelaunch_command() -> list[str]:
    """The console script beside this interpreter, else the module (a GPU image's Python has no script)."""
    script = Path(sys.executable).parent / "tunelaunch"
    return [str(script)] if script.exists() else [sys.executable, "-m", "launcher.cli"]


def run_smoke(smoke: Smoke, settings: Settings, timeout_s: float) -> dict:
    """`tunelaunch train` on a GPU (pass: exit 0 and the run folder's run_state.json says finished), `tunelaunch
    plan` in the dry run (FSDP and ZeRO-3 planned with exit 0). In a fresh folder,
    so nothing is left in the repository; the last output lines are kept on failure."""
    verb = "plan" if settings.dry_run else "train"
    missing = [m for m in CLI_MODULES + (("deepspeed",) if smoke.backend.startswith("zero") else ())
               if importlib.util.find_spec(m) is None]
    with tempfile.TemporaryDirectory(prefix=f"gpu-smoke-{smoke.backend}-") as tmp:
        project = Path(tmp) / "run"
        args = smoke.overrides() + [f"project_name={project}"]
        cells = {"command": smoke.shown(settings.dry_run), "exit code": "—", "seconds": "—"}
        if missing:
            return {**cells, "result": f"skipped: python packages missing here: {', '.join(missing)}"}
        env = dict(os.environ, PYTHONUNBUFFERED="1",
                   PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        start = time.perf_counter()
        try:
            out = subprocess.run([*tunelaunch_command(), verb, *args], cwd=tmp, env=env, capture_output=True,
                                 text=True, timeout=timeout_s)
            code, text = out.returncode, (out.stdout + "\n" + out.stderr)
        except subprocess.TimeoutExpired as e:
            code = None
            text = ((e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")) \
                + ((e.stderr or b"").decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or ""))
        cells["seconds"] = f"{time.perf_counter() - start:.0f}"
        cells["exit code"] = "timeout" if code is None else str(code)
        if settings.dry_run:
            # both backends plan on CPU (FSDP trains there over gloo too: tests/distributed/test_fsdp.py)
            ok = code == 0
            cells["result"] = "planned (expected: exit 0)" if ok else f"unexpected: exit {cells['exit code']}, expected 0"
        else:
            state = project / "run_state.json"
            finished = state.is_file() and json.loads(state.read_text()).get("status") == "finished"
            ok = code == 0 and finished
            cells["result"] = "pass" if ok else ("fail: timed out" if code is None
                                                 else f"fail: exit {code}" + ("" if code else ", run not finished"))
        if not ok:
            cells["last lines (failure or refusal)"] = last_lines(text)
    return cells


def last_lines(text: str, n: int = 8) -> str:
    """The last non-empty lines of an output, on one table cell (pipes escaped, lines joined with ' ⏎ ')."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()][-n:]
    return " ⏎ ".join(ln.replace("|", "\\|")[:240] for ln in lines)


# ---------------------------------------------------------------------------------------------------------------
# The run: budget, rows, output


def estimate_s(item, settings: Settings, measured: dict) -> float:
    """Seconds an item is expected to take: the last measured row of the same model (or smoke), else a default."""
    key = item.model if isinstance(item, Bench) else "smoke"
    default = settings.estimate_bench_s if isinstance(item, Bench) else settings.estimate_smoke_s
    return measured.get(key, default)


def run_plan(plan, settings: Settings, deadline: float, results: list[Result]) -> None:
    """Every item of the plan in order, appended to `results` as it ends (so a crash keeps the rows before it),
    each skipped when its estimate would overrun the deadline. An interrupt marks the rest as skipped and is
    raised again, for main to write the rows and exit non-zero."""
    measured = {}
    for n, item in enumerate(plan, 1):
        result = Result(item)
        results.append(result)
        remaining = deadline - time.monotonic()
        if estimate_s(item, settings, measured) > remaining:
            result.cells = _skipped(item, "skipped: time budget", settings.dry_run)
            print(f"[{n}/{len(plan)}] {item.name}: skipped: time budget ({remaining:.0f} s left)", flush=True)
            continue
        start = time.monotonic()
        try:
            if isinstance(item, Bench):
                result.cells = run_bench(item, settings)
            else:
                result.cells = run_smoke(item, settings, min(settings.smoke_timeout_s, max(remaining, 1)))
        except (KeyboardInterrupt, Interrupted) as e:
            interrupted = type(e).__name__
            result.cells = _skipped(item, f"skipped: interrupted ({interrupted})", settings.dry_run)
            for later in plan[n:]:
                results.append(Result(later, _skipped(later, f"skipped: interrupted ({interrupted})",
                                                      settings.dry_run)))
            raise
        result.seconds = time.monotonic() - start
        # What a finished row took is the estimate for the next of its kind (a failed or skipped row says little).
        if result.cells.get("status") == "ok":
            measured[item.model] = result.seconds
        elif isinstance(item, Smoke) and not result.cells.get("result", "").startswith("skipped"):
            measured["smoke"] = result.seconds
        print(f"[{n}/{len(plan)}] {item.name}: {_summary(result)} ({result.seconds:.1f} s)", flush=True)


def _skipped(item, reason: str, dry_run: bool) -> dict:
    return {"status": reason} if isinstance(item, Bench) else {"result": reason, "command": item.shown(dry_run)}


def _summary(result: Result) -> str:
    c = result.cells
    if isinstance(result.item, Bench):
        if c.get("status") != "ok":
            return c.get("status", "")
        return (f"{c['real tokens/s/GPU']} tok/s, MFU {c['MFU']}, peak memory {c['peak mem GiB']} GiB, "
                f"step {c['step ms (median)']} ms").replace("n/a (no GPU) GiB", "n/a")
    return f"{c.get('result')} (exit {c.get('exit code')})"


def table(columns, rows: list[dict]) -> list[str]:
    """A Markdown table; missing cells are '—'."""
    out = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    out += ["| " + " | ".join(str(r.get(c, "—")).replace("\n", " ") or "—" for c in columns) + " |" for r in rows]
    return out


def targets(results: list[Result], settings: Settings) -> list[str]:
    """The targets beside the figures: the 1B full fine-tune's MFU (best of its measured rows) and the two CLI
    smoke runs passing, each met / missed / not measured."""
    rows = []
    best = None
    for r in results:
        if isinstance(r.item, Bench) and r.item.model == "1B" and r.item.method == "full" \
                and r.cells.get("MFU", "").endswith("%"):
            value = float(r.cells["MFU"].rstrip("%")) / 100
            if best is None or value > best[0]:
                best = (value, r.item.name)
    if best:
        rows.append({"target": f"1B full fine-tune MFU >= {MFU_TARGET:.0%}", "measured": f"{best[0]:.1%} ({best[1]})",
                     "verdict": "met" if best[0] >= MFU_TARGET else "missed"})
    else:
        rows.append({"target": f"1B full fine-tune MFU >= {MFU_TARGET:.0%}", "measured": "n/a",
                     "verdict": "not measured (no GPU)" if settings.dry_run else "not measured"})
    for r in results:
        if isinstance(r.item, Smoke):
            res = r.cells.get("result", "")
            verdict = ("not measured (dry run: plan only)" if settings.dry_run
                       else "met" if res == "pass" else "not measured" if res.startswith("skipped") else "missed")
            rows.append({"target": f"`tunelaunch train` with distributed={r.item.backend} on 1 GPU passes",
                         "measured": f"{res} (exit {r.cells.get('exit code', '—')})", "verdict": verdict})
    return table(("target", "measured", "verdict"), rows)


def versions() -> str:
    """torch/transformers/peft versions from their metadata (no import needed)."""
    def v(name):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"
    return f"torch {v('torch')}, transformers {v('transformers')}, peft {v('peft')}"


def render(results: list[Result], settings: Settings, wall_s: float, budget_s: float) -> str:
    """The RESULTS.md section: title line with date, GPU and versions, the settings, both tables, the targets."""
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    gpu = settings.gpu_name if not settings.dry_run else "CPU (dry run)"
    bench_rows, smoke_rows = [], []
    for n, r in enumerate(results, 1):
        row = {"#": str(n), **r.cells}
        if isinstance(r.item, Bench):
            bench_rows.append({**row, "configuration": r.item.name, "GPU": gpu})
        else:
            smoke_rows.append({**row, "check": r.item.name})
    s = settings
    shape_text = "; ".join(f"{k}: {v['num_hidden_layers']} layers, hidden {v['hidden_size']}, "
                           f"MLP {v['intermediate_size']}, {v['num_attention_heads']}/{v['num_key_value_heads']} "
                           f"heads, vocab {v['vocab_size']}" for k, v in s.shapes.items())
    lines = [
        "", f"{SECTION_TITLE} — {date}, {gpu}, {versions()}", "",
        *(["Dry run: tiny stand-ins for the 0.5B/1B shapes, fp32 on CPU, `tunelaunch plan` in place of `train`. "
           "Not figures.", ""] if s.dry_run else []),
        f"- Models: random-init LlamaConfig; {shape_text}.",
        f"- Data: {s.samples_per_step} samples per step, lengths log-normal (median {s.median_len}, sigma {s.sigma}, "
        f"clipped to {s.min_len}..{s.max_len}, seed {s.seed}), random token ids; the same samples padded or packed.",
        f"- Steps: {s.warmup} warm-up + {s.steps} timed; tokens/s counts real tokens (no padding) over the timed "
        "steps; step time is their median.",
        "- Precision: " + ("fp32 (CPU)." if s.dry_run else "full fine-tunes fp32 master weights + bf16 autocast, "
                          "LoRA bf16 base + bf16 autocast (as the product loads them); torch AdamW."),
        "- MFU: model FLOPs per token (6N + 12·layers·hidden·seq for full fine-tunes, 4N + attention for LoRA; N = "
        "matmul parameters; seq = token-weighted mean sample length) × real tokens/s over the dense bf16 peak "
        "(H200/H100 SXM 989.4, H100 PCIe 756, A100 312, L40S 362 TFLOP/s). Checkpointing's recomputation is not "
        "counted.",
        f"- Wall time {wall_s:.0f} s of a {budget_s:.0f} s budget.",
        "", *table(BENCH_COLUMNS, bench_rows), "", *table(SMOKE_COLUMNS, smoke_rows), "", "Targets:", "",
        *targets(results, settings), "",
    ]
    return "\n".join(lines)


def settings_for(args) -> Settings:
    """GPU settings, or the dry run's: tiny shapes, short samples, 1 + 2 steps, small estimates."""
    if args.dry_run:
        return Settings(dry_run=True, device="cpu", gpu_name="", shapes=TINY_SHAPES, warmup=args.warmup or 1,
                        steps=args.steps or 2, samples_per_step=4, median_len=24, sigma=0.8, min_len=4, max_len=96,
                        seed=args.seed, estimate_bench_s=2.0, estimate_smoke_s=20.0, smoke_timeout_s=120.0,
                        pip_timeout_s=args.pip_timeout, find_links=args.find_links)
    import torch

    return Settings(dry_run=False, device="cuda", gpu_name=torch.cuda.get_device_name(0), shapes=SHAPES,
                    warmup=args.warmup or 3, steps=args.steps or 10, samples_per_step=8, median_len=512, sigma=0.8,
                    min_len=32, max_len=2048, seed=args.seed, estimate_bench_s=20.0, estimate_smoke_s=90.0,
                    smoke_timeout_s=240.0, pip_timeout_s=args.pip_timeout, find_links=args.find_links)


def _raise_interrupted(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true",
                        help="the whole control flow on CPU with a tiny Llama; writes a temp file unless --results")
    parser.add_argument("--results", type=Path, default=None,
                        help="the Markdown file to append to (default: benchmarks/RESULTS.md; dry run: a temp file)")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds before the deadline (default 450)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per row (default 10; dry run 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per row (default 3; dry run 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample lengths, tokens and weights")
    parser.add_argument("--pip-timeout", type=float, default=60.0,
                        help="seconds allowed for the flash-attn wheel install attempt (default 60)")
    parser.add_argument("--find-links", default=None,
                        help="a folder of wheels for that attempt (pip --find-links), e.g. a carried flash-attn wheel")
    args = parser.parse_args(argv)
    if (args.steps is not None and args.steps < 1) or (args.warmup is not None and args.warmup < 0):
        parser.error("--steps must be at least 1 and --warmup at least 0")
    start = time.monotonic()
    deadline = start + args.budget

    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            print("no CUDA GPU here: run with --dry-run to exercise the script on CPU", file=sys.stderr)
            return 2
    settings = settings_for(args)
    if args.results is not None:
        results_path = args.results
    elif args.dry_run:
        fd, name = tempfile.mkstemp(prefix="gpu-dry-run-", suffix=".md")
        os.close(fd)
        results_path = Path(name)
    else:
        results_path = DEFAULT_RESULTS

    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    results: list[Result] = []
    why_not_run, code = "skipped: interrupted", 0
    try:
        if any(isinstance(i, Bench) and i.attn == "flash_attention_2" for i in PLAN):
            flash_attn_skip_reason(settings)  # before transformers is imported: its checks are cached
        run_plan(PLAN, settings, deadline, results)
    except (KeyboardInterrupt, Interrupted) as e:
        print(f"interrupted ({type(e).__name__}): writing what there is", file=sys.stderr)
        code = 130 if isinstance(e, KeyboardInterrupt) else 143
    except Exception as e:  # a bug of this script: still write the rows measured before it
        traceback.print_exc()
        why_not_run, code = f"skipped: the script failed ({type(e).__name__}: {str(e)[:160]})", 1
    finally:
        signal.signal(signal.SIGTERM, previous)
        done = {id(r.item) for r in results if r.cells}
        results[:] = [r for r in results if r.cells]
        results += [Result(i, _skipped(i, why_not_run, settings.dry_run)) for i in PLAN if id(i) not in done]
        results.sort(key=lambda r: next(n for n, i in enumerate(PLAN) if i is r.item))
        section = render(results, settings, time.monotonic() - start, args.budget)
        print(section)
        with open(results_path, "a", encoding="utf-8") as f:
            f.write(section)
        print(f"appended to {results_path}")
    return code


if __name__ == "__main__":
    sys.exit(main())
