"""Cross-field rules of a configuration. Each rule is a small function; `validate` runs them all and returns
every problem, so one report lists everything to fix.

A rule binds only the trainers and options that read its keys (launcher.methods says which method reads
which key): a key the run does not read is never a reason to refuse it. `unused_keys` notes the ones a user
set for nothing."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Callable, Iterator

from launcher import methods
from launcher.config.errors import Problem, did_you_mean
from launcher.config.library_names import dpo_loss_types, enum_values, grpo_loss_types
from launcher.config.schema import RunConfig
from launcher.data import formats
from launcher.data.templates import NAMES as TEMPLATE_NAMES

Rule = Callable[[RunConfig], Iterator[Problem]]
RULES: list[Rule] = []
HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


def rule(fn: Rule) -> Rule:
    RULES.append(fn)
    return fn


def validate(cfg: RunConfig) -> list[Problem]:
    return [p for check in RULES for p in check(cfg)]


def effective_block_size(cfg: RunConfig) -> int:
    """block_size -1 means automatic: the model's length, capped at 1024 (AutoTrain's choice)."""
    return cfg.data.block_size if cfg.data.block_size != -1 else min(1024, cfg.model.max_length)


@rule
def model_given(cfg):
    path = cfg.model.name_or_path
    if not path:
        yield Problem("model.name_or_path", "no base model: give a hub id (org/name) or a local folder")
        return
    local = Path(path).expanduser()
    looks_local = path.startswith((".", "/", "~")) or local.exists()
    if looks_local:
        if not local.is_dir():
            hint = " (build it with: python -m launcher.embedded smollm2)" if local.name.startswith("SmolLM2") else ""
            yield Problem("model.name_or_path", f"folder not found: {local}{hint}")
        elif cfg.model.gguf_file:
            if not (local / cfg.model.gguf_file).is_file():
                yield Problem("model.gguf_file", f"{cfg.model.gguf_file} not found in {local}")
        elif not (local / "config.json").is_file():
            yield Problem("model.name_or_path", f"{local} holds no config.json: not a transformers model folder")
    elif not HUB_ID.match(path):
        yield Problem("model.name_or_path", f"'{path}' is neither an existing folder nor a hub id (org/name)")


@rule
def lengths(cfg):
    max_len, block = cfg.model.max_length, cfg.data.block_size
    if max_len < 1:
        yield Problem("model.max_length", f"must be positive, got {max_len}")
        return
    if block != -1 and block < 1:
        yield Problem("data.block_size", f"must be a positive length or -1 (automatic), got {block}")
    if block > max_len:
        yield Problem("data.block_size / model.max_length",
                      f"block_size {block} exceeds model max length {max_len}: lower block_size "
                      f"or raise the model max length (training would error or give nan losses)")
    eff = effective_block_size(cfg)
    for name, value in (("max_prompt_length", cfg.data.max_prompt_length),
                        ("max_completion_length", cfg.data.max_completion_length)):
        if value is None or not methods.reads(cfg.trainer.name, f"data.{name}"):
            continue
        if value < 1:
            yield Problem(f"data.{name}", f"must be positive, got {value}")
        elif value > max_len:
            yield Problem(f"data.{name} / model.max_length",
                          f"{name} {value} exceeds model max length {max_len}: lower {name}")
        elif value > eff:
            yield Problem(f"data.{name} / data.block_size",
                          f"{name} {value} exceeds block_size {eff}: lower {name} or raise block_size")


@rule
def optimisation(cfg):
    t = cfg.training
    positive = {"training.lr": t.lr, "training.batch_size": t.batch_size,
                "training.gradient_accumulation": t.gradient_accumulation,
                "training.save_total_limit": t.save_total_limit, "training.save_steps": t.save_steps}
    if t.eval_steps is not None:
        positive["training.eval_steps"] = t.eval_steps
    for key, value in positive.items():
        if value <= 0:
            yield Problem(key, f"must be greater than 0, got {value}")
    if t.epochs < 1 and t.max_steps <= 0:
        yield Problem("training.epochs", f"must be at least 1 (or set training.max_steps), got {t.epochs}")
    if not 0 <= t.warmup_ratio < 1:
        yield Problem("training.warmup_ratio", f"must be in [0, 1), got {t.warmup_ratio}")
    if t.weight_decay < 0:
        yield Problem("training.weight_decay", f"must not be negative, got {t.weight_decay}")
    if t.max_grad_norm < 0:
        yield Problem("training.max_grad_norm", f"must not be negative (0 disables clipping), got {t.max_grad_norm}")
    if cfg.logging.steps == 0 or cfg.logging.steps < -1:
        yield Problem("logging.steps", f"must be positive or -1 (automatic), got {cfg.logging.steps}")
    yield from _named_choice("training.optimizer", t.optimizer, _optimizer_names())
    yield from _named_choice("training.scheduler", t.scheduler, _scheduler_names())


@rule
def adapters(cfg):
    p = cfg.peft
    if p.r < 1:
        yield Problem("peft.r", f"must be at least 1, got {p.r}")
    if p.alpha <= 0:
        yield Problem("peft.alpha", f"must be positive, got {p.alpha}")
    if not 0 <= p.dropout < 1:
        yield Problem("peft.dropout", f"must be in [0, 1), got {p.dropout}")
    if cfg.quantization.mode != "none" and not p.enabled:
        yield Problem("quantization.mode / peft.enabled",
                      f"{cfg.quantization.mode} weights cannot be fully fine-tuned: set peft.enabled=true "
                      "(QLoRA) or quantization.mode=none")
    yield from _lora_init(p.init, p.r)
    for i, name in enumerate(p.modules_to_save):
        if not isinstance(name, str) or not name.strip():
            yield Problem(f"peft.modules_to_save[{i}]", f"'{name}' is not a module name (e.g. lm_head, embed_tokens)")
    alpha = cfg.training.neftune_noise_alpha
    if alpha is not None and alpha <= 0 and methods.reads(cfg.trainer.name, "training.neftune_noise_alpha"):
        yield Problem("training.neftune_noise_alpha", f"must be positive (null turns NEFTune off), got {alpha}")


def _lora_init(init: str, r: int) -> Iterator[Problem]:
    from launcher.config.lora_inits import LORA_INITS, LORA_INITS_NOT_OFFERED

    name = str(init).lower()
    if name in LORA_INITS:
        if name == "orthogonal" and r % 2:
            yield Problem("peft.init / peft.r", f"orthogonal needs an even rank, got r={r}")
        return
    known = ", ".join(LORA_INITS)
    peft_name = "pissa_niter_<n>" if re.fullmatch(r"pissa_niter_\d+", name) else name
    if peft_name in LORA_INITS_NOT_OFFERED:
        yield Problem("peft.init", f"'{init}' is not offered: it {LORA_INITS_NOT_OFFERED[peft_name]}. Use {known}")
    else:
        hint = did_you_mean(name, [*LORA_INITS, *LORA_INITS_NOT_OFFERED])
        yield Problem("peft.init", f"unknown initialisation '{init}'.{hint} Known: {known}")


@rule
def preference_losses(cfg):
    """The preference trainers' loss settings, each checked only for the methods that read it."""
    t, reads = cfg.trainer, lambda key: methods.reads(t.name, key)
    online = methods.METHODS[t.name].online
    if reads("trainer.beta") and t.beta is not None and (t.beta < 0 if online else t.beta <= 0):
        yield Problem("trainer.beta", f"must be {'0 or more' if online else 'positive'}, got {t.beta}")
    if t.name == "distill" and t.beta is not None and t.beta > 1:
        yield Problem("trainer.beta", f"distill: the divergence's mix in [0, 1] (0 forward KL, 0.5 Jensen-Shannon, "
                      f"1 reverse KL), got {t.beta}")
    if reads("trainer.label_smoothing") and not 0 <= t.label_smoothing < 0.5:
        yield Problem("trainer.label_smoothing", f"must be in [0, 0.5), got {t.label_smoothing}")
    for key, value in (("trainer.simpo_gamma", t.simpo_gamma), ("trainer.cpo_alpha", t.cpo_alpha)):
        if reads(key) and value is not None and value < 0:
            yield Problem(key, f"must not be negative, got {value}")
    if not reads("trainer.loss_type") or t.loss_type is None:
        return
    if t.name == "grpo":
        yield from _grpo_loss(cfg)
        return
    losses = [t.loss_type] if isinstance(t.loss_type, str) else t.loss_type
    known = dpo_loss_types()
    if not losses:
        yield Problem("trainer.loss_type", f"an empty list: name at least one of {', '.join(known)}")
    for name in losses:
        if name not in known:
            yield Problem("trainer.loss_type", f"unknown DPO loss '{name}'.{did_you_mean(name, known)} "
                          f"Known: {', '.join(known)}")
    if t.loss_weights is not None and len(t.loss_weights) != len(losses):
        yield Problem("trainer.loss_weights / trainer.loss_type", (
            f"{len(t.loss_weights)} weight(s) for {len(losses)} loss(es) {losses}: give one weight per loss, or "
            "null for 1.0 each"))
    if "exo_pair" in losses and t.label_smoothing == 0:
        yield Problem("trainer.label_smoothing / trainer.loss_type",
                      "exo_pair needs label_smoothing above 0 (its paper uses 1e-3)")


