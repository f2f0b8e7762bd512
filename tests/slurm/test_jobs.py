"""Job tracking on the real Slurm cluster (launcher/cluster/jobs.py): `tunelaunch runs` shows Slurm's word on a
run's recorded job (RUNNING, PENDING, FAILED, CANCELLED; never the "running" of run_state.json for a job that
ended), `tunelaunch cancel` cancels a run's or a sweep's queued jobs, `tunelaunch logs [-f]` prints the job's
output and follows it until the job leaves the queue, across a requeue.

The run folders are made by hand (config.yaml with cluster.kind=slurm, run_state.json "running") and the jobs are
plain `sbatch --wrap` jobs recorded in RUN/jobs.tsv as `submit` records its own: what is tested is the tracking,
not the batch script."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from launcher import run_dir as runs
from launcher.cluster import jobs
from launcher.cluster.script import job_name
from launcher.config.schema import RunConfig
from tests.conftest import cli_env, run_cli, tunelaunch
from tests.slurm.conftest import SlurmCluster, job_fields, sbatch, slurm, wait_for_job, wait_for_state

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(600)]


def make_run(folder: Path) -> Path:
    """A Slurm run folder as `submit` leaves it, its workers said to be running."""
    folder.mkdir(parents=True)
    cfg = RunConfig()
    cfg.project_name = str(folder)
    cfg.cluster.kind = "slurm"
    runs.write_config(folder, cfg)
    runs.write_state(folder, "running")
    (folder / "slurm").mkdir()
    return folder


def submit(run: Path, command: str, *options: str) -> str:
    """sbatch a shell command for the run, its output where `submit` puts a job's, and record it as `submit` does."""
    job_id = str(sbatch([f"--job-name={job_name(run)}", f"--output={run / 'slurm'}/%x-%j.out", *options,
                         "--wrap", command], cwd=run))
    jobs.record(run, job_id, "train", "submitted")
    return job_id


