"""RUN/jobs.tsv (launcher.cluster.jobs): the file's format read back, torn and foreign lines, counting, and what
`tunelaunch runs`, `logs` and `cancel` make of the recorded events when Slurm does not know a job. Slurm's commands
are never mocked: a test either empties PATH of them (a run folder copied to a laptop) or asks about job ids no
Slurm has given out (this machine may run a test cluster; its ids are small)."""
from __future__ import annotations

import io
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher import cli, run_dir as runs
from launcher.cluster import jobs
from launcher.config.schema import RunConfig

GONE = "99999990"  # a job id no Slurm here has given out (the test cluster's ids restart at 1)


def make_run(folder: Path, status: str = "running", **cluster) -> Path:
    """A Slurm run folder as `submit` leaves it: config.yaml (cluster.kind=slurm) and run_state.json."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = RunConfig()
    cfg.project_name = str(folder)
    cfg.cluster.kind = "slurm"
    for key, value in cluster.items():
        setattr(cfg.cluster, key, value)
    runs.write_config(folder, cfg)
    runs.write_state(folder, status)
    return folder


@pytest.fixture
def no_slurm(monkeypatch, tmp_path):
    """PATH without any Slurm command, as on a laptop reading a copied run folder."""
    empty = tmp_path / "no-slurm-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


# ---- the file

def test_recorded_events_read_back_in_order_with_every_field(tmp_path):
    before = int(time.time())
    jobs.record(tmp_path, 41, "prepare", "submitted")
    jobs.record(tmp_path, "42", "train", "submitted", "after 41")
    jobs.record(tmp_path, "42", "train", "started", "restart 0; nodes node[1-2]")
    events = jobs.read(tmp_path)
    assert [(e.job_id, e.role, e.event, e.detail) for e in events] == [
        ("41", "prepare", "submitted", ""), ("42", "train", "submitted", "after 41"),
        ("42", "train", "started", "restart 0; nodes node[1-2]")]
    assert all(before <= e.time <= time.time() for e in events)
    # the format of the design, byte for byte: integer time, five tab-separated fields, one line each
    lines = (tmp_path / jobs.JOBS_FILE).read_text().splitlines()
    assert lines[1] == f"{events[1].time}\t42\ttrain\tsubmitted\tafter 41"
    assert lines[0].split("\t")[1:] == ["41", "prepare", "submitted", ""]


def test_tabs_and_newlines_in_a_detail_become_spaces(tmp_path):
    jobs.record(tmp_path, 7, "train", "failed", "srun exit 1;\tstatus running\nsecond line\r")
    assert len((tmp_path / jobs.JOBS_FILE).read_text().splitlines()) == 1
    assert jobs.read(tmp_path)[0].detail == "srun exit 1; status running second line"


def test_bash_lines_are_read_too(tmp_path):
    """The batch script appends with printf; a line without the empty detail's trailing tab is an event too."""
    subprocess.run(["bash", "-c", r'printf "%s\t%s\t%s\t%s\t%s\n" "$(date +%s)" 9 train requeued "preempted 1 of 3"'
                    r' >> jobs.tsv; printf "%s\t%s\t%s\t%s\n" 1700000000 9 train started >> jobs.tsv'],
                   cwd=tmp_path, check=True)
    assert [(e.event, e.detail) for e in jobs.read(tmp_path)] == [("requeued", "preempted 1 of 3"),
                                                                  ("started", "")]


def test_record_refuses_what_would_break_the_format(tmp_path):
    with pytest.raises(ValueError, match="role"):
        jobs.record(tmp_path, 1, "score", "submitted")
    with pytest.raises(ValueError, match="event"):
        jobs.record(tmp_path, 1, "train", "exploded")
    with pytest.raises(ValueError, match="job id"):
        jobs.record(tmp_path, "1\t2", "train", "started")
    assert not (tmp_path / jobs.JOBS_FILE).exists()


def test_a_missing_file_is_no_events(tmp_path):
    assert jobs.read(tmp_path) == [] and jobs.job_ids(tmp_path) == []
    assert jobs.current_job(tmp_path) is None and jobs.count(tmp_path, "failed") == 0
    assert jobs.log_file(tmp_path) is None


def test_a_torn_last_line_is_left_out_until_it_is_complete(tmp_path):
    jobs.record(tmp_path, 5, "train", "started")
    with open(tmp_path / jobs.JOBS_FILE, "ab") as f:
        f.write(b"1700000000\t5\ttrain\tfail")  # a writer caught mid-line
    assert [e.event for e in jobs.read(tmp_path)] == ["started"]
    with open(tmp_path / jobs.JOBS_FILE, "ab") as f:
        f.write(b"ed\tsrun exit 1\n")
    assert [(e.event, e.detail) for e in jobs.read(tmp_path)] == [("started", ""), ("failed", "srun exit 1")]


