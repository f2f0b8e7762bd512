"""Every Slurm job of a run, recorded in RUN/jobs.tsv, and what Slurm itself says about them.

The jobs file is append-only, one event per line, written by `tunelaunch submit` (python, `record`) and by the batch
script (bash, `printf ... >> jobs.tsv`):

    <unix time, integer seconds>\\t<job id>\\t<role>\\t<event>\\t<detail>

The newest `train` line names the run's CURRENT training job (a requeued job keeps its id; a resubmitted one is
recorded with its new id). What `tunelaunch runs` shows for a run is Slurm's own word on that job (squeue, then
`scontrol show job` for a recently ended one, then sacct where accounting exists); the recorded events explain a
job that Slurm calls COMPLETED while the run is unfinished, and decide alone once Slurm has forgotten the job. A job
Slurm says ended is never shown as running.

Also here: the current job's log file (`tunelaunch logs`, following it across a requeue) and `tunelaunch cancel`.
Nothing here needs Slurm to import or to read a run folder: on a machine without Slurm's commands (a run folder
copied to a laptop) every question to Slurm has no answer and the recorded events speak.
"""
from __future__ import annotations

import codecs
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, TextIO

import yaml

from launcher import run_dir as runs

JOBS_FILE = "jobs.tsv"
ROLES = ("train", "prepare", "eval")
EVENTS = ("submitted", "started", "finished", "preempted", "timelimit", "failed", "requeued", "resubmitted",
          "gave_up", "cancelled")

# What a recorded event says about a job that has ended, in Slurm's words (the run's own "finished" stays lower
# case, as the local runs show it). `requeued` means the job is waiting again under the same id.
_EVENT_WORD = {"finished": "finished", "preempted": "PREEMPTED", "timelimit": "TIMEOUT", "failed": "FAILED",
               "gave_up": "FAILED", "cancelled": "CANCELLED", "requeued": "PENDING"}
# Events after which the job is over: once Slurm has forgotten the job, only these can name its end.
_TERMINAL = frozenset({"finished", "preempted", "timelimit", "failed", "gave_up", "cancelled"})
# Slurm's states of a job that waits again after a requeue: to a user it is pending.
_REQUEUE_STATES = frozenset({"REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD"})
_NO_SUCH_JOB = "Invalid job id"  # what squeue, scontrol and scancel say for a job Slurm does not know
_KEY = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_:/]*)=")  # a key of `scontrol show job -o` (CPUs/Task, ReqB:S:C:T)
_HEAD = 256  # bytes of a log kept to notice that a requeued job's restart rewrote it from the start
_TIMEOUT = 30  # seconds for one Slurm client command: a controller that does not answer must not hang `runs`


@dataclass(frozen=True)
class Event:
    """One line of RUN/jobs.tsv."""

    time: int
    job_id: str
    role: str
    event: str
    detail: str = ""


class Cancelled(NamedTuple):
    """A job `cancel` found queued: `was` is its Slurm state before; `error` is scancel's refusal ("" when it was
    cancelled and a `cancelled` event recorded)."""

    run_dir: Path
    job_id: str
    role: str
    was: str
    error: str = ""


# ---- the jobs file

def record(run_dir: Path, job_id: str | int, role: str, event: str, detail: str = "") -> Event:
    """Append one event to RUN/jobs.tsv. The whole line goes out in one write to a file opened for appending, so
    lines of concurrent writers (the batch steps of a requeued job, `tunelaunch cancel`) do not interleave on a
    local filesystem. Tabs and newlines in detail become spaces: they would break the one-line format."""
    job_id = str(job_id)
    if role not in ROLES:
        raise ValueError(f"role {role!r}: one of {', '.join(ROLES)}")
    if event not in EVENTS:
        raise ValueError(f"event {event!r}: one of {', '.join(EVENTS)}")
    if not job_id or re.search(r"\s", job_id):
        raise ValueError(f"job id {job_id!r}: Slurm's id, without spaces")
    entry = Event(int(time.time()), job_id, role, event, re.sub(r"[\t\r\n]", " ", detail))
    data = f"{entry.time}\t{entry.job_id}\t{entry.role}\t{entry.event}\t{entry.detail}\n".encode()
    fd = os.open(Path(run_dir) / JOBS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, data)
        while written < len(data):  # a regular file takes it at once; finish the line rather than lose it
            written += os.write(fd, data[written:])
    finally:
        os.close(fd)
    return entry


