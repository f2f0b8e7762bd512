"""What one optimizer step costs inside `tunelaunch train`, against the floor: a bare forward + backward + AdamW step
of the same LoRA model on the same batches.

Three arms, built in one process from the same resolved configuration (launcher.trainers.sft.build, the code
`tunelaunch train` runs) and timed side by side, in alternating rounds so that a change of load hits all three:

  - bare:  the PEFT model, `model(**batch).loss.backward()`, gradient clipping, `torch.optim.AdamW.step()`
  - trl:   trl's own SFTTrainer (what the project ran before launcher/trainers/sft_step.py)
  - ours:  the trainer `tunelaunch train` builds now

A step is the time between two `on_step_end` callbacks (data, forward, backward, optimizer, logging: what a user
pays); the first step of every round is left out (warm-up). Packed 2 x 512-token batches of the generated chat data
(benchmarks/dataset.py), LoRA r16 on every linear layer, lora_dropout 0, fp32, logging every 5 steps.

    python benchmarks/step_overhead.py            # SmolLM2-135M-Instruct, writes RESULTS.md (~6 min on 2 cores)
    python benchmarks/step_overhead.py --quick    # the tiny model, prints only (< 1 min)
"""
from __future__ import annotations

import argparse
import copy
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import dataset, results  # noqa: E402

TARGET = 1.05  # ours / bare


class StepClock:
    """Wall time between consecutive step ends."""

    def __init__(self):
        from transformers import TrainerCallback

        clock = self

        class Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):
                clock.last = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                now = time.perf_counter()
                clock.steps.append(now - clock.last)
                clock.last = now

        self.callback, self.steps, self.last = Callback(), [], 0.0


def build_arm(overrides: list[str], run_dir: Path, trl_class: bool):
    """A trainer as `tunelaunch train` builds it; with trl_class, trl's SFTTrainer in place of ours."""
    import launcher.trainers.sft_step as sft_step
    from launcher.hardware import Hardware
    from launcher.planning import make_plan
    from launcher.trainers import sft

    plan = make_plan(None, [*overrides, f"project_name={run_dir}"], Hardware())
    ours = sft_step.SFTTrainer
    if trl_class:
        from trl import SFTTrainer as TrlSFTTrainer

        sft_step.SFTTrainer = TrlSFTTrainer
    try:
        trainer, _, _ = sft.build(plan.cfg, run_dir)
    finally:
        sft_step.SFTTrainer = ours
    return trainer


def time_trainer(trainer, steps: int) -> list[float]:
    clock = StepClock()
    trainer.add_callback(clock.callback)
    trainer.args.max_steps = steps
    trainer.train()
    trainer.remove_callback(clock.callback)
    return clock.steps[1:]


def time_bare(model, batches: list[dict], lr: float) -> list[float]:
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    model.train()
    times, last = [], time.perf_counter()
    for batch in batches:
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        now = time.perf_counter()
        times.append(now - last)
        last = now
    return times[1:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    results.add_arguments(parser)
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 3; quick 2)")
    parser.add_argument("--steps", type=int, default=None, help="steps per arm and round (default 7; quick 4)")
    args = parser.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 3)
    steps = args.steps or (4 if args.quick else 7)

    import torch

    from launcher import embedded

    torch.set_num_threads(torch.get_num_threads())  # as the machine gives it; recorded in the header
    logging.basicConfig(level=logging.WARNING)
    model = embedded.build_tiny_llama() if args.quick else embedded.smollm2_folder()
    work = Path(tempfile.mkdtemp(prefix="step-overhead-"))
    dataset.write(400, work / "data" / "train.jsonl", seed=0)
    overrides = ["recipe=sft/quickstart", f"model.name_or_path={model}", f"data.path={work / 'data'}",
                 "data.packing=true", "data.block_size=512", "training.batch_size=2",
                 "training.gradient_accumulation=1", "peft.dropout=0", "logging.steps=5",
                 "training.save_strategy=no", "training.eval_strategy=no"]
    arms = {"trl": build_arm(overrides, work / "trl", trl_class=True),
            "ours": build_arm(overrides, work / "ours", trl_class=False)}
    bare_model = copy.deepcopy(arms["ours"].model)
    loader = arms["ours"].get_train_dataloader()
    batches = [arms["ours"]._prepare_inputs(b) for b, _ in zip(loader, range(steps))]
    tokens = int(batches[0]["input_ids"].numel())

    times: dict[str, list[float]] = {"bare": [], "trl": [], "ours": []}
    for r in range(rounds):
        times["bare"] += time_bare(bare_model, batches, lr=1e-3)
        for name, trainer in arms.items():
            times[name] += time_trainer(trainer, steps)
        print(f"round {r + 1}/{rounds}: " + ", ".join(f"{k} {statistics.median(v):.3f} s" for k, v in times.items()),
              flush=True)

    floor = statistics.median(times["bare"])
    rows = []
    for name, label in (("bare", "bare forward + backward + AdamW (the floor)"),
                        ("trl", "trl's SFTTrainer (before)"), ("ours", "`tunelaunch train`'s trainer (after)")):
        med = statistics.median(times[name])
        target = f"≤ {TARGET:.2f}× bare: {results.verdict(med / floor <= TARGET)}" if name == "ours" else ""
        rows.append([label, f"{med:.3f}", f"{min(times[name]):.3f}", len(times[name]), f"{med / floor:.3f}×", target])
    body = [f"Model: {'tiny Llama (quick)' if args.quick else 'SmolLM2-135M-Instruct'}, LoRA r16 all-linear, "
            f"dropout 0, fp32; packed batches of {tokens} tokens; {rounds} alternating rounds of {steps} steps "
            "per arm, the first step of each round left out.", "",
            *results.table(["arm", "median s/step", "min s/step", "steps", "vs bare", "target"], rows), "",
            "Why trl's step costs more here: its fused LM head has no CPU kernel, so it scores every position and "
            "recomputes the logits in backward, and computes entropy and token accuracy every micro-batch; "
            "launcher/trainers/sft_step.py uses the model's own loss and computes those two metrics from the logits "
            "on logging steps only (on CUDA with Triton, trl's fused kernel is kept)."]
    results.publish(args, "step_overhead", "Step overhead: our trainer against a bare step", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