def _grpo_loss(cfg) -> Iterator[Problem]:
    t = cfg.trainer
    known = grpo_loss_types()
    if not isinstance(t.loss_type, str):
        yield Problem("trainer.loss_type", f"grpo takes one loss, got the list {t.loss_type}: one of {', '.join(known)}")
    elif t.loss_type not in known:
        yield Problem("trainer.loss_type", f"unknown GRPO loss '{t.loss_type}'.{did_you_mean(t.loss_type, known)} "
                      f"Known: {', '.join(known)}")
    elif t.loss_type == "luspo" and t.importance_sampling_level != "sequence":
        yield Problem("trainer.loss_type / trainer.importance_sampling_level", "luspo is a sequence-level loss: set "
                      "trainer.importance_sampling_level=sequence")


@rule
def online_methods(cfg):
    """The sampling and policy-gradient settings of grpo, rloo and distill, each checked for the methods reading it."""
    t, reads = cfg.trainer, lambda key: methods.reads(cfg.trainer.name, key)
    if not methods.METHODS[t.name].online:
        return
    if reads("trainer.num_generations") and t.num_generations < 2:
        yield Problem("trainer.num_generations", f"needs at least 2 completions per prompt (their rewards are "
                      f"compared within the group), got {t.num_generations}")
    if t.temperature <= 0:
        yield Problem("trainer.temperature", f"must be positive (the completions are sampled), got {t.temperature}")
    if not 0 < t.top_p <= 1:
        yield Problem("trainer.top_p", f"must be in (0, 1], got {t.top_p}")
    if reads("trainer.epsilon") and t.epsilon <= 0:
        yield Problem("trainer.epsilon", f"must be positive, got {t.epsilon}")
    if reads("trainer.epsilon_high") and t.epsilon_high is not None and t.epsilon_high < t.epsilon:
        yield Problem("trainer.epsilon_high", f"{t.epsilon_high} is below trainer.epsilon={t.epsilon}: the upper clip "
                      "range is at least the lower one (DAPO's clip-higher: 0.28 over 0.2)")
    for key, value in (("trainer.num_iterations", t.num_iterations),
                       ("trainer.steps_per_generation", t.steps_per_generation)):
        if reads(key) and value is not None and value < 1:
            yield Problem(key, f"must be 1 or more, got {value}")
    if reads("trainer.num_generations") and cfg.training.auto_find_batch_size:
        yield Problem("training.auto_find_batch_size", f"{t.name} keeps each prompt's group of completions "
                      "together, which halving the batch on out-of-memory would break: set it to false and lower "
                      "training.batch_size")
    if cfg.data.max_completion_length is not None and cfg.data.max_completion_length < 1:
        yield Problem("data.max_completion_length", f"must be at least 1 token, got {cfg.data.max_completion_length}")
    if reads("logging.samples_steps") and cfg.logging.samples_steps is not None and cfg.logging.samples_steps < 0:
        yield Problem("logging.samples_steps", f"must be 0 (never) or more, got {cfg.logging.samples_steps}")
    if reads("trainer.max_tool_calls") and t.max_tool_calls is not None and t.max_tool_calls < 1:
        yield Problem("trainer.max_tool_calls", f"must be 1 or more (null = no limit), got {t.max_tool_calls}")
    if t.vllm_mode == "colocate" and not 0 < t.vllm_gpu_memory_utilization < 1:
        yield Problem("trainer.vllm_gpu_memory_utilization", f"a share of the GPU in (0, 1), got "
                      f"{t.vllm_gpu_memory_utilization}")