def read(run_dir: Path) -> list[Event]:
    """Every event of RUN/jobs.tsv, oldest first; [] without the file. A last line without its newline is being
    written (or its writer died): it is left out, as is any line that is not an event."""
    try:
        text = (Path(run_dir) / JOBS_FILE).read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    lines = text.split("\n")[:-1]  # the piece after the last newline is torn or empty
    events = []
    for line in lines:
        fields = line.split("\t")
        if len(fields) < 4 or not fields[0].strip().isdigit() or not fields[1]:
            continue
        events.append(Event(int(fields[0]), fields[1], fields[2], fields[3], "\t".join(fields[4:]).strip()))
    return events


def current_job(run_dir: Path) -> str | None:
    """The run's current training job: the newest `train` line's job id (None without one). A `resubmitted` line
    written after the new job's own `submitted` line still points at the new job through its detail "job NEWID"
    (or "job NEWID: why")."""
    train = [e for e in read(run_dir) if e.role == "train"]
    if not train:
        return None
    newest = train[-1]
    new_id = re.match(r"job ([^\s:]+)", newest.detail) if newest.event == "resubmitted" else None
    return new_id.group(1) if new_id else newest.job_id


def job_ids(run_dir: Path) -> list[str]:
    """Every job id the run recorded, in the order they first appear (prepare, train, array tasks, resubmissions)."""
    return list(dict.fromkeys(e.job_id for e in read(run_dir)))


def count(run_dir: Path, *events: str) -> int:
    """How many lines record one of `events`: count(run, "preempted", "timelimit") is the run's preemptions (the
    requeue limit), count(run, "failed") its failures."""
    return sum(e.event in events for e in read(run_dir))


# ---- Slurm's word on a job

class _Answer(NamedTuple):
    word: tuple[str, str] | None  # (STATE, source) or None
    trouble: str  # why squeue, the first source, could not be asked ("" when it answered, even "no such job")


def slurm_state(job_id: str | int) -> tuple[str, str] | None:
    """Slurm's own state word for a job and where it came from: ("RUNNING", "squeue"), ("FAILED", "scontrol"),
    ("TIMEOUT", "sacct"). squeue lists queued jobs (a requeued job shows PENDING), `scontrol show job` keeps an ended
    one for MinJobAge seconds, sacct remembers it where accounting exists. None when none of them knows the job,
    none answers, or no Slurm command is installed here."""
    return _ask(str(job_id)).word


def _ask(job_id: str) -> _Answer:
    listed, trouble = _squeue(job_id)
    if listed:
        return _Answer((_combined([r["JobState"] for r in listed]), "squeue"), "")
    record = _scontrol(job_id)
    if record:
        return _Answer((record["JobState"], "scontrol"), "")
    done, _ = _run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State"])  # fails where there is no accounting
    # sacct writes "CANCELLED by 0": the state is the first word
    states = [line.split()[0] for line in done.stdout.splitlines() if line.strip()] if done else []
    if states:
        return _Answer((_combined(states), "sacct"), "")
    return _Answer(None, trouble)  # only squeue's trouble is worth telling: it is asked first, and always there


def _run(command: list[str]) -> tuple[subprocess.CompletedProcess | None, str]:
    """A Slurm client command's result, or (None, why not). Slurm's "no such job" is no trouble: the next source
    is asked, and a job no source knows is simply gone."""
    if shutil.which(command[0]) is None:
        return None, "no Slurm here"
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as err:
        return None, f"{command[0]}: {err}"
    if done.returncode != 0:
        message = (done.stderr or done.stdout).strip()
        if _NO_SUCH_JOB in message:
            return None, ""
        return None, f"{command[0]}: {message.splitlines()[-1] if message else f'exit {done.returncode}'}"
    return done, ""


def _combined(states: list[str]) -> str | None:
    """One word for several records of one id (an array's tasks): running beats waiting beats ended."""
    for wanted in ("RUNNING", "PENDING"):
        if wanted in states:
            return wanted
    return states[0] if states else None


def _mine(records: list[dict[str, str]], job_id: str) -> list[dict[str, str]]:
    """The records that are this job. An id names a job, an array task ("7_2"), or an array's every task; the
    array's id is also the own id of one of its tasks, so a record that is exactly the job wins; else all."""
    exact = [r for r in records if job_id in (r.get("JobId"), r.get("TaskId"))]
    return exact or records


def _squeue(job_id: str) -> tuple[list[dict[str, str]], str]:
    """squeue's records of a job still queued in any form ([] once it ended), and why squeue could not be asked.
    %i is "ARRAYID_TASK" for an array task and %A its own job id; %T the state."""
    done, trouble = _run(["squeue", "-h", "-j", job_id, "-o", "%i %A %T"])
    records = [{"TaskId": i, "JobId": own, "JobState": state}
               for i, own, state, *_ in (line.split() for line in (done.stdout if done else "").splitlines())
               if state]
    return _mine(records, job_id), trouble


