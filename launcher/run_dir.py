"""The run folder `<project_name>/`: what state it is in, and the files written before the workers start.

A finished run is never overwritten silently: starting again needs `overwrite=true`, and even then the old
folder is moved aside, not deleted. An unfinished run (it has checkpoints) is resumed, from the checkpoint
`training.resume_from` names, and only with a configuration that computes what its checkpoints were trained on
(RESUME_MAY_CHANGE / RESUME_REFUSES). The new configuration becomes the folder's config.yaml only once the worker
has loaded the checkpoint (PENDING_CONFIG): a resume that fails before that leaves the folder as it was.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from enum import Enum
from pathlib import Path

import yaml

from launcher import atomic
from launcher.config.errors import Problem
from launcher.config.schema import REDACTED, RunConfig

STATE_FILE = "run_state.json"
PENDING_CONFIG = "config.resume.yaml"
"""The configuration of a resume in progress: the worker reads it, loads the checkpoint, then renames it onto
config.yaml (promote_pending_config). Until then config.yaml still describes the checkpoints beside it."""
DATA_HASH_FILE = "data_hash.json"
"""sha256 of the local data files, recorded when a run starts fresh, so a resume notices data edited in place."""

# What a resume may change, by dotted key or key prefix (the longest matching entry decides). A checkpoint holds
# weights, optimizer moments, the scheduler step and the data order that one configuration produced: resuming it
# under another model, data, method, adapter shape, precision, world size, batch or optimiser would train a
# different run that only looks continued. Those keys are refused. The keys allowed to change say how long,
# how often, where and how fast the same computation runs; `plan` states each such change as a note.
RESUME_REFUSES = (
    "model.", "data.", "trainer.", "peft.", "quantization.", "precision.",
    "training.lr", "training.batch_size", "training.global_batch_size", "training.gradient_accumulation",
    "training.warmup_ratio", "training.optimizer", "training.scheduler", "training.weight_decay",
    "training.max_grad_norm", "training.seed", "training.neftune_noise_alpha",
    # the world size and how optimizer states are sharded (a checkpoint is written for one of them); how the
    # processes meet may change (RESUME_MAY_CHANGE's distributed.* entries)
    "distributed.", "cluster.nodes",
)
RESUME_MAY_CHANGE = (
    "training.epochs", "training.max_steps",  # extend the run (the LR schedule then spans the new length)
    "training.eval_strategy", "training.eval_steps", "training.save_strategy", "training.save_steps",
    "training.save_total_limit", "training.validation_prompt",  # cadence
    "logging.", "hub.", "cluster.", "eval.",  # reporting, publishing, scoring, the Slurm job (its node count: above)
    "training.gradient_checkpointing", "training.auto_find_batch_size", "training.deterministic",
    "model.attn_implementation", "model.liger_kernel", "model.compile", "model.trust_remote_code",  # speed/memory
    "data.cache_dir", "data.num_proc", "peft.merge_adapter",  # where and how fast data is tokenised; the final save
    "distributed.launcher", "distributed.node_rank", "distributed.main_process_ip", "distributed.main_process_port",
    "distributed.timeout_minutes",
)
RESUME_IGNORES = ("project_name", "overwrite", "training.resume_from", "hub.token")  # the token is never in the file


class Status(str, Enum):
    """The "status" of run_state.json: written by the workers (and by a node's supervisor when a worker was
    killed), read by `train`, `runs`, the Slurm supervision and the checks of runs other runs read. The Slurm batch
    step (launcher/cluster/script.py) writes and compares the same words in bash."""
    PLANNED = "planned"
    """The folder is written; no worker has started."""
    STARTING = "starting"
    """A Slurm batch step is starting the workers (a start that dies here reports its own failure)."""
    RUNNING = "running"
    PREEMPTED = "preempted"
    """Stopped on a signal with a complete checkpoint: the same command resumes."""
    FINISHED = "finished"
    FAILED = "failed"


def read_status(path: Path) -> Status | None:
    """The recorded status of a run folder; None without run_state.json (or with a status this version does not
    know)."""
    try:
        return Status(read_state(path).get("status"))
    except ValueError:
        return None


class RunState(Enum):
    NEW = "new"
    UNFINISHED = "unfinished"
    FINISHED = "finished"
    FOREIGN = "foreign"


def read_state(path: Path) -> dict:
    """run_state.json of a run folder ({} when there is none)."""
    state_file = Path(path) / STATE_FILE
    return json.loads(state_file.read_text()) if state_file.is_file() else {}


def run_state(path: Path) -> RunState:
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return RunState.NEW
    state_file = path / STATE_FILE
    if not path.is_dir() or not state_file.is_file():
        return RunState.FOREIGN
    return RunState.FINISHED if read_status(path) is Status.FINISHED else RunState.UNFINISHED


def check_run_dir(cfg: RunConfig) -> tuple[list[Problem], list[str]]:
    """What starting this run would do to its folder; problems when it would lose something."""
    path = Path(cfg.project_name).expanduser()
    state = run_state(path)
    if state is RunState.FOREIGN:
        return [Problem("project_name", f"{path} exists and is not a tunelaunch run folder; choose another "
                        "project_name (nothing in it will be touched)")], []
    if state is RunState.FINISHED:
        if cfg.training.resume_from not in ("latest", "none"):
            return [Problem("training.resume_from", f"{path} holds a finished run, which is not resumed: choose "
                            "another project_name for a new run (or overwrite=true, without resume_from, to start "
                            "over)")], []
        if cfg.overwrite:
            return [], [f"output: {path} holds a finished run; it will be moved aside to {path}.old-<time>"]
        return [Problem("project_name", f"{path} already holds a finished run. Choose another project_name, "
                        "or pass overwrite=true to start over (the old run is moved aside, not deleted)")], []
    if state is RunState.UNFINISHED:
        problem = _node_count_changed(cfg, path)
        if problem:
            return [problem], []
        return _check_resume(cfg, path)
    if cfg.training.resume_from not in ("latest", "none"):
        return [Problem("training.resume_from", f"{path} holds no run to resume from "
                        f"{cfg.training.resume_from}; leave training.resume_from at latest")], []
    return [], [f"output: {path}"]


def _check_resume(cfg: RunConfig, path: Path) -> tuple[list[Problem], list[str]]:
    """An unfinished run: resumed from the chosen checkpoint when the configuration still computes what it was
    trained on; started over (moved aside) only when overwrite=true is given for it."""
    choice = cfg.training.resume_from
    if choice not in ("latest", "none"):
        found, problem = chosen_checkpoint(path, choice)
        if problem:
            return [Problem("training.resume_from", problem)], []
    else:
        found = latest_checkpoint(path)
    if found is None:
        return [], [f"output: {path} holds an unfinished run with no complete checkpoint yet; training restarts"]
    refused, allowed = config_changes(cfg, path)
    if _overwrite_starts_over(cfg, refused):
        why = "training.resume_from=none" if choice == "none" else "its configuration changed"
        return [], [f"output: {path} holds an unfinished run; {why} and overwrite=true: it is moved aside to "
                    f"{path}.old-<time> and training starts over"]
    if choice == "none":
        return [Problem("training.resume_from", f"{path} holds an unfinished run (newest: {found.name}); "
                        "resume_from=none starts over, which needs overwrite=true (the old run is moved aside, not "
                        "deleted), or choose another project_name")], []
    if refused:
        return [_refused_resume(path, found, refused, explicit=choice != "latest")], []
    other_world = _written_by_another_world(cfg, found)
    if other_world:
        return [other_world], []
    short = _max_steps_not_extended(cfg, found)
    if short:
        return [short], []
    notes = [f"output: {path} holds an unfinished run; training resumes from {found.name}"]
    return [], notes + [f"resume: {key} {old!r} -> {new!r}{_why(key)}" for key, old, new in allowed]


def _why(key: str) -> str:
    if key in ("training.max_steps", "training.epochs"):
        return " (the learning-rate schedule now spans the new length)"
    return ""


def _refused_resume(path: Path, checkpoint: Path, refused: list, explicit: bool) -> Problem:
    listing = "".join(f"\n      {key} {old!r} -> {new!r}" for key, old, new in refused)
    way_out = ("choose another project_name= for a new run" if explicit else
               "choose another project_name= for a new run, or pass overwrite=true to start over (the unfinished "
               "run is moved aside, not deleted)")
    keys = " / ".join(key for key, _, _ in refused if not key.startswith("data content"))
    return Problem(keys or "data.path", f"{path} holds an unfinished run whose {checkpoint.name} was trained with "
                   f"another configuration; resuming it with this one would train something else:{listing}\n"
                   f"    Resume it with these keys as they were, or {way_out}")


def _written_by_another_world(cfg: RunConfig, checkpoint: Path) -> Problem | None:
    """A sharded (FSDP) checkpoint read back under another number of processes. torch.distributed.checkpoint could
    reshard its weights and optimizer states, but the checkpoint's per-rank random states and its data position
    (counted in batches of the old global size) belong to the world that wrote it: the resume would not be exact.
    The configuration's own world size is compared by config_changes; this reads what the checkpoint holds (a
    run whose world came from the user's launcher, or a config.yaml replaced by hand)."""
    from launcher.distributed.backends import world_size
    from launcher.distributed.fsdp import checkpoint_world_size

    written, planned = checkpoint_world_size(checkpoint), world_size(cfg)
    if written is None or written == planned:
        return None
    return Problem("distributed.num_processes / distributed.num_nodes", (
        f"{checkpoint} holds FSDP shards written by {written} process(es), and this run plans {planned}: a sharded "
        f"checkpoint resumes exactly only in the world that wrote it (its per-rank random states and its data "
        f"position belong to that world size). Resume with {written} process(es), or choose another project_name"))


