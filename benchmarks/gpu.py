"""What only a GPU can show, measured in one command bounded by --budget (480 s by default) and written row by row.

  python benchmarks/gpu.py --results DIR          # on a GPU machine (benchmarks/gpu_device.sh passes $OUT)
  python benchmarks/gpu.py --only ROW,ROW ...     # a rerun of some rows (ids in the first column of the tables)
  python benchmarks/gpu.py --dry-run              # on CPU: every row's control flow on a tiny Llama, in about a
                                                  # minute, into a temporary folder (or --results DIR)
  python benchmarks/results.py merge DIR/gpu.md   # here, afterwards: the section replaces RESULTS.md's GPU section

Rows, in priority order (a row that would overrun the budget is skipped; the budget's alarm stops the row running):
1. `matmul`: the measured bf16 ceiling, an 8192^3 matmul (a few seconds). MFU is given against it and against the
   datasheet peak (the H200 reaches ~790 of its 989 TFLOP/s on this product).
2. `packed-equality`: the product's attention for packed batches (launcher/attention.py: torch's varlen flash
   attention on CUDA) against each sample run alone through sdpa: logits equal within bf16 tolerance.
3. Training throughput of Llama-shaped ~1B and ~0.5B models built from a LlamaConfig with random weights (nothing
   is downloaded), in process: packed batches through the product's attention, padded batches, packed batches
   under plain sdpa (the dense block-diagonal mask transformers builds without the product's kernel), gradient
   checkpointing, Liger, LoRA, flash-attn (only when a flash-attn wheel was carried: PyPI has only its source).
   Each row: real tokens/s per GPU (padding not counted), MFU, peak memory, median step time, loss first -> last.
4. Smoke rows through `tunelaunch train` on the 0.5B model, as a user runs it (a subprocess in its own process
   group, killed whole at its timeout): FSDP2 full fine-tune, ZeRO-3, QLoRA int4, bf16 with gradient
   checkpointing, Liger, torch.compile. One process each: that proves each GPU path, which is what is unrun;
   scaling is the CPU suite's multi-process tests' subject. Each records tokens/s, MFU, peak CUDA memory (read by
   benchmarks/probe in the training process) and the loss after its steps, which must be finite and lower than
   at the first step.

Output, after every row (so a run stopped anywhere keeps what it measured): DIR/gpu.jsonl, one JSON object per
finished row ({"row": id, "status": ..., figures}), and DIR/gpu.md, the whole section in benchmarks/results.py's
format (`<!-- section: gpu -->` ... `<!-- end: gpu -->`). An alarm at --budget seconds stops the row running (its
status says so) and marks the rest; SIGTERM and Ctrl-C do the same.

The batches are tokenizer-free: random token ids (from the first 4096 of the vocabulary, so the loss has something
to learn and falls), sample lengths from a seeded log-normal (long-tailed, as chat data is); the same samples make
both layouts. Precision follows the product (launcher/models.py): full fine-tunes keep fp32 master weights under
bf16 autocast, LoRA keeps the frozen base in bf16; the optimizer is torch's AdamW.
Imports: torch, transformers and peft, launcher.attention (torch and transformers only) and, for the smoke rows,
the product's CLI with what it needs (benchmarks/gpu_wheels.sh carries what a GPU image lacks).
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
import shutil
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
PROBE_DIR = REPO / "benchmarks" / "probe"
SECTION = "gpu"
TITLE = "GPU benchmark (benchmarks/gpu.py)"
MFU_TARGET = 0.40  # the 1B full fine-tune's target

# Dense bf16 peaks (no sparsity), FLOP/s, from the vendors' datasheets, matched on torch's device name. The H200
# SXM has the H100 SXM's arithmetic; the NVL parts are clocked lower. The first pattern found in the name wins
# ("H100 PCIe" before "H100"). H100 NVL (its datasheet quotes a pair) is deliberately unknown rather than guessed.
PEAK_BF16_FLOPS = (
    ("H100 NVL", None),
    ("H200 NVL", 835.5e12),
    ("H100 PCIe", 756e12),
    ("H200", 989.4e12),
    ("H100", 989.4e12),
    ("A100", 312e12),
    ("L40S", 362e12),
)
TOKEN_RANGE = 4096  # ids drawn from the first ids of the vocabulary: a unigram the model learns in a few steps

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

ATTN_SHORT = {"sdpa_packed": "product", "sdpa": "sdpa", "flash_attention_2": "fa2"}
CHECK_COLUMNS = ("#", "row", "check", "status", "measured")
BENCH_COLUMNS = ("#", "row", "configuration", "params (N)", "status", "real tokens/s/GPU", "real/computed tokens",
                 "FLOP/token", "MFU (datasheet)", "MFU (matmul ceiling)", "peak mem GiB", "step ms (median)",
                 "loss first → last")
SMOKE_COLUMNS = ("#", "row", "check", "command", "status", "exit code", "seconds", "tokens/s", "MFU (datasheet)",
                 "MFU (matmul ceiling)", "peak mem GiB", "loss first → last", "last lines (failure)")
# The packages `tunelaunch train` needs beyond what this script uses (pyproject's dependencies, import names).
CLI_MODULES = ("hydra", "omegaconf", "yaml", "trl", "datasets", "accelerate")


# ---------------------------------------------------------------------------------------------------------------
# The rows


@dataclass(frozen=True)
class Check:
    """The matmul ceiling or the packed-attention equality: one measured line each."""
    id: str
    name: str
    kind: str = "check"


@dataclass(frozen=True)
class Bench:
    """One in-process throughput row's configuration."""
    model: str
    method: str = "full"          # full | lora
    attn: str = "sdpa_packed"     # sdpa_packed (the product's) | sdpa | flash_attention_2
    layout: str = "packed"        # packed | padded
    ckpt: bool = False
    liger: bool = False
    kind: str = "bench"

    @property
    def name(self) -> str:
        return (f"{self.model}, {self.method}, {ATTN_SHORT[self.attn]}, {self.layout}, "
                f"ckpt {'on' if self.ckpt else 'off'}, liger {'on' if self.liger else 'off'}")

    @property
    def id(self) -> str:
        parts = [self.model.lower(), self.method, ATTN_SHORT[self.attn], self.layout]
        parts += ["ckpt"] * self.ckpt + ["liger"] * self.liger
        return "-".join(parts)