def _scontrol(job_id: str) -> dict[str, str] | None:
    """`scontrol show job -o` of this job (JobState, StdOut, ...): Slurm keeps an ended job there for MinJobAge."""
    done, _ = _run(["scontrol", "show", "job", "-o", job_id])
    records = []
    for line in (done.stdout if done else "").splitlines():
        # "Key=value Key=value ...": a value runs to the next key, so a path with spaces stays whole
        keys = list(_KEY.finditer(line))
        record = {k.group(1): line[k.end():nxt.start() if nxt else len(line)].strip()
                  for k, nxt in zip(keys, [*keys[1:], None])}
        if "JobState" in record:
            record["TaskId"] = f"{record.get('ArrayJobId')}_{record.get('ArrayTaskId')}"
            records.append(record)
    mine = _mine(records, job_id)
    return next((r for r in mine if r["JobState"] == _combined([m["JobState"] for m in mine])), None)


def _queued(job_id: str) -> str | None:
    """squeue's state for a job it still lists, else None. COMPLETING counts: a job being requeued passes through
    it on its way back to PENDING, and squeue drops a job that really ended a moment later."""
    return _combined([r["JobState"] for r in _squeue(job_id)[0]])


# ---- what `tunelaunch runs` shows

def run_status(run_dir: Path) -> str:
    """The state column of `tunelaunch runs` for one run folder.

    `finished` when run_state.json says so. A run with a recorded training job: Slurm's word on it (PENDING,
    RUNNING, CANCELLED, FAILED, TIMEOUT, OUT_OF_MEMORY, NODE_FAIL, PREEMPTED, ...); a job that ended COMPLETED
    while the run is unfinished gets its reason from the newest event the job recorded (preempted -> PREEMPTED,
    timelimit -> TIMEOUT, failed or gave_up -> FAILED, requeued -> PENDING); a job Slurm no longer knows is
    described by that event alone, and without an event that ends it, "unknown (job ID gone)" -- never "running",
    which only Slurm can vouch for. Runs without jobs.tsv (local runs) show run_state.json's status as before.
    """
    status = runs.read_state(run_dir).get("status", "?")
    job = current_job(run_dir) if status != runs.Status.FINISHED else None  # (a str enum: equal to its word)
    if job is None:
        return status
    newest = next((e.event for e in reversed(read(run_dir)) if e.job_id == job), None)
    answer = _ask(job)
    if answer.word is None:
        if newest in ("failed", "gave_up") and _out_of_memory(run_dir, job):
            return "OUT_OF_MEMORY"
        if newest in _TERMINAL:
            return _EVENT_WORD[newest]
        if answer.trouble:
            return f"unknown (job {job}: {answer.trouble})"
        return f"unknown (job {job} gone)"
    state = answer.word[0]
    if state in _REQUEUE_STATES:
        return "PENDING"
    if state in ("FAILED", "COMPLETED") and _out_of_memory(run_dir, job):
        return "OUT_OF_MEMORY"  # Slurm saw the batch step exit; the step's memory kill is in the event
    if state in ("COMPLETED", "COMPLETING"):
        # Slurm's COMPLETED only says the batch script exited 0; the run is unfinished, so the script said why
        if newest in _EVENT_WORD:
            return _EVENT_WORD[newest]
        return "COMPLETING" if state == "COMPLETING" else "COMPLETED (run unfinished)"
    return state


def _out_of_memory(run_dir: Path, job: str) -> bool:
    """Whether the job's last failure was a memory kill (the batch step read slurmstepd's report of it)."""
    failure = next((e for e in reversed(read(run_dir)) if e.job_id == job and e.event == "failed"), None)
    return failure is not None and failure.detail.startswith("out of memory")


# ---- logs

def log_file(run_dir: Path) -> Path | None:
    """The current job's stdout file (None when the run recorded no job). Slurm's StdOut while it knows the job;
    else the name the batch script is submitted with: `<log dir>/<job name>-<job id>.out`, the log dir being
    cluster.log_dir or RUN/slurm; an array task's is `<sweep's job name>-<array id>_<task>.out` in cluster.log_dir
    or the sweep folder's slurm/."""
    run_dir = Path(run_dir)
    job = current_job(run_dir)
    if job is None:
        return None
    known = _scontrol(job)
    if known and known.get("StdOut"):
        return Path(known["StdOut"])
    # a trial of a sweep runs as an array task until a resubmission (a `submitted` line of its own) replaces it;
    # the task then records under its own job id, so its array and task are read from the submission
    submitted = next((e for e in reversed(read(run_dir)) if e.role == "train" and e.event == "submitted"), None)
    array = re.fullmatch(r"array (\d+)(?:_| task )(\d+)", submitted.detail) if submitted else None
    if array:  # named after the sweep folder (the trials' parent) and the array: %x-%A_%a.out
        owner, shown_id = run_dir.resolve().parent, f"{array.group(1)}_{array.group(2)}"
    else:
        owner, shown_id = run_dir, job
    return _log_dir(run_dir, owner) / f"{_job_name(owner)}-{shown_id}.out"


