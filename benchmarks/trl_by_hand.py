"""Issue #11, item 3: the overhead of tunelaunch against the same SFT done with TRL by hand.

One SFT (same model, data, LoRA r16 all-linear with dropout 0, lr, constant schedule, batch 2, max length 256, seed
42, fp32, the ChatML template with the loss on the assistant turns, no packing, no evaluation or checkpoints) run
three ways, one after the other, each a fresh command as a user types it:
  (a) `tunelaunch train ...`;
  (b) a minimal hand-written TRL script, benchmarks/hand_sft.py, started with the same `accelerate launch
      --config_file <the accelerate_config.yaml tunelaunch wrote>` command tunelaunch uses for its worker;
  (c) TRL's own CLI, `trl sft --accelerate_config <same file> ...` (a local model folder and a local data folder,
      offline).
Every arm gets OMP_NUM_THREADS=2 (accelerate launch would set 1 when unset), an empty data cache (tunelaunch's
data.cache_dir and HF_DATASETS_CACHE) and the probe of benchmarks/probe/ (benchmarks/probed.py), which reads from
inside each training process: time from the command's start to the end of the first optimizer step, the median of
the step times (steps 2-30 of 30), the peak RSS of the training process, its trainable parameter count (a check
that every arm trains the same thing) and the last logged loss (logging every 10 steps: the mean loss of steps
21-30). Then the same three for a full fine-tune (no LoRA).

Full mode: SmolLM2-135M-Instruct, 30 steps per arm, LoRA and full (6 arms, ~1.5 min each on 2 idle cores).
--quick: the tiny random Llama, 6 steps, LoRA only (3 arms), prints only.

    python benchmarks/trl_by_hand.py [--quick] [--steps N] [--only lora|full]
"""
from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks import dataset, probed, results  # noqa: E402
from benchmarks.packing import model_folder  # noqa: E402

MAX_LENGTH, BATCH, SEED = 256, 2, 42
LR = {"lora": 2e-4, "full": 5e-5}
FIRST_STEP_SLACK_S = 3.0  # target: time to first step <= the hand-written script's + 3 s


def tunelaunch_command(w: dict, mode: str) -> list[str]:
    return [probed.tool("tunelaunch"), "train", f"project_name={w['out']}", "overwrite=true",
            f"model.name_or_path={w['model']}", f"data.path={w['rows']}", "data.chat_template=chatml",
            "data.valid_split=null", f"data.block_size={MAX_LENGTH}", "data.packing=false",
            f"data.cache_dir={w['cache']}", f"peft={'lora' if mode == 'lora' else 'none'}", "peft.dropout=0",
            f"training.max_steps={w['steps']}", f"training.batch_size={BATCH}", "training.gradient_accumulation=1",
            f"training.lr={LR[mode]}", "training.scheduler=constant", "training.warmup_ratio=0",
            f"training.seed={SEED}", "training.eval_strategy=no", "training.save_strategy=no",
            f"logging.steps={w['logging']}", "distributed.num_processes=1"]


def hand_command(w: dict, mode: str) -> list[str]:
    return [probed.tool("accelerate"), "launch", "--config_file", str(w["accelerate"]), str(HERE / "hand_sft.py"),
            "--model", str(w["model"]), "--data", str(w["rows"]), "--out", str(w["out"]),
            "--chat-template", str(w["template"]), "--max-length", str(MAX_LENGTH), "--batch", str(BATCH),
            "--steps", str(w["steps"]), "--lr", str(LR[mode]), "--seed", str(SEED),
            "--logging-steps", str(w["logging"]), *(["--lora"] if mode == "lora" else [])]


def trl_command(w: dict, mode: str) -> list[str]:
    lora = ["--use_peft", "--lora_r", "16", "--lora_alpha", "32", "--lora_dropout", "0",
            "--lora_target_modules", "all-linear"] if mode == "lora" else []
    return [probed.tool("trl"), "sft", "--accelerate_config", str(w["accelerate"]),
            "--model_name_or_path", str(w["model"]), "--dtype", "float32", "--attn_implementation", "sdpa",
            "--dataset_name", str(w["rows"].parent), "--chat_template_path", str(w["template"]),
            "--assistant_only_loss", "True", "--max_length", str(MAX_LENGTH),
            "--per_device_train_batch_size", str(BATCH), "--gradient_accumulation_steps", "1",
            "--max_steps", str(w["steps"]), "--learning_rate", str(LR[mode]), "--lr_scheduler_type", "constant",
            "--warmup_steps", "0", "--seed", str(SEED), "--logging_steps", str(w["logging"]), "--bf16", "False",
            "--gradient_checkpointing", "False", "--save_strategy", "no", "--report_to", "none",
            "--output_dir", str(w["out"]), *lora]


ARMS = {"tunelaunch train": tunelaunch_command, "hand-written TRL script (accelerate launch)": hand_command,
        "trl sft (TRL's CLI)": trl_command}