def _max_steps_not_extended(cfg: RunConfig, checkpoint: Path) -> Problem | None:
    """A max_steps at or below the checkpoint's step would 'resume' into a run that trains nothing."""
    step = checkpoint_step(checkpoint)
    if 0 < cfg.training.max_steps <= step:
        return Problem("training.max_steps", f"the run resumes from {checkpoint.name} (step {step}), and "
                       f"max_steps={cfg.training.max_steps} leaves nothing to train: give a larger max_steps")
    return None


def checkpoint_step(checkpoint: Path) -> int:
    try:
        return int(json.loads((checkpoint / "trainer_state.json").read_text()).get("global_step", 0))
    except (OSError, ValueError):
        return 0


def chosen_checkpoint(path: Path, choice: str) -> tuple[Path | None, str | None]:
    """The complete checkpoint `training.resume_from` names (`checkpoint-N` or a path inside the run folder), or
    why there is none, listing the ones there are."""
    complete = complete_checkpoints(path)
    given = Path(choice).expanduser()
    candidate = given if given.is_absolute() else path / given
    for checkpoint in complete:
        if candidate.resolve() == checkpoint.resolve():
            return checkpoint, None
    have = ", ".join(c.name for c in complete) or "none"
    return None, (f"{choice} is not a complete checkpoint of {path} (it has: {have}); give one of them, or "
                  "latest, or none")


