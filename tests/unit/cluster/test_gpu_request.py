"""A Slurm job gets no GPU unless it asks: `plan` warns when cluster=slurm asks for none without saying CPU nodes
are meant (cluster.gpus_per_node=0), or asks through cluster.gres while gpus_per_node, which the plan reads, is
unset."""
import pytest

from launcher.planning import make_plan
from tests.conftest import run_cli
from tests.unit.cluster.test_script import no_slurm_env


@pytest.fixture(autouse=True)
def outside_a_job(monkeypatch):
    for key in ("SLURM_JOB_ID", "TUNELAUNCH_SLURM_BATCH"):
        monkeypatch.delenv(key, raising=False)


def cluster_notes(tmp_path, *overrides) -> list[str]:
    plan = make_plan(None, ["recipe=sft/chat_tiny", "cluster=slurm", "cluster.partition=gpu",
                            f"project_name={tmp_path / 'run'}", *overrides])
    return [n for n in plan.notes if "warning" in n and n.startswith("cluster:")]


def test_no_gpus_asked_for_is_a_warning_saying_how_to_ask(tmp_path):
    [note] = cluster_notes(tmp_path)
    assert "no GPUs requested" in note and "fp32" in note
    assert "cluster.gpus_per_node=N" in note and "cluster.gres=gpu:N" in note and "cluster.gpus_per_node=0" in note


@pytest.mark.parametrize("gpus", ["0", "2"])
def test_only_gpus_per_node_left_unset_warns(tmp_path, gpus):
    """0 is CPU nodes on purpose: the schema tells it from null, the default."""
    assert cluster_notes(tmp_path) != [] and cluster_notes(tmp_path, f"cluster.gpus_per_node={gpus}") == []


def test_gpus_asked_for_in_gres_only_say_the_plan_needs_their_count(tmp_path):
    [note] = cluster_notes(tmp_path, "cluster.gres=gpu:h100:4")
    assert "asks for 4 GPU(s)" in note and "set cluster.gpus_per_node=4" in note


def test_the_warning_says_what_sinfo_knows_of_the_partition():
    from launcher.cluster.resources import Nodes, gpu_request_notes
    from launcher.config.schema import ClusterConfig

    [note] = gpu_request_notes(ClusterConfig(kind="slurm", partition="gpu"), Nodes("gpu", 64, 512000, 8))
    assert "the job gets none (partition gpu has 8 per node, sinfo)" in note


def test_the_warning_reaches_the_user(tmp_path):
    done = run_cli("plan", "recipe=sft/chat_tiny", "cluster=slurm", "cluster.partition=gpu",
                   f"project_name={tmp_path / 'run'}", cwd=tmp_path, env=no_slurm_env(), timeout=300)
    assert done.returncode == 0, done.stderr
    assert "cluster: warning: no GPUs requested" in done.stdout
