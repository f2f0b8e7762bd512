"""The batch scripts `tunelaunch submit` writes. `job.sbatch` is the whole batch step, in bash: what `submit
--dry-run` prints is exactly what the job runs, and the host needs only bash and Slurm's commands (the training
itself runs in the srun tasks, inside the container when `cluster.container` is set).

    #SBATCH lines   plain values from cluster.* (Slurm expands no shell variable there)
    rendezvous      the allocation's first host (`scontrol show hostnames`, on the host, never in a container) and
                    a port from the job id, given to every task as TUNELAUNCH_MASTER_ADDR / _PORT
    record          the job's events go to RUN/jobs.tsv (launcher.cluster.jobs reads them)
    vLLM server     (trainer.generation=vllm, vllm_mode=server) the job has cluster.vllm_nodes more nodes, the
                    last ones: `trl vllm-serve` runs there as its own srun step, the batch step waits until it
                    answers and gives its address to the training tasks as TUNELAUNCH_VLLM_URL; an EXIT trap ends
                    it with the batch step
    scoring         (eval.tasks) once the run is finished, the batch step submits eval.sbatch with
                    --dependency=afterok on itself: the scores come from a one-GPU job that starts when this
                    allocation is released, and only for a run that did finish (a requeue or resubmission never
                    leaves a second scoring job behind)
    srun            one task per training node: setup lines, then `python -m launcher.cluster.node RUN`; SIGUSR1 (the time
                    limit's warning, `scancel --signal=USR1 --batch`) and SIGTERM are passed on, the workers save
    decide          from RUN/run_state.json: finished; stopped with a checkpoint -> requeue while preemptions and
                    time limits stay within cluster.max_requeues; failed -> requeue from the newest checkpoint
                    while failures stay within cluster.max_failures; a refused `scontrol requeue` -> `sbatch` the
                    same file again (--dependency=singleton); that refused too -> exit non-zero saying how to resume

Why bash and not Python: the batch step runs on the host, and with a container the host's Python has no
tunelaunch (nor should it need one).
"""
from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path

from launcher.config.schema import RunConfig

JOB_FILE = "job.sbatch"
PREPARE_FILE = "prepare.sbatch"
EVAL_FILE = "eval.sbatch"
ARRAY_FILE = "sweep.sbatch"
TRIALS_FILE = "trials.json"
CODE_DIR = "code"
# Rendezvous ports: 10000-29999, below Linux's ephemeral range (32768-60999) where outgoing connections take
# their local ports, so a port is rarely taken when the job starts; two jobs sharing a node differ by job id.
PORT_BASE, PORT_RANGE = 10000, 20000
NODE_MODULE = "launcher.cluster.node"
VLLM_PORT = 8000
VLLM_URL_VARIABLE = "TUNELAUNCH_VLLM_URL"
"""Where the training tasks find the vLLM server this job started (launcher.trainers.online reads it)."""
VLLM_WAIT_SECONDS = 1800
"""How long the batch step waits for the vLLM server: a first start downloads the model and compiles kernels."""


def log_dir(cfg: RunConfig, run_dir: Path) -> Path:
    return Path(cfg.cluster.log_dir).expanduser().resolve() if cfg.cluster.log_dir else run_dir.resolve() / "slurm"


