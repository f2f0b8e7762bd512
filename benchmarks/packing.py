"""Issue #11, item 1: what packing saves, in tokens and in wall time.

1. Real tokens / computed tokens of three layouts of the same long-tailed chat rows (benchmarks/dataset.py), at
   sequence lengths 512 and 2048, through the project's own preparation (launcher/data/processed.py) and a real
   tokenizer (SmolLM2's; --quick: the embedded tiny one):
   - padded: one sample per row, truncated to the length, each batch of 8 padded to its longest sample;
   - concatenated (AutoTrain-style, `data.wrap_packed_sequences=true`): all samples concatenated and cut into full
     blocks. It computes almost no padding, but a sample attends to the samples before it in its block and
     samples are cut across blocks: the table gives the share of tokens whose context holds another sample;
   - ours (`data.packing=true`, trl's best-fit decreasing, padding-free): samples truncated to the length, packed
     into sequences whose position ids restart at each sample; nothing is padded. That no sample sees another is
     measured, not assumed: the logits of a sample packed behind another against the same sample alone.
2. Wall time of one epoch of LoRA SFT (r16, all-linear, dropout 0) through `tunelaunch train`, padded vs packed, on
   the same rows (same samples, same trained tokens), batch 2, block 512, constant lr; and the two loss curves
   compared over matching token counts (quarters of the epoch's tokens). Full mode: SmolLM2-135M-Instruct, 64 rows
   (~6 min on 2 cores); --quick: the tiny random Llama, 16 rows, block 256.

3. The same for LoRA DPO (`data.packing=true` on a pairwise trainer: launcher/trainers/packed_pairs.py): one epoch
   of generated preference pairs (the chat generator's prompts, two of its long-tailed replies as chosen and
   rejected: 3..1,500 words), padded vs packed, same batches of 2 pairs. Beside the measured speed-up, its ceiling:
   the computed tokens of the padded batches over the packed ones (the packed run logs both). The per-step losses
   of the two runs are compared too (same batches: they must agree). Full: SmolLM2-135M-Instruct, 24 pairs, block
   512 (~4 min); --quick: the tiny model, 8 pairs, block 256.

    python benchmarks/packing.py            # full: writes sections of benchmarks/RESULTS.md
    python benchmarks/packing.py --quick    # < 2 min; prints only
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks import dataset, probed, results  # noqa: E402

PAD_BATCH = 8
LENGTHS = (512, 2048)
TARGET_RATIO = 0.99
TARGET_SPEEDUP = 1.4
LAYOUTS = {"padded": "none", "concatenated (AutoTrain-style)": "wrapped", "ours (best fit, padding-free)": "bfd"}


def model_folder(quick: bool) -> Path:
    from launcher.embedded import build_tiny_llama, embedded_model

    if quick:
        return build_tiny_llama()
    folder = Path(embedded_model("smollm2"))
    if not (folder / "config.json").is_file():
        sys.exit(f"{folder} is missing: build it once with `python -m launcher.embedded smollm2`")
    return folder


def config(rows_file: Path, model: Path, length: int, strategy: str, batch: int, cache_dir: str):
    from launcher.config.schema import RunConfig

    cfg = RunConfig()
    cfg.model.name_or_path = str(model)
    d = cfg.data
    d.path, d.chat_template, d.valid_split = str(rows_file), "chatml", None
    d.block_size, d.cache_dir = length, cache_dir
    d.chunk_size = length  # as the plan resolves it (null -> block_size); this config skips the plan
    d.packing, d.wrap_packed_sequences = strategy != "none", strategy == "wrapped"
    cfg.training.batch_size = batch
    return cfg


def prepare(rows_file: Path, model: Path, length: int, strategy: str, batch: int):
    """The project's preparation of the rows (no cache): the stats `tunelaunch prepare` prints."""
    from launcher import models
    from launcher.data.load import check_data
    from launcher.data.processed import prepare_sft

    with tempfile.TemporaryDirectory() as cache:
        cfg = config(rows_file, model, length, strategy, batch, cache)
        data = check_data(cfg)
        assert not data.problems, data.problems
        return prepare_sft(cfg, models.load_tokenizer(cfg), data, use_cache=False).stats["train"]


