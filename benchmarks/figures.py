"""The figures the README and the issue notes quote, recomputed: `python benchmarks/figures.py` writes its two
sections of benchmarks/RESULTS.md (through benchmarks/results.py; `--quick` prints them only).

1. Per-GPU memory estimates for a Llama-3-8B-shaped model (launcher/distributed/memory.py; the hand computation
   behind them is in tests/unit/distributed/test_memory.py).
2. Data efficiency (real tokens / computed tokens) of the sample datasets with and without packing, as
   `tunelaunch prepare` reports it (launcher/data/processed.py), on the embedded tiny tokenizer.
No timings: absolute times on this CPU machine are not claims the project makes.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import results  # noqa: E402

from launcher import models  # noqa: E402
from launcher.config.schema import RunConfig  # noqa: E402
from launcher.data.load import check_data  # noqa: E402
from launcher.data.processed import prepare_sft  # noqa: E402
from launcher.distributed.memory import GIB, Layout, estimate, shape_from_config  # noqa: E402
from launcher.embedded import build_tiny_llama  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LLAMA3_8B = {
    "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 8192,
    "tie_word_embeddings": False, "rope_theta": 500000.0,
}


MEMORY_TITLE = "Memory per GPU: Llama-3-8B shape ({params:,} parameters), AdamW, bf16, 8 GPUs, 1 x 1024 tokens, " \
    "gradient checkpointing — benchmarks/figures.py"
EFFICIENCY_TITLE = "Real tokens / computed tokens of the sample files (tiny tokenizer, batch 2, file order) — " \
    "benchmarks/figures.py"


def memory_table() -> list[str]:
    shape = shape_from_config(LLAMA3_8B)
    rows = [("full, DDP", {}, Layout("ddp")), ("full, ZeRO-2", {}, Layout("deepspeed", 2)),
            ("full, ZeRO-3", {}, Layout("deepspeed", 3)),
            ("full, ZeRO-3 + optimizer offload", {}, Layout("deepspeed", 3, "optimizer")),
            ("full, ZeRO-3 + full offload", {}, Layout("deepspeed", 3, "optimizer_and_params")),
            ("LoRA r=16 all-linear, DDP", {"peft": True}, Layout("ddp")),
            ("QLoRA int4 r=16, DDP", {"peft": True, "quant": "int4"}, Layout("ddp"))]
    out = ["| layout | GiB per GPU |", "| --- | --- |"]
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
    out = ["| data | not packed | packed (best fit, padding-free, chunk 256) |", "| --- | --- | --- |"]
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    results.add_arguments(parser)
    args = parser.parse_args(argv)
    params = shape_from_config(LLAMA3_8B).params
    results.publish(args, "memory", MEMORY_TITLE.format(params=params), memory_table())
    results.publish(args, "token-efficiency", EFFICIENCY_TITLE, efficiency_table())


if __name__ == "__main__":
    main()