@dataclass(frozen=True)
class Smoke:
    """One `tunelaunch train` row on the 0.5B model. In the dry run it is planned (`tunelaunch plan`), except
    `dry_train` rows, which train the tiny model for real on CPU so the figures' reading is exercised too."""
    id: str
    name: str
    overrides: tuple
    needs: tuple = ()             # import names besides the CLI's (deepspeed, bitsandbytes, liger_kernel)
    lora: bool = False
    timeout_s: float = 150.0
    dry_train: bool = False
    kind: str = "smoke"

    def command(self, dry_run: bool) -> list[str]:
        verb = "train" if (not dry_run or self.dry_train) else "plan"
        return [verb, "recipe=sft/chat_tiny", *self.overrides]

    def shown(self, dry_run: bool) -> str:
        return f"`tunelaunch {' '.join(self.command(dry_run))}`"


SMOKES = (
    Smoke("smoke-fsdp", "FSDP2 full fine-tune", ("distributed=fsdp", "distributed.num_processes=1")),
    Smoke("smoke-zero3", "ZeRO-3 full fine-tune", ("distributed=zero3", "distributed.num_processes=1"),
          needs=("deepspeed",)),
    Smoke("smoke-qlora", "QLoRA int4", ("peft=qlora", "distributed=none"), needs=("bitsandbytes",), lora=True),
    Smoke("smoke-bf16-ckpt", "bf16 + gradient checkpointing",
          ("distributed=none", "training.gradient_checkpointing=true"), dry_train=True),
    Smoke("smoke-liger", "Liger kernels", ("distributed=none", "model.liger_kernel=true"), needs=("liger_kernel",)),
    Smoke("smoke-compile", "torch.compile", ("distributed=none", "model.compile=true", "data.packing=true"),
          timeout_s=240.0),
)

