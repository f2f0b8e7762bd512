"""What runs on every rank: `python -m launcher.worker RUN/config.yaml` (under accelerate launch or torchrun).

It reads the resolved configuration the launcher wrote and never composes Hydra again (under DDP each
process would otherwise make its own output folder). Only rank 0 writes outside the trainer's own saves.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import yaml


def load_resolved(path: Path):
    from launcher.config.parse import from_dict
    from launcher.config.schema import REDACTED, RunConfig

    cfg, problems = from_dict(RunConfig, yaml.safe_load(path.read_text()))
    if problems:
        raise SystemExit(f"{path} is not a valid resolved configuration:\n" + "\n".join(map(str, problems)))
    if cfg.hub.token == REDACTED or cfg.hub.token is None:
        cfg.hub.token = os.environ.get("HF_TOKEN")  # the secret travels in the environment only
    return cfg


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m launcher.worker RUN_DIR/config.yaml", file=sys.stderr)
        return 2
    from launcher import manifest, model_card, run_dir as runs
    from launcher.callbacks import plot_loss_curve
    from launcher.distributed import runtime
    from launcher.logs import setup_logging
    from launcher.trainers import trainer_module

    config_path = Path(argv[0]).resolve()
    folder = config_path.parent
    cfg = load_resolved(config_path)
    setup_logging(folder / "train.log" if runtime.is_main() else None)
    if not runtime.is_main() and not os.environ.get("TUNELAUNCH_LOG_ALL_RANKS"):
        # Rank 0 speaks for the job; the others print warnings and errors (their tracebacks) only, instead of
        # repeating every line once per process. TUNELAUNCH_LOG_ALL_RANKS=1 shows every rank's lines (debugging).
        logging.getLogger().setLevel(logging.WARNING)
    log = logging.getLogger("launcher.worker")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from launcher.distributed import probe

    probe.install(folder)  # test-only: does nothing unless TUNELAUNCH_PROBE_DIR / _FAIL_RANK is set
    runtime.prepare_process_state(cfg.distributed.backend)

    resume = runs.latest_checkpoint(folder)
    if runtime.is_main():
        runs.write_state(folder, "running", resumed_from=resume.name if resume else None)
    log.info("rank %d of %d, trainer %s, run folder %s%s", runtime.rank(), runtime.world_size(),
             cfg.trainer.name, folder, f", resuming from {resume.name}" if resume else "")
    started = time.time()
    try:
        metrics = trainer_module(cfg.trainer.name).train(cfg, folder, str(resume) if resume else None)
        if runtime.is_main():
            metrics["seconds"] = round(time.time() - started, 1)
            manifest.write(folder, cfg, metrics)
            plot_loss_curve(folder)
            model_card.write(folder, cfg, metrics)
            runs.write_state(folder, "finished", **metrics)
            if cfg.hub.push_to_hub:
                # After the run is marked finished: a failed upload must not send a retry back into training.
                from launcher.hub import push

                try:
                    metrics["pushed_to"] = push(folder, cfg)
                except Exception as err:
                    log.error("the run is saved in %s, but the upload to the hub failed: %s: %s. Retry with "
                              "`tunelaunch push %s`.", folder, type(err).__name__, err, folder)
                    return 3
        log.info("done in %.0f s: %s", time.time() - started, metrics)
    except BaseException:
        runtime.abort()  # no barrier: the other ranks may never reach it, and the job would hang
        raise
    finally:
        runtime.teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