def cross_document_share(lengths: list[int], block: int) -> float:
    """Concatenation: the share of tokens whose context (within their block) holds another sample's tokens: every
    token of a sample that starts inside a block, after another sample's tail."""
    crossing, pos = 0, 0
    for n in lengths:
        start_offset = pos % block
        if start_offset:  # starts mid-block: its tokens up to the block's end see the previous samples
            crossing += min(n, block - start_offset)
        pos += n
    return crossing / pos if pos else 0.0


def packed_isolation(model: Path) -> float:
    """Max |logit difference| of a sample packed after another (position ids restarting, as our padding-free
    batches are; use_cache off as in training) against the same sample alone. ~1e-6: no cross attention."""
    import torch
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(model), attn_implementation="sdpa").eval()
    g = torch.Generator().manual_seed(0)
    a = torch.randint(10, 1000, (1, 9), generator=g)
    b = torch.randint(10, 1000, (1, 6), generator=g)
    positions = torch.tensor([list(range(9)) + list(range(6))])
    with torch.no_grad():
        alone = m(b, use_cache=False).logits
        packed = m(torch.cat([a, b], 1), position_ids=positions, use_cache=False).logits[:, 9:]
    return (alone - packed).abs().max().item()


def ratio_table(rows_file: Path, model: Path) -> tuple[list[str], dict]:
    isolation = packed_isolation(model)
    figures, rows = {}, []
    for length in LENGTHS:
        for layout, strategy in LAYOUTS.items():
            st = prepare(rows_file, model, length, strategy, PAD_BATCH)
            ratio = st.efficiency
            figures[(length, strategy)] = ratio
            if strategy == "none":
                cross, target = "no (one sample per row)", ""
                cut = f"{st.truncated} truncated"
            elif strategy == "wrapped":
                cross = f"yes: {cross_document_share(st.lengths, length):.0%} of tokens see another sample"
                cut = f"{st.split_samples} split across blocks"
                target = ""
            else:
                cross = f"no (measured: max logit diff {isolation:.1e})"
                cut = f"{st.truncated} truncated"
                target = f"≥ {TARGET_RATIO} — {results.verdict(ratio >= TARGET_RATIO)}"
            rows.append([length, layout, f"{ratio:.3f}", st.sequences, st.real_tokens, st.computed_tokens, cut,
                         cross, target])
    columns = ["seq length", "layout", "real/computed tokens", "rows computed", "real tokens", "computed tokens",
               "samples cut", "cross-document attention", "target"]
    return results.table(columns, rows), {"ratios": figures, "isolation": isolation}


# ---- one epoch, padded vs packed

def train_command(rows_file: Path, model: Path, out: Path, packed: bool, block: int) -> list[str]:
    return [probed.tool("tunelaunch"), "train", f"project_name={out}", "overwrite=true",
            f"model.name_or_path={model}", f"data.path={rows_file}", "data.chat_template=chatml",
            "data.valid_split=null", f"data.block_size={block}", f"data.packing={str(packed).lower()}",
            "peft=lora", "peft.dropout=0", "training.epochs=1", "training.batch_size=2",
            "training.gradient_accumulation=1", "training.lr=2e-4", "training.scheduler=constant",
            "training.warmup_ratio=0", "training.eval_strategy=no", "training.save_strategy=no",
            "logging.steps=1", "distributed.num_processes=1"]


def quarters(losses: list[tuple[int, float, float]]) -> list[float]:
    """Mean logged loss over each quarter of the epoch's tokens (num_tokens is cumulative)."""
    total = losses[-1][1]
    bins = [[] for _ in range(4)]
    previous = 0.0
    for _, seen, loss in losses:
        middle = (previous + seen) / 2 / total  # where this step's tokens sit in the epoch
        bins[min(3, int(middle * 4))].append(loss)
        previous = seen
    return [statistics.fmean(b) if b else float("nan") for b in bins]


