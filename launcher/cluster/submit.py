"""The one door from the CLI to Slurm: write a run's batch scripts, submit them, show a dry run, run the batch
step of `sbatch slurm/train.sbatch`, and the rules a submission (one run, or a sweep's job array) must meet."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import launcher
from launcher import atomic
from launcher.cluster import jobs, script
from launcher.cluster.resources import in_batch_step  # noqa: F401 (the CLI's)
from launcher.config.schema import RunConfig


def write(cfg: RunConfig, run_dir: Path, cwd: Path | None = None) -> list[str]:
    """job.sbatch (and prepare.sbatch, the log folder, the code snapshot) in the run folder; returns the sbatch
    command of the training job."""
    cwd = Path(cwd or os.getcwd())
    atomic.write_text(run_dir / script.JOB_FILE, script.job_script(cfg, run_dir, cwd))
    (run_dir / script.JOB_FILE).chmod(0o755)
    script.log_dir(cfg, run_dir).mkdir(parents=True, exist_ok=True)
    if cfg.cluster.preprocess_job:
        atomic.write_text(run_dir / script.PREPARE_FILE, script.prepare_script(cfg, run_dir, cwd))
    if cfg.eval.tasks:  # submitted by job.sbatch itself once the run is finished
        atomic.write_text(run_dir / script.EVAL_FILE, script.eval_script(cfg, run_dir, cwd))
    if cfg.cluster.snapshot:
        snapshot_code(run_dir)
    return ["sbatch", "--parsable", str((run_dir / script.JOB_FILE).resolve())]


def snapshot_code(run_dir: Path) -> Path:
    """The package, its conf/ and recipes/ as they are now, in RUN/code (job.sbatch puts it first on PYTHONPATH).
    Written once: a requeue or a resubmission runs the code of the first submission."""
    target = run_dir / script.CODE_DIR
    if target.is_dir():
        return target
    staging = run_dir / f".{script.CODE_DIR}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(Path(launcher.__file__).resolve().parent, staging / "launcher", ignore=ignore)
    for folder in (launcher.CONF_DIR, launcher.RECIPES_DIR):
        shutil.copytree(folder, staging / folder.name, ignore=ignore)
    staging.rename(target)
    return target


def sbatch(command: list[str], dependency: str | None = None) -> str:
    """Submit; returns the job id (sbatch's own error text on failure, as a RuntimeError)."""
    if dependency:
        command = [command[0], f"--dependency={dependency}", "--kill-on-invalid-dep=yes", *command[1:]]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"sbatch refused the job: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout.strip().split(";")[0]


def submit(cfg: RunConfig, run_dir: Path, command: list[str]) -> list[str]:
    """Submit a written run (its preprocessing job first, when asked for); every job id is recorded in
    RUN/jobs.tsv. Returns the ids, the training job's last. A training job waiting for a preprocessing job that
    fails is cancelled by Slurm (--kill-on-invalid-dep=yes), not left pending forever."""
    ids = []
    if cfg.cluster.preprocess_job:
        ids.append(sbatch(["sbatch", "--parsable", str((run_dir / script.PREPARE_FILE).resolve())]))
        jobs.record(run_dir, ids[0], "prepare", "submitted")
    ids.append(sbatch(command, dependency=f"afterok:{ids[0]}" if ids else None))
    jobs.record(run_dir, ids[-1], "train", "submitted", f"after prepare job {ids[0]}" if len(ids) > 1 else "")
    return ids


def submit_array(cfg: RunConfig, base: Path, trials: list[Path]) -> str:
    """One Slurm job array for the trials of a sweep (each trial folder already written, job.sbatch included)."""
    base.mkdir(parents=True, exist_ok=True)
    atomic.write_text(base / script.TRIALS_FILE, json.dumps([str(t.resolve()) for t in trials], indent=1))
    atomic.write_text(base / script.ARRAY_FILE, script.array_script(cfg, base, trials))
    script.log_dir(cfg, base).mkdir(parents=True, exist_ok=True)
    array = sbatch(["sbatch", "--parsable", str((base / script.ARRAY_FILE).resolve())])
    for i, trial in enumerate(trials):
        jobs.record(trial, f"{array}_{i}", "train", "submitted", f"array {array} task {i}")
    return array


def run_batch_step(run_dir: Path) -> int:
    """`sbatch slurm/train.sbatch ...`: the run folder is written (job.sbatch from the allocation), now this
    process becomes the batch step itself. exec keeps the process id, so the time limit's signal (sent to the
    batch shell) reaches job.sbatch's handler."""
    path = str((run_dir / script.JOB_FILE).resolve())
    os.execv("/bin/bash", ["bash", path])
    return 1  # not reached


def dry_run(cfg: RunConfig, run_dir: Path) -> str:
    """What `submit` would write, and what the job then runs on each node; nothing is written."""
    from launcher.distributed.launch import render

    run_dir = run_dir.resolve()
    parts = []
    if cfg.cluster.preprocess_job:
        parts.append(f"# {run_dir / script.PREPARE_FILE} (not written)\n{script.prepare_script(cfg, run_dir)}")
    parts.append(f"# {run_dir / script.JOB_FILE} (not written)\n{script.job_script(cfg, run_dir)}")
    if cfg.eval.tasks:
        parts.append(f"# {run_dir / script.EVAL_FILE} (not written; job.sbatch submits it once the run is finished)"
                     f"\n{script.eval_script(cfg, run_dir)}")
    example = 123456
    port = script.port_for(str(example))
    lines = ["# What the job runs (job.sbatch above is its batch step, on the first node, outside any container):",
             '#   head node: scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1  -> TUNELAUNCH_MASTER_ADDR',
             f"#   port:      {script.PORT_BASE} + SLURM_JOB_ID % {script.PORT_RANGE} -> TUNELAUNCH_MASTER_PORT "
             f"(job {example}: {port})",
             "#   srun:      " + render(script.srun_line(cfg, run_dir, Path.cwd())).replace("\n", "\\n"),
             *vllm_lines(cfg, run_dir),
             "# In each task (node rank = SLURM_NODEID, read inside the task; no Slurm command is called there):",
             f"#   {script.python_for(cfg)} -m {script.NODE_MODULE} {run_dir}   which starts this node's workers:"]
    lines += [f"#   {line}" for line in node_commands(cfg, run_dir, str(port))]
    parts.append("\n".join(lines))
    return "\n".join(parts)


def vllm_lines(cfg: RunConfig, run_dir: Path) -> list[str]:
    """The dry run's account of the vLLM server step (vllm_mode=server), started and awaited before training."""
    from launcher.distributed.launch import render

    if not script.vllm_server_nodes(cfg):
        return []
    first = cfg.cluster.nodes + 1
    return [f"#   vLLM:      node(s) {first}-{script.job_nodes(cfg)} of the job, started first and awaited (GET "
            f"/health, at most {script.VLLM_WAIT_SECONDS} s): "
            + render(script.vllm_srun_line(cfg, run_dir, Path.cwd())).replace("\n", "\\n"),
            f'#   host {first}: scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n {first}p  -> '
            f"{script.VLLM_URL_VARIABLE}=http://HOST:{script.VLLM_PORT} (trl's vllm_server_base_url)"]


def node_commands(cfg: RunConfig, run_dir: Path, port: str = "<10000 + job id % 20000>") -> list[str]:
    """What each node's program starts, its rank and the job's endpoint filled in (`plan` and the dry run)."""
    from launcher.distributed.launch import node_command, render

    head = "<first host of the allocation>"
    return [f"node {rank}: " + render(node_command(cfg, run_dir, node_rank=rank, endpoint=(head, port)))
            for rank in range(cfg.cluster.nodes)]


def dry_run_array(cfg: RunConfig, base: Path, trials: list[Path]) -> str:
    return f"# {base / script.ARRAY_FILE} (not written)\n{script.array_script(cfg, base, trials)}"


def check_submission(plans: list) -> list[str]:
    """What refuses a submission as a whole (every plan is valid on its own): each problem names its run."""
    problems = [f"{p.cfg.project_name}: cluster.kind is {p.cfg.cluster.kind}; submit runs on Slurm (cluster=slurm)"
                for p in plans if p.cfg.cluster.kind != "slurm"]
    if len(plans) > 1:
        if len({repr(p.cfg.cluster) for p in plans}) > 1:
            problems.append("cluster.*: the trials of one job array share their Slurm settings; sweep other keys")
        if plans[0].cfg.cluster.preprocess_job:
            problems.append("cluster.preprocess_job: prepare the data of a sweep with `tunelaunch prepare` first "
                            "(the trials then reuse its cache)")
    return problems


def submitted_array_message(cfg: RunConfig, base: Path, array: str, trials: int) -> str:
    return (f"Submitted job array {array}: {trials} trials under {base}\n"
            f"  logs:    {script.log_dir(cfg, base)}/<name>-{array}_<task>.out\n"
            f"  follow:  squeue -r -j {array}\n  results: tunelaunch runs {base}\n"
            f"  cancel:  tunelaunch cancel {base}")


def submitted_message(cfg: RunConfig, run_dir: Path, ids: list[str]) -> str:
    logs = script.log_dir(cfg, run_dir)
    log = logs / f"{script.job_name(run_dir)}-{ids[-1]}.out"
    after = f" (after data preparation job {ids[0]})" if len(ids) > 1 else ""
    return (f"Submitted job {ids[-1]}{after}: {run_dir}\n"
            f"  log:     {log} (workers: {run_dir / 'train.log'})\n"
            f"  follow:  tunelaunch logs {run_dir} -f   (or tail -f {log})\n"
            f"  state:   tunelaunch runs {run_dir}      cancel: tunelaunch cancel {run_dir}")