def test_lines_that_are_not_events_are_skipped(tmp_path):
    (tmp_path / jobs.JOBS_FILE).write_bytes(b"garbage\n\nnot-a-time\t5\ttrain\tstarted\t\n"
                                            b"1700000000\t5\ttrain\tstarted\t\xff\n")
    assert [(e.job_id, e.event) for e in jobs.read(tmp_path)] == [("5", "started")]


def test_concurrent_writers_never_interleave(tmp_path):
    """Four processes append 300 lines each with long details: every line arrives whole."""
    code = ("import sys; from launcher.cluster import jobs\n"
            "for i in range(300): jobs.record(sys.argv[1], sys.argv[2], 'train', 'failed', sys.argv[2] * 300)")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), str(n)]) for n in range(1, 5)]
    assert [p.wait(timeout=120) for p in procs] == [0] * 4
    events = jobs.read(tmp_path)
    assert len(events) == 1200 and len((tmp_path / jobs.JOBS_FILE).read_text().splitlines()) == 1200
    assert all(e.detail == e.job_id * 300 for e in events)


def test_current_job_is_the_newest_train_line(tmp_path):
    jobs.record(tmp_path, 10, "prepare", "submitted")
    jobs.record(tmp_path, 11, "train", "submitted")
    jobs.record(tmp_path, 10, "prepare", "started")
    assert jobs.current_job(tmp_path) == "11"
    jobs.record(tmp_path, 11, "train", "requeued", "preempted")
    jobs.record(tmp_path, 12, "train", "submitted", "resubmission of 11")
    assert jobs.current_job(tmp_path) == "12"
    # the old job's own line about the resubmission may come last: it still names the new job
    jobs.record(tmp_path, 11, "train", "resubmitted", "job 12: preempted; restart 2 of at most 3")
    assert jobs.current_job(tmp_path) == "12"
    assert jobs.job_ids(tmp_path) == ["10", "11", "12"]


def test_count_counts_the_lines_of_the_events_asked_for(tmp_path):
    for event in ("started", "preempted", "requeued", "started", "timelimit", "requeued", "started", "failed"):
        jobs.record(tmp_path, 3, "train", event)
    assert jobs.count(tmp_path, "preempted", "timelimit") == 2
    assert jobs.count(tmp_path, "failed") == 1
    assert jobs.count(tmp_path, "started") == 3
    assert jobs.count(tmp_path) == 0


# ---- Slurm's word, where there is none

def test_no_slurm_command_here_is_no_answer_not_a_crash(no_slurm, tmp_path):
    assert jobs.slurm_state("1") is None
    run = make_run(tmp_path / "run")
    jobs.record(run, 1, "train", "started")
    assert jobs.run_status(run) == "unknown (job 1: no Slurm here)"


def test_a_job_no_slurm_knows_has_no_state():
    assert jobs.slurm_state(GONE) is None


@pytest.mark.parametrize("events, shown", [
    (["submitted"], f"unknown (job {GONE} gone)"),
    (["submitted", "started"], f"unknown (job {GONE} gone)"),
    (["started", "preempted", "requeued"], f"unknown (job {GONE} gone)"),  # requeued, yet gone from the queue
    (["started", "preempted"], "PREEMPTED"),
    (["started", "timelimit"], "TIMEOUT"),
    (["started", "failed"], "FAILED"),
    (["started", "failed", "gave_up"], "FAILED"),
    (["started", "cancelled"], "CANCELLED"),
    (["started", "finished"], "finished"),
])
def test_a_job_slurm_no_longer_knows_is_told_by_its_newest_event(tmp_path, events, shown):
    run = make_run(tmp_path / "run", status="running")
    for event in events:
        jobs.record(run, GONE, "train", event)
    status = jobs.run_status(run)
    # on a machine without Slurm (or with its controller down) the unknown case says why instead of "gone"
    assert status == shown or (shown.endswith("gone)") and status.startswith(f"unknown (job {GONE}: "))
    assert "running" not in status.lower()


def test_only_the_current_jobs_events_count(tmp_path):
    """An older job's end does not describe the current one."""
    run = make_run(tmp_path / "run")
    jobs.record(run, "99999991", "train", "failed")
    jobs.record(run, GONE, "train", "submitted", "resubmission of 99999991")
    assert jobs.run_status(run).startswith(f"unknown (job {GONE}")


def test_a_finished_run_is_finished_whatever_its_jobs_say(tmp_path):
    run = make_run(tmp_path / "run", status="finished")
    jobs.record(run, GONE, "train", "failed")
    assert jobs.run_status(run) == "finished"