def epoch_table(rows_file: Path, model: Path, block: int, workdir: Path) -> tuple[list[str], dict]:
    runs, stats = {}, {}
    for name, packed in (("padded", False), ("packed", True)):
        stats[name] = prepare(rows_file, model, block, "bfd" if packed else "none", 2)
        run = probed.run(f"epoch {name}", train_command(rows_file, model, workdir / name, packed, block), workdir)
        if not run.ok:
            sys.exit(run.failure())
        runs[name] = run
    rows, curves = [], {}
    for name, run in runs.items():
        st, losses = stats[name], run.losses()
        curves[name] = quarters(losses)
        rows.append([name, len(run.steps), st.real_tokens, st.computed_tokens, st.trained_tokens,
                     f"{run.train_s:.1f}", f"{run.wall_s:.1f}", f"{losses[0][2]:.4f}", f"{losses[-1][2]:.4f}",
                     " / ".join(f"{x:.3f}" for x in curves[name])])
    speedup = runs["padded"].train_s / runs["packed"].train_s
    gap = max(abs(a - b) / abs(a) for a, b in zip(curves["padded"], curves["packed"]))
    columns = ["batches", "optimizer steps", "real tokens", "computed tokens", "trained tokens", "epoch s (train loop)",
               "command s", "first loss", "last loss", "mean loss per quarter of the tokens"]
    body = results.table(columns, rows) + [
        "",
        f"Packed epoch {speedup:.2f}× faster than padded (train loop) — target ≥ {TARGET_SPEEDUP}× — "
        f"{results.verdict(speedup >= TARGET_SPEEDUP)}. The ceiling on these rows is the ratio of computed "
        f"tokens, {stats['padded'].computed_tokens / stats['packed'].computed_tokens:.2f}× (these {stats['padded'].rows} rows "
        "waste less to padding than the larger set of the token table); what packing still pays "
        "is attention over longer sequences (sdpa now runs each packed sample on its own: launcher/attention.py).",
        f"Loss curves over matching token counts: largest gap between the quarters' mean losses {gap:.1%} "
        "(same samples and per-token loss; packed takes fewer, larger optimizer steps, so the curves are close, "
        "not identical).",
    ]
    figures = {"speedup": speedup, "curve_gap": gap, "curves": curves,
               "trained_tokens": {k: s.trained_tokens for k, s in stats.items()},
               "losses": {k: [l for _, _, l in r.losses()] for k, r in runs.items()}}
    return body, figures


# ---- one epoch of LoRA DPO, padded vs packed

def preference_pairs(n: int, out: Path, seed: int = 0) -> Path:
    """n prompt/chosen/rejected rows from the chat generator: row 2i's question, its reply as chosen and row
    2i+1's reply as rejected (both long-tailed), as strings the chat template renders."""
    import json

    chat = dataset.rows(2 * n, seed)
    pairs = [{"prompt": a["messages"][-2]["content"], "chosen": a["messages"][-1]["content"],
              "rejected": b["messages"][-1]["content"]} for a, b in zip(chat[::2], chat[1::2])]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(p) + "\n" for p in pairs), encoding="utf-8")
    return out


def dpo_command(pairs_file: Path, model: Path, out: Path, packed: bool, block: int) -> list[str]:
    """The same run as the SFT epoch's, with trainer=dpo on the preference pairs."""
    command = train_command(pairs_file, model, out, packed, block)
    return command[:2] + ["trainer=dpo"] + command[2:]


def last_log(run, key: str) -> float:
    values = [float(e["logs"][key]) for e in run.events if e["event"] == "log" and key in (e.get("logs") or {})]
    return values[-1] if values else float("nan")