def job_name(run_dir: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", run_dir.resolve().name)[:64] or "tunelaunch"


def python_for(cfg: RunConfig) -> str:
    """The Python that runs tunelaunch on the nodes: cluster.python; else `python3` inside a container (the
    image's), or the one running `submit` (a venv on a shared filesystem)."""
    if cfg.cluster.python:
        return cfg.cluster.python
    return "python3" if cfg.cluster.container.kind != "none" else sys.executable


def vllm_server_nodes(cfg: RunConfig) -> int:
    """Nodes of the job that run the vLLM server rather than training: cluster.vllm_nodes with
    trainer.generation=vllm and vllm_mode=server, else none."""
    from launcher.methods import METHODS

    t = cfg.trainer
    served = METHODS[t.name].online and t.generation == "vllm" and t.vllm_mode == "server"
    return cfg.cluster.vllm_nodes if served else 0


def job_nodes(cfg: RunConfig) -> int:
    """All nodes of the training job: the training nodes, then the vLLM server's."""
    return cfg.cluster.nodes + vllm_server_nodes(cfg)


def port_for(job_id: str) -> int:
    """The rendezvous port of a job (the batch script computes the same in shell)."""
    return PORT_BASE + int(re.sub(r"\D", "", job_id) or 0) % PORT_RANGE


# ---- #SBATCH lines

def _flag(name: str, value) -> list[str]:
    return [] if value is None or value is False else [f"--{name}" if value is True else f"--{name}={value}"]


def directives(cfg: RunConfig, name: str, output: str, nodes: int | None = None) -> list[str]:
    """The training job's options (the array's too)."""
    c = cfg.cluster
    lines = [f"--job-name={name}", f"--nodes={job_nodes(cfg) if nodes is None else nodes}", "--ntasks-per-node=1"]
    if c.gpus_per_node and not c.gres:
        lines.append(f"--gpus-per-node={c.gpus_per_node}")
    for flag, value in (("gres", c.gres), ("cpus-per-task", c.cpus_per_task), ("cpus-per-gpu", c.cpus_per_gpu),
                        ("mem", c.mem), ("mem-per-gpu", c.mem_per_gpu), ("time", c.time),
                        ("partition", c.partition), ("account", c.account), ("qos", c.qos),
                        ("constraint", c.constraint), ("exclusive", c.exclusive), ("exclude", c.exclude),
                        ("nodelist", c.nodelist), ("reservation", c.reservation), ("mail-type", c.mail_type),
                        ("mail-user", c.mail_user)):
        lines += _flag(flag, value)
    lines += [f"--output={output}", "--open-mode=append", f"--signal=B:USR1@{c.signal_lead}", "--requeue"]
    return lines + list(c.extra_directives)


def eval_directives(cfg: RunConfig, name: str, output: str) -> list[str]:
    """The scoring job's options: one task on one node with one GPU (lm-eval's one-process path), the training
    job's partition, account, qos, constraint, memory and time; none of its multi-node or array options."""
    c = cfg.cluster
    lines = [f"--job-name={name}-eval", "--nodes=1", "--ntasks=1"]
    if c.gpus_per_node and not c.gres:
        lines.append("--gpus-per-node=1")
    for flag, value in (("gres", c.gres), ("cpus-per-task", c.cpus_per_task), ("cpus-per-gpu", c.cpus_per_gpu),
                        ("mem", c.mem), ("mem-per-gpu", c.mem_per_gpu), ("time", c.time), ("partition", c.partition),
                        ("account", c.account), ("qos", c.qos), ("constraint", c.constraint)):
        lines += _flag(flag, value)
    return lines + [f"--output={output}", "--open-mode=append"]


def prepare_directives(cfg: RunConfig, name: str, output: str) -> list[str]:
    """The preprocessing job's own options: one CPU task; none of the training job's GPUs, qos, constraint,
    exclusivity or extra directives (a CPU partition would never schedule a job that asks for them)."""
    c = cfg.cluster
    lines = [f"--job-name={name}-prepare", "--nodes=1", "--ntasks=1", f"--cpus-per-task={c.preprocess_cpus}"]
    for flag, value in (("mem", c.preprocess_mem), ("time", c.preprocess_time),
                        ("partition", c.preprocess_partition or c.partition), ("account", c.account)):
        lines += _flag(flag, value)
    return lines + [f"--output={output}", "--open-mode=append"]


# ---- what runs on the nodes

def mounts(cfg: RunConfig, run_dir: Path, cwd: Path) -> list[str]:
    """Host paths the container needs, at the same paths: the run folder, the working folder, the logs, the data,
    the data cache, a local model; then cluster.container.mounts. A path inside another one is left out."""
    from launcher.data.processed import cache_folder

    paths = [run_dir.resolve(), cwd.resolve(), log_dir(cfg, run_dir), cache_folder(cfg).resolve()]
    sources = [s.path for s in cfg.data.datasets] or [cfg.data.path]
    for candidate in (*sources, cfg.model.name_or_path):
        path = Path(candidate).expanduser()
        if candidate and path.exists():
            paths.append((path if path.is_dir() else path.parent).resolve())
    ordered = sorted(set(paths), key=lambda p: len(p.parts))
    kept: list[Path] = []
    for path in ordered:
        if not any(path == k or k in path.parents for k in kept):
            kept.append(path)
    return [str(p) for p in sorted(kept)] + list(cfg.cluster.container.mounts)


def container_flags(cfg: RunConfig, run_dir: Path, cwd: Path) -> tuple[list[str], list[str]]:
    """(srun's own options, the command the task runs inside) for cluster.container."""
    box = cfg.cluster.container
    if box.kind == "none":
        return [], []
    paths = mounts(cfg, run_dir, cwd)
    workdir = box.workdir or str(cwd.resolve())
    if box.kind == "pyxis":
        flags = [f"--container-image={box.image}",
                 "--container-mounts=" + ",".join(p if ":" in p else f"{p}:{p}" for p in paths),
                 f"--container-workdir={workdir}"]
        return flags + ([] if box.mount_home else ["--no-container-mount-home"]), []
    inside = [box.program, "exec"] + (["--nv"] if cfg.cluster.gpus_per_node else [])
    inside += ["--bind", ",".join(paths), "--pwd", workdir] + ([] if box.mount_home else ["--no-home"])
    return [], inside + [str(box.image)]


def task_command(cfg: RunConfig, program: list[str]) -> str:
    """What one srun task runs (inside the container): the setup lines, then the program (behind the wrapper)."""
    wrapper = cfg.cluster.wrapper + " " if cfg.cluster.wrapper else ""
    return "\n".join([*cfg.cluster.setup, "exec " + wrapper + shlex.join(program)])


def srun_line(cfg: RunConfig, run_dir: Path, cwd: Path) -> list[str]:
    """The batch step's one srun: a task per node, bound to the job's cores, killed together when one fails (a
    graceful stop cannot trip this: every rank leaves only after the barrier that follows the save)."""
    c = cfg.cluster
    run_dir = run_dir.resolve()
    flags, inside = container_flags(cfg, run_dir, cwd)
    line = ["srun", "--unbuffered", f"--nodes={c.nodes}", f"--ntasks={c.nodes}", "--ntasks-per-node=1"]
    line += _flag("cpus-per-task", c.cpus_per_task)
    line += ["--kill-on-bad-exit=1"]
    if vllm_server_nodes(cfg):  # the first nodes of the job; the vLLM server has the last ones
        line += ["--relative=0"]
    if c.per_node_logs:
        line += [f"--output={log_dir(cfg, run_dir) / (job_name(run_dir) + '-%j-node%n.out')}"]
    program = [python_for(cfg), "-m", NODE_MODULE, str(run_dir)]
    return line + flags + inside + ["bash", "-c", task_command(cfg, program)]


def vllm_program(cfg: RunConfig) -> list[str]:
    """`trl vllm-serve` for the run's model, one server per node over its GPUs (tensor parallel). The `trl` beside
    the nodes' Python when that is a path (a venv need not be on PATH), else the one on PATH (a container's)."""
    python = python_for(cfg)
    trl = str(Path(python).parent / "trl") if os.sep in python else "trl"
    m = cfg.model
    program = [trl, "vllm-serve", "--model", m.name_or_path, "--tensor-parallel-size", str(cfg.cluster.gpus_per_node or 1),
               "--port", str(VLLM_PORT), "--host", "0.0.0.0"]
    if m.revision:
        program += ["--revision", m.revision]
    return program + (["--trust-remote-code"] if m.trust_remote_code else [])


def vllm_srun_line(cfg: RunConfig, run_dir: Path, cwd: Path) -> list[str]:
    """The vLLM server's srun step, on the job's last cluster.vllm_nodes nodes (relative to the allocation, after
    the training nodes), in the training's container, logging to the log folder."""
    c, k = cfg.cluster, vllm_server_nodes(cfg)
    run_dir = run_dir.resolve()
    flags, inside = container_flags(cfg, run_dir, cwd)
    line = ["srun", "--unbuffered", f"--nodes={k}", f"--ntasks={k}", "--ntasks-per-node=1", f"--relative={c.nodes}"]
    line += _flag("cpus-per-task", c.cpus_per_task)
    line += [f"--output={log_dir(cfg, run_dir) / (job_name(run_dir) + '-%j-vllm%n.out')}"]
    return line + flags + inside + ["bash", "-c", task_command(cfg, vllm_program(cfg))]


def vllm_log(cfg: RunConfig, run_dir: Path) -> str:
    """The server's log on its first node (srun's --output of vllm_srun_line), the job id left to the shell."""
    return shlex.quote(str(log_dir(cfg, run_dir.resolve()) / job_name(run_dir)) + "-") + '"$SLURM_JOB_ID"-vllm0.out'


def environment_lines(cfg: RunConfig, run_dir: Path) -> list[str]:
    """Exports of the batch step, which srun passes on to every task (and into the containers)."""
    c = cfg.cluster
    lines = ['export TUNELAUNCH_SLURM_BATCH="$SLURM_JOB_ID"  # marks the batch step: only it plans from the '
             'allocation']
    if c.cpus_per_task:  # srun no longer inherits --cpus-per-task from sbatch (Slurm 22.05)
        lines.append(f"export SRUN_CPUS_PER_TASK={c.cpus_per_task}")
    for name, value in c.env.items():
        lines.append(f"export {name}={shlex.quote(str(value))}")
    if c.snapshot:
        code = shlex.quote(str(run_dir.resolve() / CODE_DIR))
        lines.append(f'export PYTHONPATH={code}"${{PYTHONPATH:+:$PYTHONPATH}}"  # the code as submitted')
    return lines


# ---- the scripts

_HELPERS = r'''record() {  # EVENT [DETAIL] [JOB]: one line of RUN/jobs.tsv (launcher/cluster/jobs.py reads it)
  local detail=${2:-}
  printf '%s\t%s\t%s\t%s\t%s\n' "$(date +%s)" "${3:-$SLURM_JOB_ID}" train "$1" "${detail//$'\t'/ }" >> "$JOBS"
}
status() { sed -n 's/^ *"status": *"\([a-z_]*\)".*/\1/p' "$RUN/run_state.json" 2>/dev/null | head -n 1; }
set_status() {
  printf '{\n  "status": "%s",\n  "time": %s,\n  "job": "%s"\n}\n' "$1" "$(date +%s)" "$SLURM_JOB_ID" \
    > "$RUN/.run_state.json.tmp" && mv -f "$RUN/.run_state.json.tmp" "$RUN/run_state.json"
}
count() { awk -F'\t' -v a="$1" -v b="${2:-}" '$4 == a || $4 == b' "$JOBS" 2>/dev/null | wc -l; }
newest_checkpoint() {  # complete checkpoints only: checkpoint-N is renamed into place once every rank wrote
  local d
  for d in "$RUN"/checkpoint-*; do [ -f "$d/trainer_state.json" ] && echo "${d##*-} ${d##*/}"; done \
    | sort -n | tail -n 1 | cut -d' ' -f2
}
seconds() {  # Slurm's time left ([D-]HH:MM:SS, MM:SS) in seconds; nothing for UNLIMITED/INVALID
  local t=$1 d=0 h=0 m=0 s=0
  [[ $t =~ ^(([0-9]+)-)?(([0-9]+):)?([0-9]+):([0-9]+)$ ]] || return 0
  d=${BASH_REMATCH[2]:-0}; h=${BASH_REMATCH[4]:-0}; m=${BASH_REMATCH[5]}; s=${BASH_REMATCH[6]}
  echo $(( 10#$d * 86400 + 10#$h * 3600 + 10#$m * 60 + 10#$s ))
}
memory_killed() {  # slurmstepd's report of a step killed for memory (accounting or cgroups), in this start's log
  [ -n "$LOG" ] && tail -c +$((LOG_OFFSET + 1)) "$LOG" 2>/dev/null \
    | grep -qE "exceeded memory limit|oom_kill event|OOM Killed|Out Of Memory"
}
requeue() {  # WHY: requeue this job; if the site refuses, submit this file again; if that fails, say how to resume
  local out id
  if out=$(scontrol requeue "$SLURM_JOB_ID" 2>&1); then
    record requeued "$1"
    echo "tunelaunch: requeueing job $SLURM_JOB_ID ($1)"
    exit 0
  fi
  echo "tunelaunch: scontrol requeue was refused (${out//$'\n'/ }): submitting $RUN/job.sbatch again"
  if id=$(sbatch --parsable --dependency=singleton "$RUN/job.sbatch" 2>&1); then
    id=${id%%;*}
    record resubmitted "job $id: $1"
    record submitted "resubmission of $SLURM_JOB_ID" "$id"
    echo "tunelaunch: submitted again as job $id (it starts once this one has ended)"
    exit 0
  fi
  record gave_up "requeue and sbatch refused"
  echo "tunelaunch: sbatch refused it too (${id//$'\n'/ }); resume by hand: sbatch $RUN/job.sbatch" >&2
  exit 1
}'''

_TRAPS = r'''signal="" pending="" timeleft=""
pass_on() {  # a stop signal, from the start of the batch step on (sent before srun runs, it still counts)
  signal=$1 pending=$1
  [ "$1" = USR1 ] && timeleft=$(squeue -h -j "$SLURM_JOB_ID" -o %L 2>/dev/null)
  echo "tunelaunch: SIG$1 received: the workers save a checkpoint and stop"
}
trap 'pass_on USR1' USR1
trap 'pass_on TERM' TERM'''

_MAIN = r'''restart=${SLURM_RESTART_COUNT:-0}
LOG=$(scontrol show job "$SLURM_JOB_ID" 2>/dev/null | sed -n 's/^ *StdOut=//p')  # this job's log (appended to)
LOG_OFFSET=$(stat -c %s "$LOG" 2>/dev/null || echo 0)
echo "==== tunelaunch: job $SLURM_JOB_ID, start $((restart + 1)) (SLURM_RESTART_COUNT=$restart) on $SLURM_JOB_NODELIST ===="
if [ "$(status)" = finished ]; then echo "tunelaunch: $RUN is already finished; nothing to do"; exit 0; fi
if [ "$SLURM_JOB_NUM_NODES" != "__NODES__" ]; then
  echo "tunelaunch: $RUN was planned for __NODES__ node(s) but job $SLURM_JOB_ID has $SLURM_JOB_NUM_NODES:" \
       "sbatch it with --nodes=__NODES__, or start a new run (another project_name) for $SLURM_JOB_NUM_NODES" >&2
  record gave_up "planned for __NODES__ node(s), the job has $SLURM_JOB_NUM_NODES"
  exit 2
fi
newest=$(newest_checkpoint)
echo "tunelaunch: $RUN: ${newest:+resuming from $newest}${newest:-starting from the beginning};" \
     "rendezvous $TUNELAUNCH_MASTER_ADDR:$TUNELAUNCH_MASTER_PORT"
record started "restart $restart; nodes $SLURM_JOB_NODELIST"
set_status starting  # a relaunch that dies before the workers start reports its own failure, not the last stop
__VLLM__
__SRUN__ &
srun_pid=$!
# Wait for srun, passing a stop signal on. srun hands SIGUSR1 to every task, where each node's supervisor tells
# its workers to save and stop; a USR1 is held until the workers run (Slurm may send the time limit's warning as
# the job starts, and a process that has not set its handler yet would die of it). SIGTERM goes on at once.
while kill -0 "$srun_pid" 2>/dev/null; do
  if [ -n "$pending" ] && { [ "$pending" = TERM ] || [ "$(status)" = running ]; }; then
    kill -USR1 "$srun_pid" 2>/dev/null
    pending=""
  fi
  sleep 1 & wait $!  # a trapped signal ends the wait at once
done
wait "$srun_pid"
code=$?

state=$(status)
if [ "$signal" = TERM ]; then
  # scancel, Slurm's own preemption, or the time limit reached: Slurm requeues or ends the job itself, so this
  # job never requeues itself after a SIGTERM, whatever state the workers reached in Slurm's kill wait
  [ "$state" = preempted ] && record preempted "SIGTERM; $(newest_checkpoint) saved"
  [ "$state" = finished ] && { record finished; exit 0; }
  exit 75
fi
case "$state" in
  finished)
    record finished
    echo "tunelaunch: finished: $RUN"
    __EVAL__
    exit 0 ;;
  preempted)
    why=preempted
    left=$(seconds "$timeleft")
    # Slurm may send the warning up to a minute before the lead it was asked for
    if [ -n "$left" ] && [ "$left" -le $((__LEAD__ + 90)) ]; then why=timelimit; fi
    record "$why" "$(newest_checkpoint) saved"
    n=$(count preempted timelimit)
    if [ "$n" -gt __MAX_REQUEUES__ ]; then
      record gave_up "stop $n; cluster.max_requeues is __MAX_REQUEUES__"
      echo "tunelaunch: stopped with a checkpoint, but this run already requeued $((n - 1)) time(s)" \
           "(cluster.max_requeues); resume it with: sbatch $RUN/job.sbatch" >&2
      exit 75
    fi
    requeue "$why; restart $n of at most __MAX_REQUEUES__" ;;
  *)
    why="srun exit $code; status ${state:-none}"
    if memory_killed; then
      why="out of memory: Slurm killed a step over its memory limit (cluster.mem); $why"
    elif [ "$code" -gt 128 ]; then
      why="$why; a task was killed by signal $((code - 128)) (9 = SIGKILL: out of memory is the usual cause)"
    fi
    record failed "$why"
    echo "tunelaunch: the run failed ($why); see $RUN/train.log" >&2
    n=$(count failed)
    if [ "$n" -gt __MAX_FAILURES__ ]; then
      record gave_up "failure $n; cluster.max_failures is __MAX_FAILURES__"
      echo "tunelaunch: failure $n of this run, more than cluster.max_failures (__MAX_FAILURES__): not requeued;" \
           "once fixed, resume with: sbatch $RUN/job.sbatch" >&2
      [ "$code" = 0 ] && code=1
      exit "$code"
    fi
    newest=$(newest_checkpoint)
    requeue "failure $n of at most __MAX_FAILURES__; resumes from ${newest:-the beginning}" ;;
esac'''


_VLLM = r'''
# The vLLM server (trainer.vllm_mode=server): its own step on the job's last node(s), ended with the batch step
VLLM_HOST=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n '__FIRST__p')
export __URL_VARIABLE__="http://$VLLM_HOST:__PORT__"  # the training tasks' trl vllm_server_base_url
VLLM_LOG=__VLLM_LOG__
__VLLM_SRUN__ &
vllm_pid=$!
trap 'kill "$vllm_pid" 2>/dev/null' EXIT
echo "tunelaunch: starting the vLLM server on $VLLM_HOST (log: $VLLM_LOG)"
waited=0
until curl -sf "$__URL_VARIABLE__/health" > /dev/null; do
  if ! kill -0 "$vllm_pid" 2>/dev/null; then
    why="the vLLM server on $VLLM_HOST exited before it answered; see $VLLM_LOG"
  elif [ "$waited" -ge __WAIT__ ]; then
    why="the vLLM server on $VLLM_HOST did not answer $__URL_VARIABLE__/health within __WAIT__ s; see $VLLM_LOG"
  elif [ "$signal" = TERM ]; then
    exit 75  # scancel or preemption while the server starts: Slurm decides what follows
  else
    sleep 5 & wait $!  # a trapped signal ends the wait at once
    waited=$((waited + 5))
    continue
  fi
  record failed "$why"
  echo "tunelaunch: $why" >&2
  exit 1
done
echo "tunelaunch: the vLLM server answers at $__URL_VARIABLE__ (after ${waited} s)"
'''


def vllm_block(cfg: RunConfig, run_dir: Path, cwd: Path) -> str:
    """The batch step's lines that start the vLLM server and wait for it; nothing without a server."""
    if not vllm_server_nodes(cfg):
        return ""
    srun = " \\\n  ".join(shlex.quote(a) for a in vllm_srun_line(cfg, run_dir, cwd))
    return (_VLLM.replace("__FIRST__", str(cfg.cluster.nodes + 1)).replace("__URL_VARIABLE__", VLLM_URL_VARIABLE)
            .replace("__PORT__", str(VLLM_PORT)).replace("__WAIT__", str(VLLM_WAIT_SECONDS))
            .replace("__VLLM_LOG__", vllm_log(cfg, run_dir)).replace("__VLLM_SRUN__", srun))


def _header(sbatch_lines: list[str], comment: list[str]) -> list[str]:
    return ["#!/bin/bash", *(f"#SBATCH {line}" for line in sbatch_lines), *(f"# {c}" for c in comment)]


def job_script(cfg: RunConfig, run_dir: Path, cwd: Path | None = None) -> str:
    run_dir = run_dir.resolve()
    cwd = Path(cwd or os.getcwd()).resolve()
    c = cfg.cluster
    output = str(log_dir(cfg, run_dir) / "%x-%j.out")
    comment = [f"Written by tunelaunch for {run_dir}: `sbatch` this file again to resume the run.",
               "The whole batch step, in bash; it needs only Slurm's commands on this host (launcher/cluster/script.py)."]
    main = (_MAIN.replace("__NODES__", str(job_nodes(cfg))).replace("__LEAD__", str(c.signal_lead))
            .replace("__VLLM__", vllm_block(cfg, run_dir, cwd)).replace("__EVAL__", eval_block(cfg))
            .replace("__MAX_REQUEUES__", str(c.max_requeues)).replace("__MAX_FAILURES__", str(c.max_failures))
            .replace("__SRUN__", " \\\n  ".join(shlex.quote(a) for a in srun_line(cfg, run_dir, cwd))))
    body = [
        *_header(directives(cfg, job_name(run_dir), output), comment),
        "set -uo pipefail",
        _TRAPS,
        f"RUN={shlex.quote(str(run_dir))}",
        'JOBS="$RUN/jobs.tsv"  # launcher.cluster.jobs.JOBS_FILE',
        f"cd {shlex.quote(str(cwd))} || exit 1",
        *environment_lines(cfg, run_dir),
        "# the rendezvous, found here on the host and given to every task: the allocation's first host, and a port",
        f"# from the job id in {PORT_BASE}-{PORT_BASE + PORT_RANGE - 1} (below Linux's ephemeral ports)",
        'export TUNELAUNCH_MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
        f"export TUNELAUNCH_MASTER_PORT=$(( {PORT_BASE} + SLURM_JOB_ID % {PORT_RANGE} ))",
        _HELPERS,
        main,
    ]
    return "\n".join(body) + "\n"


def prepare_script(cfg: RunConfig, run_dir: Path, cwd: Path | None = None) -> str:
    """A one-task CPU job that tokenises and packs the data into the cache the training job then reuses; it runs
    in the container too, when there is one."""
    run_dir = run_dir.resolve()
    cwd = Path(cwd or os.getcwd()).resolve()
    output = str(log_dir(cfg, run_dir) / "%x-%j.out")
    flags, inside = container_flags(cfg, run_dir, cwd)
    program = [python_for(cfg), "-m", "launcher.cli", "prepare", "--config", str(run_dir / "config.yaml"),
               "--show", "0"]
    srun = ["srun", "--unbuffered", "--ntasks=1", f"--cpus-per-task={cfg.cluster.preprocess_cpus}", *flags,
            *inside, "bash", "-c", task_command(cfg, program)]
    body = [*_header(prepare_directives(cfg, job_name(run_dir), output),
                     [f"Written by tunelaunch: prepares the data of {run_dir}; the training job waits for it."]),
            "set -uo pipefail", f"cd {shlex.quote(str(cwd))} || exit 1",
            *[line for line in environment_lines(cfg, run_dir) if "SRUN_CPUS_PER_TASK" not in line],
            f"export SRUN_CPUS_PER_TASK={cfg.cluster.preprocess_cpus}",
            "exec " + " \\\n  ".join(shlex.quote(a) for a in srun)]
    return "\n".join(body) + "\n"


def eval_script(cfg: RunConfig, run_dir: Path, cwd: Path | None = None) -> str:
    """One task that scores the finished run (`tunelaunch eval RUN`, reading its eval.* settings), in the
    container too when there is one; job.sbatch submits it once training finished."""
    run_dir = run_dir.resolve()
    cwd = Path(cwd or os.getcwd()).resolve()
    output = str(log_dir(cfg, run_dir) / "%x-%j.out")
    flags, inside = container_flags(cfg, run_dir, cwd)
    program = [python_for(cfg), "-m", "launcher.cli", "eval", str(run_dir)]
    srun = ["srun", "--unbuffered", "--ntasks=1", *_flag("cpus-per-task", cfg.cluster.cpus_per_task), *flags,
            *inside, "bash", "-c", task_command(cfg, program)]
    body = [*_header(eval_directives(cfg, job_name(run_dir), output),
                     [f"Written by tunelaunch: scores {run_dir} on eval.tasks once its training job has ended."]),
            "set -uo pipefail", f"cd {shlex.quote(str(cwd))} || exit 1",
            *[line for line in environment_lines(cfg, run_dir) if "TUNELAUNCH_SLURM_BATCH" not in line],
            "exec " + " \\\n  ".join(shlex.quote(a) for a in srun)]
    return "\n".join(body) + "\n"


_SUBMIT_EVAL = r'''if id=$(sbatch --parsable --dependency=afterok:"$SLURM_JOB_ID" --kill-on-invalid-dep=yes "$RUN/__EVAL_FILE__" 2>&1); then
      id=${id%%;*}
      printf '%s\t%s\teval\tsubmitted\t%s\n' "$(date +%s)" "$id" "after job $SLURM_JOB_ID" >> "$JOBS"
      echo "tunelaunch: scoring it on eval.tasks in job $id once this job has ended (tunelaunch runs $RUN shows the scores)"
    else
      echo "tunelaunch: sbatch refused the scoring job (${id//$'\n'/ }); score the run with: tunelaunch eval $RUN" >&2
    fi'''


def eval_block(cfg: RunConfig) -> str:
    return _SUBMIT_EVAL.replace("__EVAL_FILE__", EVAL_FILE) if cfg.eval.tasks else ":  # eval.tasks is empty"


def array_script(cfg: RunConfig, base: Path, trials: list[Path]) -> str:
    """One array task per trial: each runs its trial's own job.sbatch (same shell, so the time limit's signal
    reaches it), which records, requeues and resumes exactly as a single job does."""
    base = base.resolve()
    limit = f"%{cfg.cluster.array_parallelism}" if cfg.cluster.array_parallelism else ""
    logs = log_dir(cfg, base)  # cluster.log_dir, else the sweep folder's slurm/
    lines = directives(cfg, job_name(base), str(logs / "%x-%A_%a.out")) + [f"--array=0-{len(trials) - 1}{limit}"]
    listed = " ".join(shlex.quote(str(t.resolve())) for t in trials)
    body = [*_header(lines, [f"Written by `tunelaunch submit -m`: one array task per trial, listed in "
                             f"{base / TRIALS_FILE}."]),
            "set -uo pipefail", f"trials=({listed})",
            'exec bash "${trials[$SLURM_ARRAY_TASK_ID]}/job.sbatch"']
    return "\n".join(body) + "\n"