# Priority order: the ceiling and the equality check first (seconds), then the 1B full fine-tune (the MFU target)
# and what it is compared with, then the never-run GPU paths of the CLI, then the rest. An overrun drops rows from
# the end; torch.compile's smoke (minutes of compiling) comes last among the CLI rows.
PLAN: tuple = (
    Check("matmul", "bf16 matmul ceiling"),
    Check("packed-equality", "packed logits = one-by-one logits"),
    Bench("1B"),
    Bench("1B", attn="sdpa", layout="padded"),
    Bench("1B", attn="sdpa"),
    *SMOKES,
    Bench("1B", ckpt=True),
    Bench("1B", liger=True),
    Bench("1B", method="lora"),
    Bench("1B", attn="flash_attention_2"),
    Bench("0.5B"),
    Bench("0.5B", method="lora"),
    Bench("0.5B", attn="sdpa", layout="padded"),
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
    estimate_s: dict
    smoke_steps: int
    matmul_size: int
    ceiling_flops: Optional[float] = None   # measured by the `matmul` row
    packed_kernel: str = ""                 # launcher/attention.py's choice for packed rows here (main sets it)


@dataclass
class Result:
    """One row of output: `cells` maps column names to text; cells["status"] is 'ok', 'skipped: ...',
    'failed: ...' or 'stopped: ...' (the dry run's planned smoke rows: 'planned')."""
    item: object
    cells: dict = field(default_factory=dict)
    seconds: float = 0.0

    def record(self) -> dict:
        return {"row": self.item.id, "kind": self.item.kind, "name": self.item.name, **self.cells,
                "seconds": round(self.seconds, 1)}


class Interrupted(BaseException):
    """The budget's alarm, SIGTERM or SIGINT, turned into an exception so that the row running stops and what was
    measured is still written. A BaseException, as KeyboardInterrupt is: the libraries' own `except Exception`
    (and this script's, which turns a row's error into 'failed') must not swallow it."""


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
    """MFU against the datasheet: a percentage, or n/a with the reason (no GPU, or a GPU the table lacks)."""
    if not gpu_name:
        return "n/a (no GPU)"
    peak = peak_bf16_flops(gpu_name)
    if peak is None:
        return f"n/a (unknown bf16 peak for {gpu_name})"
    return f"{100 * mfu(flops_per_token, tokens_per_s, peak):.3g}%"


def ceiling_cell(flops_per_token: float, tokens_per_s: float, settings: Settings) -> str:
    """MFU against the matmul ceiling the `matmul` row measured (n/a before it, or without a GPU)."""
    if settings.device != "cuda":
        return "n/a (no GPU)"
    if not settings.ceiling_flops:
        return "n/a (ceiling not measured)"
    return f"{100 * mfu(flops_per_token, tokens_per_s, settings.ceiling_flops):.3g}%"


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


def loss_cell(first: float, last: float) -> str:
    return f"{first:.3f} → {last:.3f}"


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


def make_batch(lengths: list[int], layout: str, vocab: int, seed: int, device: str, boundaries: bool = True) -> Batch:
    """Random token ids for these samples in one layout. Packed: one row, position ids restarting at each sample,
    the first token of each sample unlabelled (the shifted loss must not predict across a boundary), no attention
    mask, and, with `boundaries`, the sample boundaries trl's padding-free collator passes (`cu_seq_lens_q/k`,
    `max_length_q/k`), which the product's attention and flash-attn read; without them plain sdpa builds a dense
    block-diagonal mask from the position ids. Padded: right-padded to the longest with an attention mask,
    padding unlabelled."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    samples = [torch.randint(1, min(vocab, TOKEN_RANGE), (n,), generator=gen) for n in lengths]
    if layout == "packed":
        ids = torch.cat(samples)[None]
        positions = torch.cat([torch.arange(n) for n in lengths])[None]
        labels = ids.clone()
        cuts = [0, *_cumsum(lengths)]
        labels[0, torch.tensor(cuts[:-1])] = -100
        tensors = {"input_ids": ids, "position_ids": positions, "labels": labels}
        if boundaries:
            cu = torch.tensor(cuts, dtype=torch.int32)
            tensors.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu)
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
    moved = {k: v.to(device) for k, v in tensors.items()}
    if layout == "packed" and boundaries:
        moved.update(max_length_q=max(lengths), max_length_k=max(lengths))
    return Batch(moved, list(lengths), computed)


def _cumsum(values):
    total = 0
    for v in values:
        total += v
        yield total


def make_batches(settings: Settings, bench: Bench, vocab: int) -> list[Batch]:
    """warmup + steps batches of samples_per_step samples each; the same samples for every layout."""
    n = settings.samples_per_step
    lengths = sample_lengths(settings, n * (settings.warmup + settings.steps))
    return [make_batch(lengths[i * n:(i + 1) * n], bench.layout, vocab, settings.seed + i, settings.device,
                       boundaries=bench.attn != "sdpa")
            for i in range(settings.warmup + settings.steps)]


# ---------------------------------------------------------------------------------------------------------------
# What may be missing


def flash_attn_skip_reason(settings: Settings) -> Optional[str]:
    """None when flash_attention_2 can run; else why not. Nothing is installed here: PyPI has flash-attn only as
    a source archive (hours of compiling), so it runs only when a wheel was carried (gpu_wheels.sh)."""
    if settings.device != "cuda":
        return "flash_attention_2 needs a CUDA GPU"
    if importlib.util.find_spec("flash_attn") is None:
        return "flash-attn not installed (PyPI has only its source; carry a wheel to run this row)"
    try:
        importlib.import_module("flash_attn")
    except Exception as e:  # an ABI mismatch with this torch shows here
        return f"flash_attn does not import: {type(e).__name__}: {str(e)[:160]}"
    return None


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


def product_attention():
    """launcher/attention.py, registered with transformers: the kernel `data.packing=true` runs in the product."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from launcher import attention

    attention.register()
    return attention


def packed_kernel_name(device: str) -> str:
    """Which kernel the product's attention runs packed batches through on this device (plan states the same)."""
    attention = product_attention()
    if device != "cuda":
        return attention.packed_kernel(device)
    import torch

    # the rows compute in bf16 (autocast, or LoRA's bf16 base)
    return attention.packed_kernel("cuda", torch.bfloat16, capability=torch.cuda.get_device_capability(0))


# ---------------------------------------------------------------------------------------------------------------
# The checks


def run_matmul(settings: Settings) -> dict:
    """The bf16 matmul ceiling: size^3 products, 3 warm-ups then 10 timed (fp32 on CPU in the dry run). Its
    FLOP/s become the second MFU reference of every later row."""
    import torch

    n = settings.matmul_size
    dtype = torch.bfloat16 if settings.device == "cuda" else torch.float32
    gen = torch.Generator(device=settings.device).manual_seed(settings.seed)
    a = torch.randn(n, n, device=settings.device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=settings.device, dtype=dtype, generator=gen)
    sync = torch.cuda.synchronize if settings.device == "cuda" else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    sync()
    flops = 2 * n ** 3 * 10 / (time.perf_counter() - start)
    if settings.device == "cuda":
        settings.ceiling_flops = flops
    peak = peak_bf16_flops(settings.gpu_name) if settings.device == "cuda" else None
    share = f", {100 * flops / peak:.3g}% of the datasheet's {peak / 1e12:.0f}" if peak else ""
    what = "bf16" if settings.device == "cuda" else "fp32 (CPU)"
    return {"status": "ok", "measured": f"{flops / 1e12:.4g} TFLOP/s, {what} {n}^3{share}",
            "tflops": round(flops / 1e12, 3)}


def run_equality(settings: Settings) -> dict:
    """The product's packed attention (torch's varlen flash attention on CUDA, sdpa per sample on CPU) against each
    sample alone through transformers' sdpa, on the 0.5B shape. bf16's tolerance is measured, not guessed: both are
    compared with the same samples alone in fp32, and the packed logits may be off from those by at most twice
    what sdpa's own bf16 logits are (plus 1e-3 of the logits' scale, which is all an fp32 run on CPU allows)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    name = product_attention().NAME
    config = LlamaConfig(**settings.shapes["0.5B"], max_position_embeddings=8192, use_cache=False, pad_token_id=0)
    dtype = torch.bfloat16 if settings.device == "cuda" else torch.float32
    torch.manual_seed(settings.seed)
    with torch.device(settings.device):
        model = LlamaForCausalLM._from_config(config, dtype=dtype, attn_implementation=name).eval()
    lengths = sample_lengths(settings, 6)
    batch = make_batch(lengths, "packed", config.vocab_size, settings.seed, settings.device)
    inputs = {k: v for k, v in batch.tensors.items() if k != "labels"}
    ids = inputs["input_ids"][0]
    cuts = [0, *_cumsum(lengths)]

    def one_by_one():
        return torch.cat([model(input_ids=ids[s:e][None]).logits[0].float() for s, e in zip(cuts[:-1], cuts[1:])])

    with torch.no_grad():
        packed = model(**inputs).logits[0].float()
        alone = one_by_one()
        model.float()
        reference = one_by_one()
    packed_error = (packed - reference).abs().max().item()
    sdpa_error = (alone - reference).abs().max().item()
    worst = (packed - alone).abs().max().item()
    scale = reference.abs().max().item()
    tolerance = 2 * sdpa_error + 1e-3 * scale
    kernel = packed_kernel_name(settings.device)
    measured = (f"kernel: {kernel}; {len(lengths)} samples, {sum(lengths)} tokens; max |packed - fp32| "
                f"{packed_error:.3g}, max |sdpa alone - fp32| {sdpa_error:.3g} (tolerance {tolerance:.3g}; logits "
                f"up to {scale:.3g}); max |packed - sdpa alone| {worst:.3g}")
    status = ("ok" if packed_error <= tolerance
              else f"failed: packed logits off by {packed_error:.3g} > {tolerance:.3g}")
    return {"status": status, "measured": measured, "kernel": kernel, "max_abs_diff": worst,
            "packed_error": packed_error, "sdpa_error": sdpa_error}


# ---------------------------------------------------------------------------------------------------------------
# One benchmark row


def build_model(bench: Bench, settings: Settings):
    """A random-init Llama of the row's shape, built directly on the device, in the product's dtype: fp32 for full
    fine-tunes (master weights; bf16 comes from autocast), bf16 for LoRA's frozen base; fp32 everything on CPU."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    attn = product_attention().NAME if bench.attn == "sdpa_packed" else bench.attn
    config = LlamaConfig(**settings.shapes[bench.model], max_position_embeddings=8192, rope_theta=500000.0,
                         use_cache=False, pad_token_id=0)
    dtype = torch.bfloat16 if (settings.device == "cuda" and bench.method == "lora") else torch.float32
    torch.manual_seed(settings.seed)
    with torch.device(settings.device):
        model = LlamaForCausalLM._from_config(config, dtype=dtype, attn_implementation=attn)
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


def timed_steps(model, optimizer, batches: list[Batch], settings: Settings):
    """Forward, backward and optimizer step per batch, synchronised around each step so the wall time is the GPU's;
    the first `warmup` steps (allocator growth, kernel selection) are not kept. Returns the kept step times, their
    real tokens, their sample lengths and the losses of every step."""
    import torch

    cuda = settings.device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext
    times, tokens, lengths, losses = [], 0, [], []
    for i, batch in enumerate(batches):
        sync()
        start = time.perf_counter()
        with autocast():
            loss = model(**batch.tensors).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        losses.append(loss.detach())
        if i >= settings.warmup:
            times.append(time.perf_counter() - start)
            tokens += batch.real_tokens
            lengths += batch.lengths
    losses = [x.item() for x in losses]  # one transfer at the end, not a sync inside the timed steps
    if not math.isfinite(losses[-1]):
        raise FloatingPointError(f"loss is {losses[-1]}")
    return times, tokens, lengths, losses


def measure(bench: Bench, settings: Settings) -> dict:
    """The row's figures. Everything the row allocates lives in this frame, so it is freed when it returns or
    raises (the caller then empties the CUDA cache before the next row)."""
    import torch

    model, config = build_model(bench, settings)
    n_params = model_matmul_params(model)
    batches = make_batches(settings, bench, config.vocab_size)
    with (liger_applied(model) if bench.liger else contextlib.nullcontext()):
        model, trainable = prepare_for_training(model, bench)
        optimizer = torch.optim.AdamW(trainable, lr=1e-4)
        times, tokens, lengths, losses = timed_steps(model, optimizer, batches, settings)
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
        "MFU (datasheet)": mfu_cell(flops, tokens_per_s, gpu),
        "MFU (matmul ceiling)": ceiling_cell(flops, tokens_per_s, settings),
        "peak mem GiB": peak,
        "step ms (median)": f"{statistics.median(times) * 1000:.1f}",
        "loss first → last": loss_cell(losses[0], losses[-1]),
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
    finally:
        gc.collect()
        if settings.device == "cuda":
            torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------------------------
# CLI smoke rows


def tunelaunch_command() -> list[str]:
    """The module through this interpreter: a GPU image's Python has no console script, and the carried checkout
    (not an installed copy) is what is measured."""
    return [sys.executable, "-m", "launcher.cli"]


def smoke_model(settings: Settings, folder: Path) -> tuple[Path, dict]:
    """The model the smoke rows train: on a GPU the 0.5B shape with random weights and the embedded tiny model's
    tokenizer (its ids fall inside the 0.5B vocabulary), saved once; in the dry run the embedded tiny model."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from launcher.embedded import build_tiny_llama

    tiny = build_tiny_llama()
    if settings.dry_run:
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(tiny)
        keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "vocab_size")
        return tiny, {k: getattr(cfg, k) for k in keys}
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    shape = settings.shapes["0.5B"]
    out = folder / "llama-0.5b"
    if not (out / "config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(tiny)
        config = LlamaConfig(**shape, max_position_embeddings=4096, bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        torch.manual_seed(settings.seed)
        with torch.device(settings.device):
            model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        del model
        torch.cuda.empty_cache()
    return out, shape


def _matmul_params_of(shape: dict) -> int:
    """model_matmul_params of a Llama of this shape, built on the meta device (no memory, no weights)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        return model_matmul_params(LlamaForCausalLM(LlamaConfig(**shape)))


def read_probe(path: Path):
    """What benchmarks/probe saw in the training process, read by benchmarks/probed.py's Run."""
    events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    return sibling("probed").Run("smoke", [], events=events)


def run_smoke(smoke: Smoke, settings: Settings, timeout_s: float, work: Path) -> dict:
    """`tunelaunch train` (GPU; dry run: `plan`, or a real CPU train for dry_train rows) in a fresh folder, in its
    own process group, killed whole at the timeout or when this script is stopped, so that no worker keeps the GPU
    or the rendezvous port for the next row. ok: exit 0, the run finished, the loss finite and lower at the last
    logged step than at the first."""
    missing = [m for m in CLI_MODULES + smoke.needs if importlib.util.find_spec(m) is None]
    cells = {"command": smoke.shown(settings.dry_run), "exit code": "—", "seconds": "—"}
    training = not settings.dry_run or smoke.dry_train
    if missing and (training or set(missing) - set(smoke.needs)):
        return {**cells, "status": f"skipped: python packages missing here: {', '.join(missing)}"}
    model_dir, shape = smoke_model(settings, work)
    project = Path(tempfile.mkdtemp(prefix=f"{smoke.id}-", dir=work)) / "run"
    steps = settings.smoke_steps
    args = [*smoke.command(settings.dry_run), f"model.name_or_path={model_dir}", f"project_name={project}",
            f"training.max_steps={steps}", "logging.steps=1", "data.valid_split=null"]
    if not settings.dry_run:
        args += ["training.lr=3e-4", "precision.mixed_precision=bf16"]
    probe = project.parent / "probe.jsonl"
    env = dict(os.environ, PYTHONUNBUFFERED="1", BENCH_PROBE=str(probe),
               PYTHONPATH=os.pathsep.join(filter(None, [str(PROBE_DIR), str(REPO), os.environ.get("PYTHONPATH")])))
    log = project.parent / "output.log"
    start = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen([*tunelaunch_command(), *args], cwd=project.parent, env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            kill_group(proc)
    text = log.read_text(errors="replace")
    cells["seconds"] = f"{time.perf_counter() - start:.0f}"
    cells["exit code"] = "timeout" if code is None else str(code)
    if not training:
        cells["status"] = "planned" if code == 0 else f"failed: plan exit {cells['exit code']}, expected 0"
    else:
        cells.update(smoke_figures(read_probe(probe), project, code, shape, smoke, settings))
    if cells["status"] not in ("ok", "planned"):
        cells["last lines (failure)"] = last_lines(text)
    return cells


def smoke_figures(probe, project: Path, code: Optional[int], shape: dict, smoke: Smoke,
                  settings: Settings) -> dict:
    """A trained smoke row's cells and status from its probe events and its run folder."""
    cells = {}
    losses = [loss for _, _, loss in probe.losses()]
    if losses:
        cells["loss first → last"] = loss_cell(losses[0], losses[-1])
    rate = probe.tokens_per_s()
    if math.isfinite(rate):
        # attention's term is left out: the sample chats are short (tens of tokens), so 6N (4N for LoRA) is it
        flops = model_flops_per_token(_matmul_params_of(shape), 0, 0, 0, lora=smoke.lora)
        gpu = settings.gpu_name if settings.device == "cuda" else None
        cells.update({"tokens/s": f"{rate:,.0f}", "MFU (datasheet)": mfu_cell(flops, rate, gpu),
                      "MFU (matmul ceiling)": ceiling_cell(flops, rate, settings)})
    peak = probe.peak_cuda_bytes
    cells["peak mem GiB"] = (f"{peak / 2**30:.1f}" if peak is not None
                             else "n/a (no GPU)" if settings.device != "cuda" else "n/a")
    state = project / "run_state.json"
    finished = state.is_file() and json.loads(state.read_text()).get("status") == "finished"
    if code is None:
        cells["status"] = "failed: timed out"
    elif code != 0 or not finished:
        cells["status"] = f"failed: exit {code}" + ("" if code else ", run not finished")
    elif len(losses) < 2 or not all(math.isfinite(x) for x in losses):
        cells["status"] = f"failed: losses logged {losses}"
    elif not losses[-1] < losses[0]:
        cells["status"] = f"failed: loss did not fall ({loss_cell(losses[0], losses[-1])})"
    else:
        cells["status"] = "ok"
    return cells


def kill_group(proc: subprocess.Popen) -> None:
    """End the process and every process it started (its session): TERM, then KILL after 3 s (the budget is
    spent: a graceful checkpoint on SIGTERM is not what this run is for)."""
    for sig, wait_s in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            break
        try:
            proc.wait(timeout=wait_s)
            if sig == signal.SIGTERM:  # the leader is gone; its children may not be: KILL what is left
                continue
        except subprocess.TimeoutExpired:
            continue


def last_lines(text: str, n: int = 8) -> str:
    """The last non-empty lines of an output, on one table cell (lines joined with ' ⏎ '; table() escapes pipes)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()][-n:]
    return " ⏎ ".join(ln[:240] for ln in lines)


# ---------------------------------------------------------------------------------------------------------------
# The run: budget, rows, output after every row


def sibling(name: str):
    """benchmarks/NAME.py, loaded from its file (benchmarks/ is no package): results.py's section format, probed.py's
    reading of the probe's events."""
    key = f"benchmarks_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, Path(__file__).with_name(f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


class Output:
    """DIR/gpu.jsonl (a line per finished row, flushed to disk at once) and DIR/gpu.md (the section, rewritten
    whole after every row through a temporary file, so it is never half written)."""

    def __init__(self, folder: Path, settings: Settings, budget_s: float):
        self.folder, self.settings, self.budget_s = folder, settings, budget_s
        folder.mkdir(parents=True, exist_ok=True)
        self.jsonl, self.md = folder / "gpu.jsonl", folder / "gpu.md"
        self.jsonl.write_text("")
        self.start = time.monotonic()

    def row_done(self, result: Result, results: list[Result]) -> None:
        with open(self.jsonl, "a", encoding="utf-8") as f:
            f.write(json.dumps(result.record(), ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.section(results)

    def section(self, results: list[Result]) -> None:
        text = render(results, self.settings, time.monotonic() - self.start, self.budget_s)
        tmp = self.md.with_name(f".{self.md.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, self.md)


def estimate_s(item, settings: Settings, measured: dict) -> float:
    """Seconds a row is expected to take: the last finished row of its kind and model, else the default."""
    key = f"{item.kind}:{getattr(item, 'model', '')}"
    return measured.get(key, settings.estimate_s[item.kind])


def run_item(item, settings: Settings, remaining: float, work: Path) -> dict:
    if isinstance(item, Bench):
        return run_bench(item, settings)
    if isinstance(item, Smoke):
        return run_smoke(item, settings, min(item.timeout_s, max(remaining, 1.0)), work)
    return run_matmul(settings) if item.id == "matmul" else run_equality(settings)


def run_plan(plan, settings: Settings, deadline: float, results: list[Result], output: Output, work: Path) -> None:
    """Every row in order, written as it ends; a row whose estimate would overrun the deadline is skipped, a row
    that raises is 'failed' with the error and the run goes on. Interrupted (the alarm, SIGTERM, Ctrl-C) stops
    the row running, marks the rest and is raised again for main."""
    measured = {}
    for n, item in enumerate(plan, 1):
        result = Result(item)
        results.append(result)
        remaining = deadline - time.monotonic()
        if estimate_s(item, settings, measured) > remaining:
            result.cells = {"status": "skipped: time budget"}
        else:
            start = time.monotonic()
            try:
                result.cells = run_item(item, settings, remaining, work)
            except Interrupted as e:
                result.seconds = time.monotonic() - start
                result.cells = {"status": f"stopped: {e}"}
                output.row_done(result, results)
                for later in plan[n:]:
                    results.append(Result(later, {"status": f"skipped: not reached ({e})"}))
                raise
            except Exception as e:
                traceback.print_exc()
                result.cells = {"status": f"failed: {' '.join(f'{type(e).__name__}: {e}'.split())[:300]}"}
            result.seconds = time.monotonic() - start
            if result.cells.get("status") in ("ok", "planned"):
                measured[f"{item.kind}:{getattr(item, 'model', '')}"] = result.seconds
        if isinstance(item, Smoke):
            result.cells.setdefault("command", item.shown(settings.dry_run))
        print(f"[{n}/{len(plan)}] {item.id}: {summary(result)} ({result.seconds:.1f} s)", flush=True)
        output.row_done(result, results)


def summary(result: Result) -> str:
    c = result.cells
    if isinstance(result.item, Bench) and c.get("status") == "ok":
        return (f"{c['real tokens/s/GPU']} tok/s, MFU {c['MFU (datasheet)']} / {c['MFU (matmul ceiling)']}, "
                f"peak memory {c['peak mem GiB']} GiB, step {c['step ms (median)']} ms, "
                f"loss {c['loss first → last']}").replace("n/a (no GPU) GiB", "n/a")
    if isinstance(result.item, Check) and c.get("status") == "ok":
        return c["measured"]
    return c.get("status", "")


def table(columns, rows: list[dict]) -> list[str]:
    """results.py's Markdown table of these rows; missing cells are '—'."""
    return sibling("results").table(list(columns), [[r.get(c) or "—" for c in columns] for r in rows])


def targets(results: list[Result], settings: Settings) -> list[str]:
    """The targets beside the figures: the 1B full fine-tune's MFU (best of its rows), the packed equality, and
    each CLI path training on one GPU; met / missed / not measured."""
    rows = []
    best = None
    for r in results:
        if isinstance(r.item, Bench) and r.item.model == "1B" and r.item.method == "full" \
                and r.cells.get("MFU (datasheet)", "").endswith("%"):
            value = float(r.cells["MFU (datasheet)"].rstrip("%")) / 100
            if best is None or value > best[0]:
                best = (value, r.item.name)
    target = f"1B full fine-tune MFU (datasheet) >= {MFU_TARGET:.0%}"
    if best:
        rows.append({"target": target, "measured": f"{best[0]:.1%} ({best[1]})",
                     "verdict": "met" if best[0] >= MFU_TARGET else "missed"})
    else:
        rows.append({"target": target, "measured": "n/a",
                     "verdict": "not measured (no GPU)" if settings.dry_run else "not measured"})
    for r in results:
        status = r.cells.get("status", "")
        if isinstance(r.item, Check) and r.item.id == "packed-equality":
            rows.append({"target": "packed logits = one-by-one logits", "measured": r.cells.get("measured", status),
                         "verdict": verdict(status)})
        elif isinstance(r.item, Smoke):
            rows.append({"target": f"`tunelaunch train`: {r.item.name} on 1 GPU, loss falls",
                         "measured": f"{status} (exit {r.cells.get('exit code', '—')})",
                         "verdict": "not measured (dry run: plan only)" if status == "planned" else verdict(status)})
    return table(("target", "measured", "verdict"), rows)


def verdict(status: str) -> str:
    return "met" if status == "ok" else "missed" if status.startswith("failed") else "not measured"


VERSIONS = ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "deepspeed", "liger-kernel",
            "bitsandbytes")


def render(results: list[Result], settings: Settings, wall_s: float, budget_s: float) -> str:
    """The section (benchmarks/results.py's markers): a line with date, GPU and versions, the settings, the
    tables of checks, throughput and smoke rows, the targets. Rows not finished yet are 'not run yet'."""
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    gpu = settings.gpu_name if not settings.dry_run else "CPU (dry run)"
    done = {id(r.item): r for r in results}
    rows = {"check": [], "bench": [], "smoke": []}
    for n, item in enumerate(PLAN_RUN, 1):
        r = done.get(id(item))
        cells = r.cells if r else {"status": "not run yet"}
        row = {"#": str(n), "row": item.id, **cells}
        row["check" if item.kind != "bench" else "configuration"] = item.name
        if isinstance(item, Smoke):
            row.setdefault("command", item.shown(settings.dry_run))
        rows[item.kind].append(row)
    s = settings
    shape_text = "; ".join(f"{k}: {v['num_hidden_layers']} layers, hidden {v['hidden_size']}, "
                           f"MLP {v['intermediate_size']}, {v['num_attention_heads']}/{v['num_key_value_heads']} "
                           f"heads, vocab {v['vocab_size']}" for k, v in s.shapes.items())
    body = [
        f"_{date} · {gpu} · {sibling('results').versions(VERSIONS)} · "
        f"{'DRY RUN (not figures)' if s.dry_run else 'full run'}_",
        "",
        *(["Dry run: tiny stand-ins for the 0.5B/1B shapes, fp32 on CPU, `tunelaunch plan` in place of `train` "
           "(one smoke row trains the tiny model on CPU). Not figures.", ""] if s.dry_run else []),
        f"- Models: random-init LlamaConfig; {shape_text}.",
        f"- Data: {s.samples_per_step} samples per step, lengths log-normal (median {s.median_len}, sigma {s.sigma}, "
        f"clipped to {s.min_len}..{s.max_len}, seed {s.seed}), random ids below {TOKEN_RANGE}; the same samples "
        "padded or packed. `product` = launcher/attention.py's kernel for packed batches "
        f"({s.packed_kernel} here); `sdpa` packed = the dense block-diagonal mask.",
        f"- Steps: {s.warmup} warm-up + {s.steps} timed; tokens/s counts real tokens (no padding) over the timed "
        "steps; step time is their median. Smoke rows: `tunelaunch train` on the 0.5B shape, "
        f"{s.smoke_steps} steps, one process, tokens/s between the first and last logged step.",
        "- Precision: " + ("fp32 (CPU)." if s.dry_run else "full fine-tunes fp32 master weights + bf16 autocast, "
                          "LoRA bf16 base + bf16 autocast (as the product loads them); torch AdamW."),
        "- MFU: model FLOPs per token (6N + 12·layers·hidden·seq for full fine-tunes, 4N + attention for LoRA; N = "
        "matmul parameters; seq = token-weighted mean sample length) × real tokens/s, over the dense bf16 datasheet "
        "peak (H200/H100 SXM 989.4, H200 NVL 835.5, H100 PCIe 756, A100 312, L40S 362 TFLOP/s) and over the "
        "matmul ceiling measured first. Checkpointing's recomputation is not counted.",
        f"- Wall time {wall_s:.0f} s of a {budget_s:.0f} s budget.",
        "", "Checks:", "", *table(CHECK_COLUMNS, rows["check"]),
        "", "Training throughput (in process):", "", *table(BENCH_COLUMNS, rows["bench"]),
        "", "`tunelaunch train` on the GPU:", "", *table(SMOKE_COLUMNS, rows["smoke"]),
        "", "Targets:", "", *targets(results, settings),
    ]
    return sibling("results").render(SECTION, TITLE, body, header_line=False)


PLAN_RUN: tuple = PLAN  # the rows of this run (PLAN, or --only's), in PLAN's order


def settings_for(args) -> Settings:
    """GPU settings, or the dry run's: tiny shapes, short samples, 1 + 2 steps, small estimates."""
    if args.dry_run:
        return Settings(dry_run=True, device="cpu", gpu_name="", shapes=TINY_SHAPES, warmup=args.warmup or 1,
                        steps=args.steps or 2, samples_per_step=4, median_len=24, sigma=0.8, min_len=4, max_len=96,
                        seed=args.seed, estimate_s={"check": 1.0, "bench": 2.0, "smoke": 10.0}, smoke_steps=3,
                        matmul_size=256)
    import torch

    return Settings(dry_run=False, device="cuda", gpu_name=torch.cuda.get_device_name(0), shapes=SHAPES,
                    warmup=args.warmup or 3, steps=args.steps or 10, samples_per_step=8, median_len=512, sigma=0.8,
                    min_len=32, max_len=2048, seed=args.seed, estimate_s={"check": 5.0, "bench": 15.0, "smoke": 40.0},
                    smoke_steps=20, matmul_size=8192)


def select(only: Optional[str]) -> tuple:
    """PLAN, or the rows --only names (comma-separated ids), in PLAN's order; an unknown id is an error that lists
    the known ones."""
    if not only:
        return PLAN
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    known = {item.id for item in PLAN}
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise SystemExit(f"--only: unknown row(s) {', '.join(unknown)}; rows: {', '.join(i.id for i in PLAN)}")
    return tuple(item for item in PLAN if item.id in wanted)


def _raise_interrupted(signum, frame):
    reason = "time budget" if signum == signal.SIGALRM else signal.Signals(signum).name
    raise Interrupted(reason)


def main(argv: Optional[list[str]] = None) -> int:
    global PLAN_RUN
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true",
                        help="every row's control flow on CPU with a tiny Llama (a temporary folder unless --results)")
    parser.add_argument("--results", type=Path, default=None,
                        help="the folder gpu.jsonl and gpu.md are written into after every row (on the GPU "
                             "machine: $OUT; default: ./gpu-results, dry run: a temporary folder)")
    parser.add_argument("--budget", type=float, default=480.0,
                        help="seconds until the alarm stops the row running and ends the run (default 480)")
    parser.add_argument("--only", default=None, help="comma-separated row ids: rerun just these rows")
    parser.add_argument("--list", action="store_true", help="print the row ids in order and exit")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per row (default 10; dry run 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per row (default 3; dry run 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample lengths, tokens and weights")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(f"{item.id}\t{item.name}" for item in PLAN))
        return 0
    if (args.steps is not None and args.steps < 1) or (args.warmup is not None and args.warmup < 0):
        parser.error("--steps must be at least 1 and --warmup at least 0")
    PLAN_RUN = select(args.only)
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA GPU here: run with --dry-run to exercise the script on CPU", file=sys.stderr)
        return 2
    settings = settings_for(args)
    # Imported before the alarm is armed: an import it interrupted would leave a half-initialised module behind
    # (sympy's, under torch), and the section written after the stop would fail on it.
    import transformers  # noqa: F401
    import peft  # noqa: F401

    settings.packed_kernel = packed_kernel_name(settings.device)
    sibling("results")
    folder = args.results or (Path(tempfile.mkdtemp(prefix="gpu-dry-run-")) if args.dry_run
                              else Path.cwd() / "gpu-results")
    output = Output(folder, settings, args.budget)
    work = Path(tempfile.mkdtemp(prefix="gpu-work-"))

    handlers = {sig: signal.signal(sig, _raise_interrupted) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM)}
    signal.setitimer(signal.ITIMER_REAL, args.budget)
    results: list[Result] = []
    code = 0
    try:
        run_plan(PLAN_RUN, settings, time.monotonic() + args.budget, results, output, work)
    except Interrupted as e:
        print(f"stopped ({e}): the rows done so far are in {folder}", file=sys.stderr)
        code = 0 if str(e) == "time budget" else 143 if str(e) == "SIGTERM" else 130
        # a stop between two rows (or while one was being written) leaves rows without a status: say why
        for r in results:
            r.cells = r.cells or {"status": f"stopped: {e}"}
        done = {id(r.item) for r in results}
        results += [Result(i, {"status": f"skipped: not reached ({e})"}) for i in PLAN_RUN if id(i) not in done]
    except Exception as e:  # a bug of this script: the rows done so far are written already
        traceback.print_exc()
        code = 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        output.section(results)
        shutil.rmtree(work, ignore_errors=True)
    print(output.md.read_text())
    print(f"written: {output.jsonl} and {output.md} "
          f"(here: python benchmarks/results.py merge {output.md})")
    return code


if __name__ == "__main__":
    sys.exit(main())