def preference_table(pairs_file: Path, model: Path, block: int, workdir: Path) -> tuple[list[str], dict]:
    runs = {}
    for name, packed in (("padded", False), ("packed", True)):
        run = probed.run(f"dpo epoch {name}", dpo_command(pairs_file, model, workdir / f"dpo-{name}", packed, block),
                         workdir)
        if not run.ok:
            sys.exit(run.failure())
        runs[name] = run
    # The packed run counts both: its computed tokens and what its batches (the padded run's: same sampler, same
    # seed) computed padded. trl's num_tokens (real tokens) must agree between the runs for that to hold.
    packed_run = runs["packed"]
    computed = {"padded": last_log(packed_run, "packing/padded_tokens"),
                "packed": last_log(packed_run, "packing/computed_tokens")}
    real = {name: run.losses()[-1][1] for name, run in runs.items()}
    losses = {name: [l for _, _, l in run.losses()] for name, run in runs.items()}
    ceiling = computed["padded"] / computed["packed"]
    speedup = runs["padded"].train_s / runs["packed"].train_s
    loss_gap = max(abs(a - b) for a, b in zip(losses["padded"], losses["packed"]))
    rows = [[name, len(runs[name].steps), int(real[name]), int(computed[name]), f"{runs[name].train_s:.1f}",
             f"{runs[name].wall_s:.1f}", f"{losses[name][0]:.4f}", f"{losses[name][-1]:.4f}"] for name in runs]
    columns = ["batches", "optimizer steps", "real tokens (trl's num_tokens)", "computed tokens",
               "epoch s (train loop)", "command s", "first loss", "last loss"]
    share = speedup / ceiling
    allows = 0.95 * ceiling >= TARGET_SPEEDUP
    body = results.table(columns, rows) + [
        "",
        f"Packed DPO epoch {speedup:.2f}× faster than padded (train loop); ceiling (padded / packed computed tokens) "
        f"{ceiling:.2f}×: {share:.0%} of it — target ≥ 95% of the ceiling — {results.verdict(share >= 0.95)}; "
        f"target ≥ {TARGET_SPEEDUP}× " + (f"— {results.verdict(speedup >= TARGET_SPEEDUP)}" if allows else
                                          f"— not applicable (95% of this ceiling is below {TARGET_SPEEDUP}×)") + ".",
        f"Same batches, same steps: the largest per-step loss difference between the two runs is {loss_gap:.1e} "
        "(packing changes what is computed, not the loss).",
    ]
    figures = {"dpo_speedup": speedup, "dpo_ceiling": ceiling, "dpo_share_of_ceiling": share,
               "dpo_computed_tokens": computed, "dpo_real_tokens": real, "dpo_losses": losses,
               "dpo_loss_gap": loss_gap}
    return body, figures


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    results.add_arguments(parser)
    parser.add_argument("--rows", type=int, help="rows for the token ratios (default 2000; --quick 300)")
    parser.add_argument("--train-rows", type=int, help="rows for the epochs (default 64; --quick 16)")
    parser.add_argument("--skip-epochs", action="store_true", help="no SFT epochs (the token ratios are seconds)")
    parser.add_argument("--skip-preference", action="store_true", help="no DPO epochs")
    parser.add_argument("--pairs", type=int, help="preference pairs for the DPO epochs (default 24; --quick 8)")
    args = parser.parse_args(argv)
    quick = args.quick
    model = model_folder(quick)
    n_rows = args.rows or (300 if quick else 2000)
    n_train = args.train_rows or (16 if quick else 64)
    block = 256 if quick else 512
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="bench-packing-") as tmp:
        tmp = Path(tmp)
        rows_file = dataset.write(n_rows, tmp / "chat.jsonl")
        ratios, figures = ratio_table(rows_file, model)
        title = (f"Packing: real / computed tokens ({n_rows} generated chat rows, {model.name} tokenizer, "
                 f"padded batches of {PAD_BATCH}) — benchmarks/packing.py")
        results.publish(args, "packing-tokens", title, ratios)
        if not args.skip_epochs:
            train_file = dataset.write(n_train, tmp / "train.jsonl")
            body, epoch = epoch_table(train_file, model, block, tmp)
            figures.update(epoch)
            title = (f"Packing: one epoch of LoRA SFT, padded vs packed ({model.name}, {n_train} generated rows, "
                     f"batch 2, block {block}, {probed.THREADS} threads) — benchmarks/packing.py")
            results.publish(args, "packing-epoch", title, body)
        if not args.skip_preference:
            n_pairs = args.pairs or (8 if quick else 24)
            body, dpo = preference_table(preference_pairs(n_pairs, tmp / "pairs.jsonl"), model, block, tmp)
            figures.update(dpo)
            title = (f"Packing: one epoch of LoRA DPO, padded vs packed ({model.name}, {n_pairs} generated pairs, "
                     f"batch 2, block {block}, {probed.THREADS} threads) — benchmarks/packing.py")
            results.publish(args, "packing-dpo-epoch", title, body)
    figures["finite"] = all(math.isfinite(x) for key in ("losses", "dpo_losses")
                            for v in figures.get(key, {}).values() for x in v)
    print(f"\n({time.time() - start:.0f} s)")
    results.dump(args, figures)
    return figures


if __name__ == "__main__":
    main()