def measure(mode: str, base: dict, tmp: Path) -> list[tuple[str, probed.Run]]:
    out = []
    for i, (arm, build) in enumerate(ARMS.items()):
        folder = tmp / f"{mode}-{i}"
        folder.mkdir()
        w = dict(base, out=folder / "out", cache=folder / "data-cache")
        if arm != "tunelaunch train" and not (tmp / "accelerate_config.yaml").exists():
            sys.exit("tunelaunch's accelerate_config.yaml is missing: its arm must run first")
        run = probed.run(f"{mode}: {arm}", build(w, mode), folder, env_extra={"HF_DATASETS_CACHE": str(folder / "hf")})
        if arm == "tunelaunch train" and (folder / "out" / "accelerate_config.yaml").exists():
            shutil.copy(folder / "out" / "accelerate_config.yaml", tmp / "accelerate_config.yaml")
        out.append((arm, run))
    return out


def rows_of(mode: str, runs: list[tuple[str, probed.Run]]) -> list[list]:
    ours = runs[0][1]
    hand = runs[1][1]
    out = []
    for arm, run in runs:
        if not run.ok:
            why = run.output.strip().splitlines()[-1][:160] if run.output.strip() else "no output"
            out.append([mode, arm, f"failed (exit {run.returncode}): {why}", "", "", "", "", "", ""])
            continue
        target = ""
        if arm == "tunelaunch train" and hand.ok:
            first_ok = run.first_step_s <= hand.first_step_s + FIRST_STEP_SLACK_S
            step_ok = run.median_step_s <= hand.median_step_s
            target = (f"first step ≤ hand + {FIRST_STEP_SLACK_S:.0f} s — {results.verdict(first_ok)}; "
                      f"step ≤ hand — {results.verdict(step_ok)} ({run.median_step_s / hand.median_step_s:.2f}×)")
        out.append([mode, arm, f"{run.trainable_params:,}", f"{run.first_step_s:.1f}", f"{run.median_step_s:.3f}",
                    len(run.steps),
                    f"{run.peak_rss_mib:.0f}", f"{run.final_loss:.4f}", target])
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    results.add_arguments(parser)
    parser.add_argument("--steps", type=int, help="optimizer steps per arm (default 30; --quick 6)")
    parser.add_argument("--only", choices=["lora", "full"], help="one mode (default: both; --quick: lora)")
    args = parser.parse_args(argv)
    quick = args.quick
    steps = args.steps or (6 if quick else 30)
    modes = [args.only] if args.only else (["lora"] if quick else ["lora", "full"])
    model = model_folder(quick)
    start = time.time()
    figures = {}
    with tempfile.TemporaryDirectory(prefix="bench-trl-") as tmp:
        tmp = Path(tmp)
        from launcher.data.templates import CHATML

        template = tmp / "chatml.jinja"
        template.write_text(CHATML)
        data = tmp / "data"
        rows = dataset.write(max(64, steps * BATCH), data / "train.jsonl")  # one epoch covers every step
        base = {"model": model, "rows": rows, "template": template, "accelerate": tmp / "accelerate_config.yaml",
                "steps": steps, "logging": next(k for k in (10, 3, 1) if steps % k == 0)}
        table = []
        for mode in modes:
            runs = measure(mode, base, tmp)
            figures[mode] = {arm: {"ok": r.ok, "first_step_s": r.first_step_s, "median_step_s": r.median_step_s,
                                   "steps": len(r.steps), "trainable_params": r.trainable_params,
                                   "peak_rss_mib": r.peak_rss_mib, "final_loss": r.final_loss,
                                   "output": "" if r.ok else r.output[-2000:]} for arm, r in runs}
            table += rows_of(mode, runs)
    columns = ["fine-tune", "command", "trainable params", "s to first optimizer step", "median step s", "steps",
               "peak RSS MiB", "last logged loss", "target (tunelaunch vs hand-written)"]
    body = results.table(columns, table) + [
        "", f"Same SFT in every row: {model.name}, {BATCH} × ≤{MAX_LENGTH} tokens (padded, not packed), {steps} "
        f"steps, lr {LR['lora']} (LoRA) / {LR['full']} (full), constant, seed {SEED}, fp32, OMP_NUM_THREADS="
        f"{probed.THREADS}, cold data caches. Peak RSS is the training process's (the worker under accelerate)."]
    title = f"Overhead against TRL by hand ({model.name}) — benchmarks/trl_by_hand.py"
    results.publish(args, "trl-by-hand", title, body)
    figures["finite"] = all(math.isfinite(a["final_loss"]) for m in modes for a in figures[m].values() if a["ok"])
    print(f"\n({time.time() - start:.0f} s)")
    results.dump(args, figures)
    return figures


if __name__ == "__main__":
    main()