@rule
def unpaired_preference(cfg):
    """kto's class weights, and the device batch its KL term is estimated from."""
    t = cfg.trainer
    for key in ("trainer.desirable_weight", "trainer.undesirable_weight"):
        value = getattr(t, key.split(".")[1])
        if methods.reads(t.name, key) and value <= 0:
            yield Problem(key, f"must be positive, got {value} (to leave a class out, leave its rows out)")
    if t.name == "kto" and cfg.training.batch_size == 1:
        yield Problem("training.batch_size", (
            "kto estimates its KL term from the other completions of a device batch, so it needs a batch_size of "
            "at least 2, got 1: set training.batch_size=2 (and halve gradient_accumulation to keep the step's size)"))


@rule
def chat_template(cfg):
    name = cfg.data.chat_template
    if name not in TEMPLATE_NAMES and not Path(name).expanduser().is_file():
        yield Problem("data.chat_template",
                      f"'{name}' is neither a template name ({', '.join(TEMPLATE_NAMES)}) nor an existing Jinja file")


# Slurm's --time forms: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS
_TIME = re.compile(r"^(\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d+|\d+-\d+:\d{1,2}|\d+-\d+:\d{1,2}:\d{1,2})$")
_MEM = re.compile(r"^\d+[KMGT]?$")


