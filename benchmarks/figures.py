"""The figures the README and the issue notes quote, recomputed: `python benchmarks/figures.py > benchmarks/RESULTS.md`.

1. Per-GPU memory estimates for a Llama-3-8B-shaped model (launcher/distributed/memory.py; the hand computation
   behind them is in tests/unit/distributed/test_memory.py).
2. Data efficiency (real tokens / computed tokens) of the sample datasets with and without packing, as
   `tunelaunch prepare` reports it (launcher/data/processed.py), on the embedded tiny tokenizer.
No timings: absolute times on this CPU machine are not claims the project makes.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from launcher import models
from launcher.config.schema import RunConfig
from launcher.data.load import check_data
from launcher.data.processed import prepare_sft
from launcher.distributed.memory import GIB, Layout, estimate, shape_from_config
from launcher.embedded import build_tiny_llama

REPO = Path(__file__).resolve().parents[1]
LLAMA3_8B = {
    "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 8192,
    "tie_word_embeddings": False, "rope_theta": 500000.0,
}


def memory_table() -> list[str]:
    shape = shape_from_config(LLAMA3_8B)
    rows = [("full, DDP", {}, Layout("ddp")), ("full, ZeRO-2", {}, Layout("deepspeed", 2)),
            ("full, ZeRO-3", {}, Layout("deepspeed", 3)),
            ("full, ZeRO-3 + optimizer offload", {}, Layout("deepspeed", 3, "optimizer")),
            ("full, ZeRO-3 + full offload", {}, Layout("deepspeed", 3, "optimizer_and_params")),
            ("LoRA r=16 all-linear, DDP", {"peft": True}, Layout("ddp")),
            ("QLoRA int4 r=16, DDP", {"peft": True, "quant": "int4"}, Layout("ddp"))]
    out = [f"## Memory per GPU: Llama-3-8B shape ({shape.params:,} parameters), AdamW, bf16, 8 GPUs, "
           "1 x 1024 tokens, gradient checkpointing", "", "| layout | GiB per GPU |", "| --- | --- |"]
    for name, opts, layout in rows:
        cfg = RunConfig()
        cfg.precision.mixed_precision = "bf16"
        cfg.training.batch_size, cfg.data.block_size, cfg.training.gradient_checkpointing = 1, 1024, True
        cfg.peft.enabled, cfg.peft.r = opts.get("peft", False), 16
        cfg.quantization.mode = opts.get("quant", "none")
        out.append(f"| {name} | {estimate(cfg, shape, layout, 8).total / GIB:.1f} |")
    return out


def efficiency_table() -> list[str]:
    tiny = str(build_tiny_llama())
    out = ["", "## Real tokens / computed tokens (tiny tokenizer, batch 2, file order)", "",
           "| data | not packed | packed (best fit, padding-free, chunk 256) |", "| --- | --- | --- |"]
    for sample, template in (("chat", "chatml"), ("pirate_chat", "chatml"), ("alpaca", "alpaca"),
                             ("prompt_completion", "none")):
        ratios = []
        for packing in (False, True):
            with tempfile.TemporaryDirectory() as cache:
                cfg = RunConfig()
                cfg.model.name_or_path = tiny
                cfg.data.path, cfg.data.chat_template = str(REPO / "samples" / sample), template
                cfg.data.valid_split, cfg.data.block_size, cfg.data.cache_dir = None, 512, cache
                cfg.data.packing, cfg.data.chunk_size = packing, 256 if packing else None
                cfg.training.batch_size = 2
                stats = prepare_sft(cfg, models.load_tokenizer(cfg), check_data(cfg)).stats["train"]
                ratios.append(stats.efficiency)
        out.append(f"| samples/{sample} ({template}) | {ratios[0]:.0%} | {ratios[1]:.0%} |")
    return out


if __name__ == "__main__":
    print("# Figures (written by benchmarks/figures.py)\n")
    print("\n".join(memory_table() + efficiency_table()))