def complete_checkpoints(path: Path) -> list[Path]:
    """The folder's complete checkpoints, oldest first (see latest_checkpoint)."""
    from launcher.checkpointing import checkpoints

    if not Path(path).is_dir():
        return []
    return [c for c in checkpoints(path) if (c / "trainer_state.json").is_file()]


def starts_over(cfg: RunConfig, path: Path) -> bool:
    """overwrite=true on an unfinished run starts over (moving it aside) only when it cannot or should not be
    resumed: resume_from=none, or a configuration that changed what training computes. Otherwise it resumes, so a
    requeued job whose config says overwrite=true does not throw its checkpoints away."""
    if not cfg.overwrite or run_state(path) is not RunState.UNFINISHED or not complete_checkpoints(path):
        return False
    return _overwrite_starts_over(cfg, config_changes(cfg, path)[0])


def _overwrite_starts_over(cfg: RunConfig, refused: list) -> bool:
    # An explicit checkpoint-N asks to resume: a refused change is then an error, never a reason to start over.
    choice = cfg.training.resume_from
    return cfg.overwrite and (choice == "none" or (choice == "latest" and bool(refused)))


def config_changes(cfg: RunConfig, path: Path) -> tuple[list, list]:
    """(refused, allowed): the keys whose value differs from the run folder's config.yaml, as (key, old, new),
    split by RESUME_REFUSES / RESUME_MAY_CHANGE; the recorded data hash counts as a refused key."""
    if not (path / "config.yaml").is_file():  # a folder from before config.yaml was written: nothing to compare
        return [], []
    try:
        before = read_config(path)
    except (OSError, ValueError, yaml.YAMLError) as err:
        return [("config.yaml", f"unreadable ({err})"[:200], "this configuration")], []
    old, new = flat_config(before), flat_config(cfg)
    refused, allowed = [], []
    for key in sorted(set(old) | set(new)):
        if old.get(key) == new.get(key):
            continue
        kind = resume_rule(key)
        if kind == "refuse":
            refused.append((key, old.get(key), new.get(key)))
        elif kind == "note":
            allowed.append((key, old.get(key), new.get(key)))
    return refused + _data_content_changed(cfg, path), allowed