@rule
def cluster(cfg):
    """Slurm settings, checked before anything is submitted (a Slurm rejection would come later, or never)."""
    c, d = cfg.cluster, cfg.distributed
    if c.kind != "slurm":
        return
    if c.nodes < 1:
        yield Problem("cluster.nodes", f"must be at least 1, got {c.nodes}")
    if c.gpus_per_node is not None and c.gpus_per_node < 0:
        yield Problem("cluster.gpus_per_node", f"must not be negative, got {c.gpus_per_node}")
    if c.time is not None and not _TIME.match(c.time):
        yield Problem("cluster.time", f"'{c.time}' is not a Slurm time limit: use minutes (90), HH:MM:SS (01:30:00), "
                      "D-HH (2-12) or D-HH:MM:SS")
    if c.mem is not None and not _MEM.match(c.mem):
        yield Problem("cluster.mem", f"'{c.mem}' is not a Slurm memory size: a number with K, M, G or T, e.g. 64G")
    if c.gpus_per_node and d.num_processes is not None and d.num_processes != c.gpus_per_node:
        yield Problem("distributed.num_processes / cluster.gpus_per_node", (
            f"{d.num_processes} processes per node but {c.gpus_per_node} GPUs requested per node: one process "
            "drives one GPU, so leave distributed.num_processes unset (it follows the GPUs) or make them equal"))
    if d.num_nodes not in (1, c.nodes):
        yield Problem("distributed.num_nodes / cluster.nodes", (
            f"distributed.num_nodes {d.num_nodes} disagrees with cluster.nodes {c.nodes}: on Slurm set only "
            "cluster.nodes"))
    for key, value, least in (("cluster.cpus_per_task", c.cpus_per_task, 1), ("cluster.cpus_per_gpu", c.cpus_per_gpu, 1),
                              ("cluster.signal_lead", c.signal_lead, 1), ("cluster.max_requeues", c.max_requeues, 0),
                              ("cluster.max_failures", c.max_failures, 0), ("cluster.preprocess_cpus", c.preprocess_cpus, 1),
                              ("cluster.array_parallelism", c.array_parallelism, 1),
                              ("distributed.timeout_minutes", d.timeout_minutes, 1)):
        if value is not None and value < least:
            yield Problem(key, f"must be at least {least}, got {value}")
    for key, value in (("cluster.mem_per_gpu", c.mem_per_gpu), ("cluster.preprocess_mem", c.preprocess_mem)):
        if value is not None and not _MEM.match(value):
            yield Problem(key, f"'{value}' is not a Slurm memory size: a number with K, M, G or T, e.g. 64G")
    if c.preprocess_time is not None and not _TIME.match(c.preprocess_time):
        yield Problem("cluster.preprocess_time", f"'{c.preprocess_time}' is not a Slurm time limit: use minutes (90), "
                      "HH:MM:SS (01:30:00), D-HH (2-12) or D-HH:MM:SS")
    for both, one, other in (("cluster.cpus_per_task / cluster.cpus_per_gpu", c.cpus_per_task, c.cpus_per_gpu),
                             ("cluster.mem / cluster.mem_per_gpu", c.mem, c.mem_per_gpu)):
        if one is not None and other is not None:
            yield Problem(both, "Slurm takes one of the two (sbatch refuses both): set only one")
    if (c.cpus_per_gpu or c.mem_per_gpu) and not (c.gpus_per_node or c.gres):
        yield Problem("cluster.cpus_per_gpu / cluster.mem_per_gpu", "per-GPU resources need GPUs: set "
                      "cluster.gpus_per_node, or use cluster.cpus_per_task / cluster.mem")
    for i, directive in enumerate(c.extra_directives):
        if not directive.startswith("-"):
            yield Problem(f"cluster.extra_directives[{i}]", f"'{directive}' is not an sbatch option (e.g. --exclusive)")
        elif "$" in directive or "`" in directive:
            yield Problem(f"cluster.extra_directives[{i}]", (
                f"'{directive}' holds a shell variable or command: Slurm does not expand them in #SBATCH lines, "
                "so write the value itself"))
        elif any(ch.isspace() for ch in directive):
            yield Problem(f"cluster.extra_directives[{i}]", f"'{directive}' holds a space, which an #SBATCH line "
                          "ends at: write the option without spaces")
    for key, value in (("cluster.partition", c.partition), ("cluster.account", c.account), ("cluster.qos", c.qos),
                       ("cluster.constraint", c.constraint), ("cluster.preprocess_partition", c.preprocess_partition),
                       ("cluster.gres", c.gres), ("cluster.exclude", c.exclude), ("cluster.nodelist", c.nodelist),
                       ("cluster.reservation", c.reservation), ("cluster.mail_type", c.mail_type),
                       ("cluster.mail_user", c.mail_user)):
        if value is not None and ("$" in value or any(ch.isspace() for ch in value)):
            yield Problem(key, f"'{value}' must be a plain name (no spaces or shell variables)")
    # The job's log path is an #SBATCH value too, and Slurm cuts an #SBATCH line at a space.
    for key, value in (("project_name", str(Path(cfg.project_name).expanduser().resolve())),
                       ("cluster.log_dir", c.log_dir)):
        if value is not None and (any(ch.isspace() for ch in value) or "$" in value):
            yield Problem(key, f"'{value}' holds a space or a `$`: the job's log file is named in an #SBATCH "
                          "--output line, which Slurm cuts at a space and does not expand; choose a path without")
    for name in c.env:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
            yield Problem(f"cluster.env.{name}", "is not an environment variable name (letters, digits, _)")
    box = c.container
    if box.kind != "none" and not box.image:
        yield Problem("cluster.container.image", f"cluster.container.kind is {box.kind}: name the image to run")
    if box.kind == "none" and box.image:
        yield Problem("cluster.container.kind", f"an image is set ({box.image}) but kind is none: set "
                      "cluster.container.kind=pyxis or apptainer")
    if box.kind != "none" and c.wrapper and re.search(r"\b(apptainer|singularity)\b", c.wrapper):
        yield Problem("cluster.wrapper / cluster.container", "two containers: keep cluster.container and drop the "
                      "wrapper")