def state(root: Path, run: Path) -> str:
    """The state cell of the run's row in `tunelaunch runs ROOT` (cut at the header's columns: it may hold spaces)."""
    done = run_cli("runs", root, cwd=None, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    header, *rows = done.stdout.splitlines()
    name = str(run.relative_to(root))
    row = next((r for r in rows if r.split()[0] == name), None)
    assert row is not None, done.stdout
    return row[header.index("state"):header.index("steps")].strip()


def test_a_running_job_shows_running_then_cancelled(slurm_cluster: SlurmCluster, tmp_path):
    run = make_run(tmp_path / "runs" / "a")
    job = submit(run, "echo started; sleep 120")
    wait_for_state(job, "RUNNING", timeout=180)
    assert state(tmp_path / "runs", run) == "RUNNING"

    done = run_cli("cancel", run, cwd=None, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"cancelled job {job} (train, was RUNNING)" in done.stdout
    last = jobs.read(run)[-1]
    assert (last.job_id, last.role, last.event, last.detail) == (job, "train", "cancelled", "was RUNNING")
    # at once (Slurm may still be cleaning up the job), and once it has left the queue
    assert state(tmp_path / "runs", run) == "CANCELLED"
    assert wait_for_job(job)["JobState"] == "CANCELLED"
    assert state(tmp_path / "runs", run) == "CANCELLED"
    assert runs.read_state(run)["status"] == "running"  # what the table did not believe

    again = run_cli("cancel", run, cwd=None, timeout=120)
    assert again.returncode == 1 and "nothing to cancel" in again.stderr, again.stdout + again.stderr
    assert jobs.count(run, "cancelled") == 1


def test_a_job_that_exits_3_shows_failed_and_its_log(slurm_cluster: SlurmCluster, tmp_path):
    run = make_run(tmp_path / "runs" / "b")
    job = submit(run, "echo about to fail; exit 3")
    fields = wait_for_job(job)
    assert (fields["JobState"], fields["ExitCode"]) == ("FAILED", "3:0")
    assert state(tmp_path / "runs", run) == "FAILED"
    assert jobs.slurm_state(job) == ("FAILED", "scontrol")
    done = run_cli("logs", run, cwd=None, timeout=120)
    assert (done.returncode, done.stdout) == (0, "about to fail\n"), done.stderr
    assert jobs.log_file(run) == Path(fields["StdOut"]) == run / "slurm" / f"b-{job}.out"


def test_a_job_that_ended_completed_on_an_unfinished_run_is_explained_by_its_events(slurm_cluster: SlurmCluster,
                                                                                       tmp_path):
    """Slurm's COMPLETED only says the batch script exited 0: the script's own last event says why it stopped."""
    stopped, silent = make_run(tmp_path / "runs" / "e"), make_run(tmp_path / "runs" / "f")
    job = submit(stopped, f"printf '%s\\t%s\\ttrain\\ttimelimit\\tcheckpoint-2 saved\\n' \"$(date +%s)\" "
                          f"\"$SLURM_JOB_ID\" >> {stopped / jobs.JOBS_FILE}")
    other = submit(silent, "true")
    assert wait_for_job(job)["JobState"] == wait_for_job(other)["JobState"] == "COMPLETED"
    assert [e.event for e in jobs.read(stopped)] == ["submitted", "timelimit"]  # written by the job itself
    assert state(tmp_path / "runs", stopped) == "TIMEOUT"
    jobs.record(stopped, job, "train", "gave_up", "stop 4; cluster.max_requeues is 3")
    assert state(tmp_path / "runs", stopped) == "FAILED"
    assert state(tmp_path / "runs", silent) == "COMPLETED (run unfinished)"


def test_held_jobs_show_pending_and_cancelling_a_sweep_cancels_them_all(slurm_cluster: SlurmCluster, tmp_path):
    sweep = tmp_path / "sweep"
    trials = [make_run(sweep / name) for name in ("lr=1", "lr=2")]
    held = [submit(trial, "echo never", "--hold") for trial in trials]
    for job in held:
        wait_for_state(job, "PENDING")
    assert [state(sweep, trial) for trial in trials] == ["PENDING", "PENDING"]
    assert jobs.slurm_state(held[0]) == ("PENDING", "squeue")
    done = run_cli("logs", trials[0], cwd=None, timeout=120)
    assert done.returncode == 1 and "no log yet" in done.stderr and "PENDING" in done.stderr, done.stderr

    done = run_cli("cancel", sweep, cwd=None, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    for trial, job in zip(trials, held):
        assert f"cancelled job {job} (train, was PENDING) of {trial}" in done.stdout
        assert wait_for_job(job)["JobState"] == "CANCELLED"
        assert state(sweep, trial) == "CANCELLED"
    assert run_cli("cancel", sweep, cwd=None, timeout=120).returncode == 1


def test_logs_follow_returns_once_the_job_ended(slurm_cluster: SlurmCluster, tmp_path):
    run = make_run(tmp_path / "runs" / "c")
    job = submit(run, "echo one; sleep 6; echo two")
    wait_for_state(job, "RUNNING", timeout=180)
    follow = subprocess.Popen(tunelaunch("logs", "-f", run), env=cli_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    out, err = follow.communicate(timeout=120)
    assert follow.returncode == 0, err
    assert out == "one\ntwo\n", err  # "two" came 6 s later: it waited for it
    assert not slurm(["squeue", "-h", "-j", job]).stdout.strip()  # it returned because the job left the queue
    assert job_fields(job)["JobState"] == "COMPLETED"
    assert run_cli("logs", run, cwd=None, timeout=120).stdout == "one\ntwo\n"


def test_logs_follow_keeps_following_across_a_requeue(slurm_cluster: SlurmCluster, tmp_path):
    run = make_run(tmp_path / "runs" / "d")
    script = ('n=${SLURM_RESTART_COUNT:-0}; echo "start $n"; '
              'if [ "$n" = 0 ]; then sleep 120; fi; echo "done $n"')
    job = submit(run, script)
    log = Path(wait_for_state(job, "RUNNING", timeout=180)["StdOut"])
    deadline = time.monotonic() + 60
    while not (log.is_file() and "start 0" in log.read_text()):
        assert time.monotonic() < deadline, "the job wrote nothing"
        time.sleep(0.2)
    follow = subprocess.Popen(tunelaunch("logs", "-f", run), env=cli_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    time.sleep(3)  # it has printed the first start and waits
    slurm(["scontrol", "requeue", job])
    out, err = follow.communicate(timeout=240)
    assert follow.returncode == 0, err
    assert out.startswith("start 0\n") and out.endswith("start 1\ndone 1\n"), out + err
    assert "started again" in err
    fields = job_fields(job)
    assert (fields["JobState"], fields["Restarts"]) == ("COMPLETED", "1")