def _log_dir(run_dir: Path, owner: Path) -> Path:
    """cluster.log_dir of the run's config.yaml, else OWNER/slurm (as launcher.cluster.script.log_dir)."""
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        config = {}
    configured = (config.get("cluster") or {}).get("log_dir")
    return Path(configured).expanduser().resolve() if configured else owner.resolve() / "slurm"


def _job_name(folder: Path) -> str:
    # the %x the batch scripts are submitted with; imported where it is defined so that the two cannot drift
    from launcher.cluster.script import job_name

    return job_name(folder)


def follow(run_dir: Path, out: TextIO = sys.stdout, poll: float = 1.0) -> str | None:
    """Print the current job's log as it grows, like `tail -f`, until the job is no longer queued; returns the job
    id followed last (None without a recorded job). A requeued job keeps its id and its log file, which Slurm
    truncates on the restart: the log is then printed again from its start. A job that resubmitted the run under a
    new id is followed on under that id."""
    job = current_job(run_dir)
    if job is None:
        return None
    position, head = 0, b""  # how far the file was printed, and its first bytes as printed
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    while True:
        # ask first, read second: everything written before the job left the queue is printed
        queued = _queued(job) is not None
        path = log_file(run_dir)
        try:
            with open(path, "rb") as log:  # path is never None here: the run records a job
                # a restart truncates the file (unless the site appends): it is shorter, or it begins otherwise
                # (the batch step's first line names the start), however fast the new start wrote
                if log.read(len(head)) != head or os.fstat(log.fileno()).st_size < position:
                    print(f"--- {path}: job {job} started again ---", file=sys.stderr)
                    position, head = 0, b""
                    decoder.reset()
                log.seek(position)
                data = log.read()
        except FileNotFoundError:  # not written yet (pending)
            data = b""
        position += len(data)
        head = (head + data)[:_HEAD]
        if data:
            out.write(decoder.decode(data))
            out.flush()
        if not queued:
            newer = current_job(run_dir)
            if newer == job or newer is None or _queued(newer) is None:
                return job
            print(f"--- job {job} resubmitted the run as job {newer} ---", file=sys.stderr)
            job, position, head = newer, 0, b""
            decoder.reset()
            continue
        time.sleep(poll)


# ---- cancel

def cancel(target: Path) -> list[Cancelled]:
    """scancel every recorded job still queued of a run folder, or of every run under a folder of runs (a sweep,
    whose own folder may hold the array's jobs.tsv): prepare and train jobs, array tasks, resubmissions. A
    `cancelled` event is recorded in the folder that recorded each job. Returns what was found queued, in the order
    cancelled (deepest folders first, each one's newest job first); an entry with an error is a job scancel
    refused. Raises RuntimeError when jobs are recorded but no scancel is installed here."""
    target = Path(target)
    folders = sorted({p.parent for p in target.rglob(JOBS_FILE)}, key=lambda p: (-len(p.parts), str(p)))
    found = []
    for folder in folders:
        roles = {}
        for entry in read(folder):
            roles.setdefault(entry.job_id, entry.role)
        # newest first: a training job waiting on its preparation job goes before Slurm cancels it for us
        found += [(folder, job_id, role) for job_id, role in reversed(roles.items())]
    if found and shutil.which("scancel") is None:
        raise RuntimeError(f"{target} records Slurm jobs, but there is no scancel here: cancel them where Slurm runs")
    # what is queued is decided before anything is cancelled (cancelling an array also ends its tasks), and once
    # per job: a trial records its array task both as ARRAYID_TASK and under the task's own job id
    queued, seen = [], set()
    for folder, job_id, role in found:
        listed = _squeue(job_id)[0]
        if listed and listed[0]["TaskId"] not in seen:
            seen.add(listed[0]["TaskId"])
            queued.append((folder, job_id, role, _combined([r["JobState"] for r in listed])))
    cancelled = []
    for folder, job_id, role, state in queued:
        done, trouble = _run(["scancel", job_id])
        if done is None:
            if trouble:  # refused; without trouble the job ended meanwhile and there was nothing to cancel
                cancelled.append(Cancelled(folder, job_id, role, state, trouble))
            continue
        record(folder, job_id, role, "cancelled", f"was {state}")
        cancelled.append(Cancelled(folder, job_id, role, state))
    return cancelled