def unused_keys(cfg: RunConfig) -> list[str]:
    """Notes for keys set away from their defaults that this run does not read."""
    from launcher.config.schema import RunConfig as Defaults

    default, notes = Defaults(), []
    for key in sorted({k for m in methods.METHODS.values() for k in m.reads}):
        section, leaf = key.split(".")
        value = getattr(getattr(cfg, section), leaf)
        if value != getattr(getattr(default, section), leaf) and not methods.reads(cfg.trainer.name, key):
            notes.append(f"{key}: {value} is not used by the {cfg.trainer.name} trainer "
                         f"(read by {', '.join(methods.readers(key))})")
    if cfg.peft.merge_adapter and not cfg.peft.enabled:
        notes.append("peft.merge_adapter: ignored, there is no adapter to merge without peft.enabled=true")
    label = cfg.data.column_mapping.label_column
    labelled = [m.name for m in methods.METHODS.values() if any(formats.BY_NAME[n].unpaired for n in m.formats)]
    if label and cfg.trainer.name not in labelled:
        notes.append(f"data.column_mapping.label_column: {label} is not used by the {cfg.trainer.name} trainer "
                     f"(read by {', '.join(labelled)})")
    if not cfg.peft.enabled:
        for leaf in ("use_dora", "use_rslora", "init", "modules_to_save"):
            value = getattr(cfg.peft, leaf)
            if value != getattr(default.peft, leaf):
                notes.append(f"peft.{leaf}: {value} is ignored: it shapes the LoRA adapter, and peft.enabled is false")
    return notes