def _data_content_changed(cfg: RunConfig, path: Path) -> list:
    recorded = path / DATA_HASH_FILE
    if not recorded.is_file():
        return []
    from launcher.manifest import data_hash

    before, now = json.loads(recorded.read_text()), data_hash(cfg)
    return [(f"data content of {name}", f"sha256 {before[name][:12]}", f"sha256 {now[name][:12]}")
            for name in sorted(before) if name in now and before[name] != now[name]]  # a new path is listed as such


def flat_config(cfg: RunConfig) -> dict:
    """Dotted key -> value, as in an override."""
    def walk(prefix: str, value):
        if isinstance(value, dict):
            for k, v in value.items():
                yield from walk(f"{prefix}{k}.", v)
        else:
            yield prefix[:-1], value
    return dict(walk("", dataclasses.asdict(cfg)))


def resume_rule(key: str) -> str:
    """refuse, note or ignore: the longest entry of the three lists matching `key` decides; a key in none of them
    is refused (a new knob changes nothing silently until it is sorted in)."""
    def length(entries):
        return max((len(e) for e in entries if key == e or (e.endswith(".") and key.startswith(e))), default=-1)
    ranked = sorted([(length(RESUME_IGNORES), "ignore"), (length(RESUME_MAY_CHANGE), "note"),
                     (length(RESUME_REFUSES), "refuse")], reverse=True)
    return ranked[0][1] if ranked[0][0] >= 0 else "refuse"


def _node_count_changed(cfg: RunConfig, path: Path) -> Problem | None:
    """A resumed Slurm run keeps the node count it was started with (its checkpoints and data order are for that
    world size): another count is refused, naming both."""
    if cfg.cluster.kind != "slurm" or not (path / "config.yaml").is_file():
        return None
    try:
        before = (yaml.safe_load((path / "config.yaml").read_text()) or {}).get("cluster", {}).get("nodes")
    except yaml.YAMLError:
        return None
    if isinstance(before, int) and before != cfg.cluster.nodes:
        return Problem("cluster.nodes", f"{path} holds an unfinished run started on {before} node(s), and this "
                       f"one asks for {cfg.cluster.nodes}: resume it with cluster.nodes={before} (sbatch "
                       f"{path / 'job.sbatch'}), or choose another project_name for {cfg.cluster.nodes} node(s)")
    return None


def open_run_dir(cfg: RunConfig) -> Path:
    """Create (or reuse, for a resume) the run folder; a finished run is moved aside when overwriting."""
    path = Path(cfg.project_name).expanduser()
    if (run_state(path) is RunState.FINISHED and cfg.overwrite) or starts_over(cfg, path):
        path.rename(path.with_name(f"{path.name}.old-{time.strftime('%Y%m%d-%H%M%S')}"))
    path.mkdir(parents=True, exist_ok=True)
    if not (path / STATE_FILE).exists():
        write_state(path, Status.PLANNED)
    return path


def write_state(path: Path, status: Status, **extra) -> None:
    atomic.write_text(path / STATE_FILE, json.dumps({"status": Status(status).value, "time": time.time(), **extra},
                                                    indent=2))


def redacted_dict(cfg: RunConfig) -> dict:
    data = dataclasses.asdict(cfg)
    if data["hub"]["token"]:
        data["hub"]["token"] = REDACTED
    return data


def read_config(folder: Path, name: str = "config.yaml") -> RunConfig:
    """The resolved configuration of a run folder, as the workers, generate, merge and push read it. The hub
    token is never in the file: it comes from HF_TOKEN."""
    from launcher.config.parse import from_dict

    path = Path(folder) / name
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a run folder: it has no config.yaml")
    cfg, problems = from_dict(RunConfig, yaml.safe_load(path.read_text()))
    if problems:
        raise ValueError(f"{path} is not a valid resolved configuration:\n" + "\n".join(map(str, problems)))
    cfg.hub.token = os.environ.get("HF_TOKEN")  # the secret travels in the environment only, never in the file
    return cfg


