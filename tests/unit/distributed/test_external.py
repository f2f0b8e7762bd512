"""`train` under the user's own launcher (launcher/distributed/external.py), without starting a process: the world
read from the environment torchrun and accelerate launch export (the variables as accelerate 1.15 and torch 2.13
set them, copied from real runs), the configuration adopting it, every contradiction named with both sides, the
DeepSpeed file that results, the worker's environment, and how the ranks agree on the run folder through a store.

tests/distributed/test_user_launcher.py runs the real launchers."""
from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from launcher.config.errors import ConfigError
from launcher.distributed import external
from launcher.distributed.external import World, adopt, check, from_environment, merge_deepspeed, worker_environment
from launcher.distributed.launch import prepare
from launcher.planning import make_plan
from launcher.resolve import resolve
from tests.unit.helpers import CPU, valid_cfg

PYTHON = "/venv/bin/python3"
TORCHRUN = [PYTHON, "/venv/bin/torchrun", "--nproc_per_node", "2", "-m", "launcher", "train", "recipe=sft/chat_tiny"]


def accelerate(*options: str) -> list[str]:
    return [PYTHON, "/venv/bin/accelerate", "launch", *options, "-m", "launcher", "train", "recipe=sft/chat_tiny"]


def ranks(rank: int = 0, world: int = 2, local_world: int | None = None, **extra) -> dict:
    """What torchrun's agent gives each worker (accelerate launch runs the same agent)."""
    local_world = local_world or world
    return {"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank % local_world),
            "LOCAL_WORLD_SIZE": str(local_world), "GROUP_RANK": str(rank // local_world), "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "none", "TORCHELASTIC_RESTART_COUNT": "0",
            "TORCHELASTIC_USE_AGENT_STORE": "True", **extra}


ACCELERATE_COMMON = {"ACCELERATE_MIXED_PRECISION": "no", "ACCELERATE_DYNAMO_BACKEND": "NO"}
# accelerate launch --config_file zero3.yaml (distributed_type DEEPSPEED, zero_stage 3), as its workers saw it
ZERO3 = {"ACCELERATE_MIXED_PRECISION": "no", "ACCELERATE_USE_DEEPSPEED": "true",
         "ACCELERATE_CONFIG_DS_FIELDS": "zero_stage,zero3_init_flag,offload_optimizer_device,offload_param_device,"
                                        "mixed_precision",
         "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3", "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "none",
         "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE": "none", "ACCELERATE_DEEPSPEED_ZERO3_INIT": "true"}
FSDP = {"ACCELERATE_MIXED_PRECISION": "bf16", "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2",
        "FSDP_RESHARD_AFTER_FORWARD": "true", "FSDP_OFFLOAD_PARAMS": "false",
        "FSDP_STATE_DICT_TYPE": "SHARDED_STATE_DICT"}


def world(env: dict, parent: list[str] = TORCHRUN) -> World:
    found = from_environment(env, parent)
    assert found is not None
    return found


# ---- the world, from the launcher's environment

def test_no_launcher_no_world():
    assert from_environment({}, TORCHRUN) is None
    # accelerate's variables exported by hand, with no accelerate launch above: not a launch
    assert from_environment({"ACCELERATE_MIXED_PRECISION": "bf16"}, ["/bin/bash"]) is None


def test_torchrun_is_ddp_over_the_processes_it_started():
    w = world(ranks(1))
    assert (w.launcher, w.started_by, w.backend, w.world_size, w.local_world_size, w.num_nodes, w.rank) == (
        "torchrun", "torchrun --nproc_per_node 2", "ddp", 2, 2, 1, 1)
    assert w.command == "torchrun --nproc_per_node 2 -m launcher train recipe=sft/chat_tiny"
    assert w.store == ("127.0.0.1", 29500) and w.attempt == "none/0" and not w.refusal
    assert w.mixed_precision is None  # torchrun says nothing about precision
    one = world(ranks(0, world=1))
    assert one.backend == "none" and one.description == "one process"


def test_torchrun_started_as_a_module_and_two_nodes():
    w = world(ranks(5, world=8, local_world=4), [PYTHON, "-u", "-m", "torch.distributed.run", "--nnodes", "2",
                                                 "--nproc_per_node", "4", "-m", "launcher", "train"])
    assert (w.launcher, w.started_by) == ("torchrun", "torchrun --nnodes 2 --nproc_per_node 4")
    assert (w.num_nodes, w.node_rank, w.local_world_size) == (2, 1, 4)
    assert w.description == "DDP over 8 processes on 2 nodes"


def test_accelerate_deepspeed_zero3():
    w = world(ranks(0, **ZERO3), accelerate("--config_file", "zero3.yaml"))
    assert (w.launcher, w.started_by) == ("accelerate launch", "accelerate launch --config_file zero3.yaml")
    assert (w.backend, w.zero_stage, w.offload_devices, w.mixed_precision) == ("deepspeed", 3, ("none", "none"), "no")
    assert w.description == "DeepSpeed ZeRO-3 over 2 processes"


def test_accelerate_fsdp_and_megatron():
    assert world(ranks(0, **FSDP), accelerate("--config_file", "fsdp.yaml")).backend == "fsdp"
    megatron = world(ranks(0, ACCELERATE_USE_MEGATRON_LM="true", **ACCELERATE_COMMON), accelerate())
    assert "Megatron-LM" in megatron.refusal


def test_a_launcher_without_a_rendezvous_store_is_refused():
    env = ranks(0)
    del env["TORCHELASTIC_USE_AGENT_STORE"]
    assert "no rendezvous store" in world(env, ["/usr/bin/deepspeed", "-m", "launcher", "train"]).refusal
    assert not world({**ranks(0, world=1), "TORCHELASTIC_USE_AGENT_STORE": ""}).refusal  # one process needs none


def test_accelerate_multi_cpu_starts_one_process_that_hands_over_to_torchrun(tmp_path, monkeypatch):
    """accelerate's MULTI_CPU without MPI runs the script once, with no RANK: that process becomes torchrun with
    the world the config asked for (its own parser and config file rules read the request)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "multi_cpu.yaml").write_text(yaml.safe_dump({
        "compute_environment": "LOCAL_MACHINE", "distributed_type": "MULTI_CPU", "num_processes": 2,
        "num_machines": 1, "machine_rank": 0, "mixed_precision": "no", "use_cpu": True}))
    simple = {"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", **ACCELERATE_COMMON}
    w = world(simple, accelerate("--config_file", "multi_cpu.yaml"))
    assert w.handoff == ("--standalone", "--nproc_per_node", "2")
    assert "only through MPI" in w.notes[0] and "accelerate launch --config_file multi_cpu.yaml" in w.notes[0]
    assert world(simple, accelerate("--cpu", "--num_processes", "2")).handoff == w.handoff
    one = world(simple, accelerate("--cpu", "--num_processes", "1"))  # one process: it is the world
    assert (one.handoff, one.world_size, one.rank, one.refusal) == ((), 1, 0, "")
    assert "MPI" in world({**simple, "OMPI_COMM_WORLD_SIZE": "2"}, accelerate("--cpu")).refusal


def test_the_ranks_of_a_hand_over_know_who_the_user_started():
    recorded = {"launcher": "accelerate launch", "started_by": "accelerate launch --config_file multi_cpu.yaml",
                "command": "accelerate launch --config_file multi_cpu.yaml -m launcher train", "note": "handed over"}
    w = world({**ranks(1), **ACCELERATE_COMMON, external.STARTED_BY_ENV: json.dumps(recorded)},
              [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "launcher"])
    assert (w.launcher, w.started_by, w.notes) == ("accelerate launch", recorded["started_by"], ("handed over",))


# ---- the configuration against that world

def adopted(w: World, **distributed):
    cfg = valid_cfg()
    for key, value in distributed.items():
        setattr(cfg.distributed, key, value)
    problems, notes = adopt(cfg, w)
    return cfg, [str(p) for p in problems], notes


def test_auto_takes_the_launchers_world_and_says_so():
    cfg, problems, notes = adopted(world(ranks(0)))
    d = cfg.distributed
    assert problems == [] and (d.backend, d.num_processes, d.num_nodes, d.launcher) == ("ddp", 2, 1, "torchrun")
    assert "distributed: auto -> ddp: DDP over 2 processes, as torchrun --nproc_per_node 2 set it up" in notes
    cfg, problems, notes = adopted(world(ranks(0, **ZERO3), accelerate("--config_file", "zero3.yaml")))
    d = cfg.distributed
    assert problems == [] and (d.backend, d.zero_stage, d.offload, d.launcher) == ("deepspeed", 3, "none", "accelerate")
    assert cfg.precision.mixed_precision == "fp32"  # accelerate's mixed_precision "no"


def test_contradictions_name_both_sides():
    zero3 = world(ranks(0, **ZERO3), accelerate("--config_file", "zero3.yaml"))
    fsdp = world(ranks(0, **FSDP), accelerate("--config_file", "fsdp.yaml"))
    _, problems, _ = adopted(fsdp, backend="deepspeed", zero_stage=3)  # distributed=zero3
    assert problems == ["distributed.backend: DeepSpeed ZeRO-3 in the configuration, but accelerate launch "
                        "--config_file fsdp.yaml set up FSDP over 2 processes: leave distributed at auto (it takes "
                        "the launcher's choice), or start the run with a launcher configured for deepspeed"]
    _, problems, _ = adopted(zero3, backend="fsdp")
    assert len(problems) == 1 and "fsdp in the configuration" in problems[0] and "DeepSpeed ZeRO-3" in problems[0]
    _, problems, _ = adopted(zero3, backend="deepspeed", zero_stage=2)
    assert problems == ["distributed.zero_stage: ZeRO-2 in the configuration, but accelerate launch --config_file "
                        "zero3.yaml set up ZeRO-3: make them agree, or leave distributed at auto"]
    _, problems, _ = adopted(world(ranks(0)), num_processes=4)
    assert len(problems) == 1 and problems[0].startswith(
        "distributed.num_processes: 4 per node in the configuration, but torchrun --nproc_per_node 2 started 2 per "
        "node (world size 2)")
    _, problems, _ = adopted(world(ranks(0)), backend="none", num_processes=1)  # distributed=none
    assert len(problems) == 2 and "none in the configuration" in problems[1]
    _, problems, _ = adopted(world(ranks(0)), backend="fsdp")  # its settings travel in accelerate's environment
    assert "distributed_type FSDP" in problems[0]
    _, problems, _ = adopted(world(ranks(0, world=4, local_world=2)), num_nodes=3)
    assert problems[0].startswith("distributed.num_nodes: 3 in the configuration, but torchrun --nproc_per_node 2 "
                                  "runs 2 node(s)")


def test_plain_processes_take_the_configurations_deepspeed():
    cfg, problems, notes = adopted(world(ranks(0)), backend="deepspeed", zero_stage=2)
    assert problems == [] and cfg.distributed.backend == "deepspeed"
    assert "distributed: DeepSpeed ZeRO-2 from the configuration, over the 2 processes torchrun --nproc_per_node 2 " \
           "started" in notes


def test_precision_from_accelerate():
    def precision(theirs: str, ours: str):
        env = {**ranks(0), **ACCELERATE_COMMON, "ACCELERATE_MIXED_PRECISION": theirs}
        cfg = valid_cfg()
        cfg.precision.mixed_precision = ours
        problems, notes = adopt(cfg, world(env, accelerate()))
        return cfg.precision.mixed_precision, [str(p) for p in problems], [n for n in notes if "precision" in n]

    assert precision("bf16", "auto") == ("bf16", [], ["precision: auto -> bf16, as accelerate launch asks "
                                                      "(mixed_precision: bf16)"])
    mp, problems, _ = precision("bf16", "fp16")
    assert problems == ["precision.mixed_precision: fp16 in the configuration, but accelerate launch asks for bf16: "
                        "make them agree, or set precision=auto (it takes the launcher's)"]
    assert precision("no", "bf16")[1:] == ([], ["precision: bf16 from the configuration (accelerate launch says "
                                                "mixed_precision: no)"])
    assert "fp8" in precision("fp8", "auto")[1][0]


def test_the_users_deepspeed_file_decides_the_layout(tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}},
                              "train_micro_batch_size_per_gpu": "auto"}))
    env = {**ranks(0), "ACCELERATE_MIXED_PRECISION": "no", "ACCELERATE_USE_DEEPSPEED": "true",
           "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(ds)}
    cfg, problems, _ = adopted(world(env, accelerate("--config_file", "ds.yaml")))
    assert problems == [] and (cfg.distributed.zero_stage, cfg.distributed.offload) == (3, "optimizer")
    ds.write_text(json.dumps({"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "nvme"}}}))
    _, problems, _ = adopted(world(env, accelerate("--config_file", "ds.yaml")))
    assert problems and "optimizer to nvme" in problems[0]
    ds.write_text("{not json")
    _, problems, _ = adopted(world(env, accelerate("--config_file", "ds.yaml")))
    assert problems and "cannot be read" in problems[0]


def test_deepspeed_training_settings_must_equal_the_configurations(tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 8,
                              "gradient_accumulation_steps": "auto", "bf16": {"enabled": True}}))
    env = {**ranks(0), "ACCELERATE_MIXED_PRECISION": "no", "ACCELERATE_USE_DEEPSPEED": "true",
           "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(ds), "ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL": "false"}
    w = world(env, accelerate("--config_file", "ds.yaml"))
    cfg = valid_cfg()
    assert adopt(cfg, w)[0] == []
    resolve(cfg, CPU)
    problems, notes = check(cfg, w)
    assert [str(p) for p in problems] == [
        "training.batch_size: 2 in the configuration, but accelerate launch --config_file ds.yaml sets "
        "train_micro_batch_size_per_gpu 8: make them agree (or leave train_micro_batch_size_per_gpu out of the "
        "launcher's settings)",
        "precision.mixed_precision: fp32 in the resolved configuration, but accelerate launch --config_file ds.yaml's "
        "DeepSpeed config has bf16.enabled true: make them agree"]
    assert "zero3_save_16bit_model false; kept true" in notes[0]
    # accelerate's own question "How many gradient accumulation steps ...?" (its variable, no file)
    w = world({**ranks(0, **ZERO3), "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "1"}, accelerate())
    cfg = valid_cfg()
    adopt(cfg, w)
    resolve(cfg, CPU)
    assert [str(p) for p in check(cfg, w)[0]] == [
        "training.gradient_accumulation: 4 in the configuration, but accelerate launch sets "
        "gradient_accumulation_steps 1: make them agree (or leave gradient_accumulation_steps out of the launcher's "
        "settings)"]


def test_a_plan_under_the_launcher(tmp_path):
    """make_plan with the world: one report with every problem, or a plan whose launch line says who set it up."""
    run = ["recipe=sft/chat_tiny", f"project_name={tmp_path / 'run'}"]
    zero3 = world(ranks(0, **ZERO3), accelerate("--config_file", "zero3.yaml"))
    with pytest.raises(ConfigError) as err:
        make_plan(None, [*run, "distributed=fsdp", "distributed.num_processes=4"], CPU, user_launcher=zero3)
    report = err.value.report()
    assert "fsdp in the configuration, but accelerate launch --config_file zero3.yaml set up DeepSpeed ZeRO-3" in report
    assert "4 per node in the configuration" in report  # both problems in one report
    plan = make_plan(None, run, CPU, user_launcher=zero3)
    assert (plan.cfg.distributed.backend, plan.world_size) == ("deepspeed", 2)
    assert plan.resolution.backend_reason == "set up by accelerate launch --config_file zero3.yaml"


# ---- what rank 0 writes, and what the worker gets

def test_merge_deepspeed_theirs_over_ours():
    ours = {"train_micro_batch_size_per_gpu": 2, "zero_optimization": {
        "stage": 3, "reduce_bucket_size": 100, "stage3_gather_16bit_weights_on_model_save": True}}
    theirs = {"train_micro_batch_size_per_gpu": "auto", "optimizer": {"type": "AdamW", "params": {"lr": "auto"}},
              "zero_optimization": {"reduce_bucket_size": 5e8, "stage3_gather_16bit_weights_on_model_save": False}}
    assert merge_deepspeed(ours, theirs) == {
        "train_micro_batch_size_per_gpu": 2,  # "auto": ours
        "zero_optimization": {"stage": 3, "reduce_bucket_size": 5e8,  # theirs
                              "stage3_gather_16bit_weights_on_model_save": True},  # ours: a reloadable model
        "optimizer": {"type": "AdamW", "params": {"lr": "auto"}}}  # theirs (the Trainer fills its "auto")


def test_prepare_records_the_users_launcher(tmp_path):
    ds = tmp_path / "theirs.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 3, "stage3_max_live_parameters": 12345}}))
    env = {**ranks(0), "ACCELERATE_MIXED_PRECISION": "no", "ACCELERATE_USE_DEEPSPEED": "true",
           "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(ds)}
    w = World(**{**world(env, accelerate("--config_file", "user.yaml")).__dict__,
                 "command": "accelerate launch --config_file user.yaml -m launcher train hub.token=hf_secret"})
    cfg = valid_cfg()
    adopt(cfg, w)
    resolve(cfg, CPU)
    prepare(cfg, CPU, tmp_path, 64, ("hub.token=hf_secret",), user_launcher=w)
    launch = json.loads((tmp_path / "launch.json").read_text())
    assert launch["started_by"] == "accelerate launch --config_file user.yaml"
    assert launch["command"] == "accelerate launch --config_file user.yaml -m launcher train 'hub.token=<redacted>'"
    assert "hf_secret" not in (tmp_path / "launch.json").read_text()
    zero = json.loads((tmp_path / "deepspeed.json").read_text())["zero_optimization"]
    assert zero["stage"] == 3 and zero["stage3_max_live_parameters"] == 12345 and zero["reduce_bucket_size"] == 64 * 64


def test_worker_environment():
    cfg = valid_cfg()
    cfg.precision.mixed_precision = "fp32"
    env = worker_environment({**ranks(0), **ZERO3, "PATH": "/bin"}, cfg, Path("/run"))
    assert not set(env) & set(external.ABSORBED_VARS)  # in deepspeed.json now; beside it accelerate refuses them
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true" and env["ACCELERATE_DEEPSPEED_ZERO3_INIT"] == "true"
    assert env["ACCELERATE_MIXED_PRECISION"] == "no" and env["RANK"] == "0" and env["PATH"] == "/bin"
    cfg.precision.mixed_precision = "bf16"
    env = worker_environment({**ranks(0), **FSDP}, cfg, Path("/run"))
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    assert env["FSDP_STATE_DICT_TYPE"] == "SHARDED_STATE_DICT"   # theirs
    assert env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP"  # unset by theirs: ours
    assert "ACCELERATE_MIXED_PRECISION" not in worker_environment(ranks(0), cfg, Path("/run"))  # plain torchrun


# ---- rank 0 plans, every rank learns the outcome (a real store in this process)

@pytest.fixture()
def store():
    from torch.distributed import TCPStore

    return TCPStore("127.0.0.1", 0, is_master=True, timeout=timedelta(seconds=10), wait_for_workers=False)


def test_a_world_of_one_plans_alone(tmp_path):
    w = World("accelerate launch", "accelerate launch")
    assert external.agree_on_run_folder(w, lambda: Path("run")) == Path("run").resolve()
    assert external.agree_on_run_folder(w, lambda: None) is None


def test_the_other_ranks_read_the_run_folder_rank_0_published(tmp_path, store, monkeypatch):
    w = World("torchrun", "torchrun --nproc_per_node 2", rank=1, world_size=2, local_world_size=2,
              store=("127.0.0.1", store.port), attempt="run/0")
    (tmp_path / "config.yaml").write_text("x: 1\n")
    store.set("tunelaunch/run/0/run_folder", json.dumps({"run": str(tmp_path), "host": "node0"}))
    planned = []
    assert external.agree_on_run_folder(w, lambda: planned.append(1)) == tmp_path
    assert planned == []  # only rank 0 plans


def test_a_folder_another_node_cannot_see_is_named(tmp_path, store, monkeypatch):
    monkeypatch.setattr(external, "SHARED_FOLDER_WAIT_S", 0.2)
    w = World("torchrun", "torchrun --nnodes 2", rank=3, world_size=4, local_world_size=2, node_rank=1,
              store=("127.0.0.1", store.port), attempt="run/0")
    store.set("tunelaunch/run/0/run_folder", json.dumps({"run": str(tmp_path / "nowhere"), "host": "node0"}))
    with pytest.raises(external.RankError, match="must be on a filesystem that every node of torchrun --nnodes 2 "
                                                 "shares"):
        external.agree_on_run_folder(w, lambda: None)


@pytest.mark.timeout(60)
def test_waiting_for_rank_0_ends_with_a_message(store):
    w = World("torchrun", "torchrun --nproc_per_node 2", rank=1, world_size=2, store=("127.0.0.1", store.port),
              attempt="late/0")
    start = time.monotonic()
    with pytest.raises(external.RankError, match="rank 1: rank 0 has not finished planning the run"):
        external.agree_on_run_folder(w, lambda: None, wait_s=0.3)
    assert time.monotonic() - start < 5


def test_a_sweep_is_refused_under_a_launcher(monkeypatch, capsys):
    from launcher.cli import main
    from launcher.distributed import launch

    for key, value in ranks(0).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(launch, "train_as_rank", lambda *_: 99)  # were it reached: no store to wait at here
    assert main(["train", "-m", "recipe=sft/chat_tiny", "training.lr=1e-4,2e-4"]) == 2
    assert "A sweep (-m) cannot run under torchrun or accelerate launch" in capsys.readouterr().err