@rule
def packages(cfg):
    """Optional packages the configuration needs, found without importing them."""
    import importlib.util

    needed = (("bitsandbytes", "quantization.mode", cfg.quantization.mode != "none"),
              ("tensorboard", "logging.report_to", cfg.logging.report_to == "tensorboard"),
              ("wandb", "logging.report_to", cfg.logging.report_to == "wandb"),
              ("mlflow", "logging.report_to", cfg.logging.report_to == "mlflow"),
              ("trackio", "logging.report_to", cfg.logging.report_to == "trackio"),
              ("lm_eval", "eval.tasks", bool(cfg.eval.tasks)),
              ("gguf", "model.gguf_file", bool(cfg.model.gguf_file)))
    for package, key, wanted in needed:
        if wanted and importlib.util.find_spec(package) is None:
            yield Problem(key, f"needs the {package} package: pip install {package}")


@rule
def eval_tasks(cfg):
    """eval.tasks exist (lm-eval's registry, did-you-mean for a misspelling) and task files parse, before training
    spends hours on a run whose scoring would fail at its end."""
    import importlib.util

    e = cfg.eval
    if not e.tasks or importlib.util.find_spec("lm_eval") is None:  # `packages` reports a missing lm-eval
        return
    if e.limit is not None and e.limit < 1:
        yield Problem("eval.limit", f"{e.limit}: a number of examples (1 or more), or null for all")
    if e.batch_size < 1:
        yield Problem("eval.batch_size", f"{e.batch_size}: 1 or more")
    from launcher.evaluation.tasks import check_tasks

    for message in check_tasks(list(e.tasks), Path.cwd()):
        yield Problem("eval.tasks", message)


def _named_choice(key: str, value: str, names: list[str]) -> Iterator[Problem]:
    if value not in names:
        hint = did_you_mean(value, names)
        yield Problem(key, f"unknown name '{value}'.{hint} Known: {', '.join(names)}")


def _optimizer_names() -> list[str]:
    return list(enum_values("transformers.training_args", "OptimizerNames"))


def _scheduler_names() -> list[str]:
    return list(enum_values("transformers.trainer_utils", "SchedulerType"))