def write_config(path: Path, cfg: RunConfig, name: str = "config.yaml") -> Path:
    """The resolved configuration the workers read, with secrets redacted."""
    header = "# Resolved by tunelaunch; workers read this file. Secrets are redacted (the token travels as HF_TOKEN).\n"
    target = path / name
    atomic.write_text(target, header + yaml.safe_dump(redacted_dict(cfg), sort_keys=False))
    return target


def write_run_config(path: Path, cfg: RunConfig) -> None:
    """config.yaml and training_params.json of a run about to start. A resume writes PENDING_CONFIG instead: the
    checkpoints keep the config.yaml that describes them until the worker has loaded one (promote_pending_config)."""
    from launcher.config.autotrain import training_params

    if resume_checkpoint(path, cfg.training.resume_from) is not None:
        write_config(path, cfg, PENDING_CONFIG)
        return
    (path / PENDING_CONFIG).unlink(missing_ok=True)  # a failed resume's leftover: this start replaces it
    write_config(path, continuing(cfg))
    write_json(path / "training_params.json", training_params(cfg))
    if not complete_checkpoints(path):  # a fresh start: the data the checkpoints will be trained on
        from launcher.manifest import data_hash

        write_json(path / DATA_HASH_FILE, data_hash(cfg))


def continuing(cfg: RunConfig) -> RunConfig:
    """The configuration as config.yaml keeps it: resume_from applies to the start it was given to, so a restart
    of the same run (a requeue, a rerun of the job script) continues from its newest checkpoint, never going back
    to a chosen older one or starting over again."""
    return dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, resume_from="latest"))


def read_run_config(folder: Path) -> RunConfig:
    """What a worker trains with: the pending configuration of a resume when there is one, else config.yaml."""
    pending = Path(folder) / PENDING_CONFIG
    return read_config(folder, pending.name) if pending.is_file() else read_config(folder)


def promote_pending_config(folder: Path, cfg: RunConfig) -> bool:
    """The resumed run has loaded its checkpoint: its configuration becomes the folder's (one rename, so
    config.yaml is the old file or the new one, never a mix). False when there was nothing pending."""
    from launcher.config.autotrain import training_params

    pending = Path(folder) / PENDING_CONFIG
    if not pending.is_file():
        return False
    write_config(Path(folder), continuing(cfg), PENDING_CONFIG)  # a crash before the rename still continues
    os.replace(pending, Path(folder) / "config.yaml")
    write_json(Path(folder) / "training_params.json", training_params(cfg))
    return True


def drop_pending_config(folder: Path) -> bool:
    """A resume that failed before it resumed: forget its configuration, so the folder is as it was."""
    pending = Path(folder) / PENDING_CONFIG
    if not pending.is_file():
        return False
    pending.unlink()
    return True


def resume_checkpoint(path: Path, choice: str) -> Path | None:
    """The checkpoint a worker resumes from: `training.resume_from` read against the folder (None: start fresh).
    `plan` has checked that a named one exists; one gone since is an error, never a silent fresh start."""
    if choice == "none":
        return None
    if choice == "latest":
        return latest_checkpoint(path)
    found, problem = chosen_checkpoint(Path(path), choice)
    if problem:
        raise FileNotFoundError(problem)
    return found


def write_yaml(target: Path, data: dict) -> None:
    atomic.write_text(target, yaml.safe_dump(data, sort_keys=False))


def write_json(target: Path, data: dict) -> None:
    atomic.write_text(target, json.dumps(data, indent=2, default=str))


def model_source(run_dir: Path) -> Path | None:
    """Where a run's weights and tokenizer are: the folder itself when it holds a final model or adapter, else its
    latest complete checkpoint; None when it holds neither."""
    if any((run_dir / name).is_file() for name in ("adapter_config.json", "config.json")):
        return run_dir
    return latest_checkpoint(run_dir)


def latest_checkpoint(path: Path) -> Path | None:
    """The newest COMPLETE checkpoint. Checkpoints are written as `tmp-checkpoint-N` and renamed when every rank
    has written its files (launcher.checkpointing), so a `checkpoint-N` is complete; trainer_state.json (written
    last) is still required, for run folders from before that."""
    done = complete_checkpoints(path)
    return done[-1] if done else None
