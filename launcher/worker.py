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


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m launcher.worker RUN_DIR/config.yaml", file=sys.stderr)
        return 2
    from launcher import checkpointing

    checkpointing.install_stop_handlers()
    from launcher.distributed import runtime
    from launcher.logs import setup_logging

    folder = Path(argv[0]).resolve().parent
    # Before the libraries are imported: what they print then (bitsandbytes, DeepSpeed) is filtered and logged too.
    setup_logging(folder / "train.log" if runtime.is_main() else None)
    from launcher import manifest, model_card, run_dir as runs
    from launcher.callbacks import plot_loss_curve
    from launcher.trackers import log_run_files
    from launcher.methods import METHODS

    cfg = runs.read_run_config(folder)  # a resume's new configuration, pending until the checkpoint is loaded
    if not runtime.is_main() and not os.environ.get("TUNELAUNCH_LOG_ALL_RANKS"):
        # Rank 0 speaks for the job; the others print warnings and errors (their tracebacks) only, instead of
        # repeating every line once per process. TUNELAUNCH_LOG_ALL_RANKS=1 shows every rank's lines (debugging).
        logging.getLogger().setLevel(logging.WARNING)
    log = logging.getLogger("launcher.worker")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    if cfg.training.deterministic:
        checkpointing.setup_determinism(cfg.training.seed)
    runtime.prepare_process_state(cfg.distributed.backend)

    if runtime.local_rank() == 0:  # no rank saves before training starts
        checkpointing.remove_partial_checkpoints(folder)
    resume = runs.resume_checkpoint(folder, cfg.training.resume_from)
    if runtime.is_main():
        runs.write_state(folder, runs.Status.RUNNING, resumed_from=resume.name if resume else None)
    import torch

    log.info("rank %d of %d, trainer %s, %d CPU threads, run folder %s%s", runtime.rank(), runtime.world_size(),
             cfg.trainer.name, torch.get_num_threads(), folder, f", resuming from {resume.name}" if resume else "")
    started = time.time()
    try:
        metrics = METHODS[cfg.trainer.name].module.train(cfg, folder, str(resume) if resume else None)
        if metrics.get("preempted"):
            if runtime.is_main():
                runs.write_state(folder, runs.Status.PREEMPTED, global_step=metrics["global_step"],
                                 checkpoint=f"checkpoint-{metrics['global_step']}")
            log.warning("stopped on a signal after step %d with checkpoint-%d saved: run the same command again "
                        "to resume", metrics["global_step"], metrics["global_step"])
            return checkpointing.PREEMPTED
        if runtime.is_main():
            metrics["seconds"] = round(time.time() - started, 1)
            manifest.write(folder, cfg, metrics)
            plot_loss_curve(folder)
            model_card.write(folder, cfg, metrics)
            log_run_files(folder, cfg)  # the loss curve and configs join the mlflow/trackio run
            runs.write_state(folder, runs.Status.FINISHED, **metrics)
            if cfg.eval.tasks and cfg.cluster.kind != "slurm":  # on Slurm a dependent job scores it (eval.sbatch)
                code = _score(folder, log)
                if code:
                    return code
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
    except BaseException as err:
        if runtime.is_main():
            # A resume that never started forgets its configuration: config.yaml still describes the checkpoints.
            unstarted = resume.name if resume is not None and runs.drop_pending_config(folder) else None
            runs.write_state(folder, runs.Status.FAILED, error=f"{type(err).__name__}: {err}"[:500],
                             resume_not_started=unstarted)
        runtime.abort()  # no barrier: the other ranks may never reach it, and the job would hang
        raise
    finally:
        runtime.teardown()
    return 0


def _score(folder: Path, log) -> int:
    """eval.tasks on the finished run, in rank 0 alone while the others leave (lm-eval's one-process path: the
    scores do not depend on the world size, and no rank waits in a collective meanwhile). A failure keeps the
    trained run and says how to score it again, as a failed upload does."""
    import gc

    gc.collect()  # the trainer's model and optimizer are gone; free their memory before the model loads again
    try:
        from launcher.evaluation.run import evaluate_run

        code = evaluate_run(folder)
    except Exception as err:
        log.error("the run is saved in %s, but scoring it failed: %s: %s. Retry with `tunelaunch eval %s`.",
                  folder, type(err).__name__, err, folder)
        return 3
    if code:
        log.error("the run is saved in %s, but scoring it failed (exit %d). Retry with `tunelaunch eval %s`.",
                  folder, code, folder)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