@pytest.mark.parametrize("status", ["planned", "running", "preempted", "failed"])
def test_a_run_without_jobs_keeps_its_run_state(tmp_path, status):
    run = make_run(tmp_path / "run", status=status)
    jobs.record(run, GONE, "prepare", "submitted")  # a prepare job alone names no training job
    assert jobs.run_status(run) == status
    local = make_run(tmp_path / "local", status=status)
    assert jobs.run_status(local) == status


def test_runs_table_shows_the_job_state_not_the_run_state(tmp_path, capsys):
    make_run(tmp_path / "a", status="running")
    jobs.record(tmp_path / "a", GONE, "train", "timelimit")
    make_run(tmp_path / "b", status="running")  # a local run: its own state
    assert cli.main(["runs", str(tmp_path)]) == 0
    rows = {line.split()[0]: line.split()[1] for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows == {"a": "TIMEOUT", "b": "running"}


# ---- logs

def test_the_log_file_is_derived_from_the_config_when_slurm_does_not_know_the_job(tmp_path):
    from launcher.cluster.script import job_name

    run = make_run(tmp_path / "my run")
    jobs.record(run, GONE, "train", "submitted")
    assert jobs.log_file(run) == run.resolve() / "slurm" / f"{job_name(run)}-{GONE}.out"
    assert job_name(run) == "my_run"
    elsewhere = make_run(tmp_path / "other", log_dir=str(tmp_path / "logs"))
    jobs.record(elsewhere, GONE, "train", "submitted")
    assert jobs.log_file(elsewhere) == (tmp_path / "logs" / f"other-{GONE}.out").resolve()


def test_an_array_tasks_log_is_named_after_the_sweep_until_a_resubmission(tmp_path):
    trial = make_run(tmp_path / "sweep" / "lr=1")
    jobs.record(trial, "99999980_3", "train", "submitted", "array 99999980 task 3")  # as submit records it
    assert jobs.log_file(trial) == (tmp_path / "sweep" / "slurm" / "sweep-99999980_3.out").resolve()
    jobs.record(trial, GONE, "train", "started", "restart 0; nodes node1")  # the task under its own job id
    assert jobs.log_file(trial) == (tmp_path / "sweep" / "slurm" / "sweep-99999980_3.out").resolve()
    jobs.record(trial, GONE, "train", "resubmitted", "job 99999992: preempted")
    jobs.record(trial, "99999992", "train", "submitted", f"resubmission of {GONE}")  # sbatch of lr=1/job.sbatch
    assert jobs.log_file(trial) == (trial / "slurm" / "lr_1-99999992.out").resolve()


def test_logs_prints_the_current_jobs_log_and_follow_returns_once_it_is_not_queued(no_slurm, tmp_path, capsys):
    run = make_run(tmp_path / "run")
    jobs.record(run, 1, "train", "submitted")
    assert cli.main(["logs", str(run)]) == 1
    assert "no log yet" in capsys.readouterr().err
    log = run / "slurm" / "run-1.out"
    log.parent.mkdir()
    log.write_text("step 1\nstep 2 ünïcode\n")
    assert cli.main(["logs", str(run)]) == 0
    assert capsys.readouterr().out == "step 1\nstep 2 ünïcode\n"
    out = io.StringIO()
    assert jobs.follow(run, out, poll=0.01) == "1"
    assert out.getvalue() == "step 1\nstep 2 ünïcode\n"


def test_logs_of_a_local_run_says_where_its_log_is(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    assert cli.main(["logs", str(run)]) == 1
    assert "train.log" in capsys.readouterr().err


# ---- cancel

def test_cancel_with_nothing_queued_cancels_nothing_and_exits_1(tmp_path, capsys):
    run = make_run(tmp_path / "sweep" / "a")
    jobs.record(run, GONE, "train", "started")
    if shutil.which("scancel"):  # without Slurm, cancel refuses: test_cancel_without_slurm_says_so
        assert jobs.cancel(tmp_path / "sweep") == []
    assert cli.main(["cancel", str(tmp_path / "sweep")]) == 1
    err = capsys.readouterr().err
    assert "nothing to cancel" in err or "no scancel here" in err
    assert jobs.count(run, "cancelled") == 0


def test_cancel_without_slurm_says_so(no_slurm, tmp_path, capsys):
    run = make_run(tmp_path / "run")
    jobs.record(run, 5, "train", "started")
    with pytest.raises(RuntimeError, match="no scancel here"):
        jobs.cancel(run)
    assert cli.main(["cancel", str(run)]) == 1
    assert "no scancel here" in capsys.readouterr().err
