"""The one resolution pass: every `auto` of a configuration becomes concrete for the machine it runs on, in
this order (each step may read what the steps before it decided):

  0. method defaults      trainer.beta / loss_type null -> the method's (0.1 / sigmoid for the preference
                          methods, 0 / dapo for grpo, trl's 0.05 for rloo, 1 = reverse KL for distill);
                          trainer.cpo_alpha null -> 1 for cpo, 0 for simpo; online methods:
                          data.max_completion_length null -> 256 generated tokens
  1. precision            auto -> bf16 / fp16 on GPUs, fp32 on CPU; bf16 without support -> fp16; the base
                          weights' dtype auto -> bf16 for LoRA computing in bf16, else fp32
  2. attention            auto -> flash_attention_2 (GPU + flash-attn) or sdpa; an impossible choice -> sdpa
  3. gradient checkpointing  auto -> on with a GPU, off on CPU; Liger kernels auto -> on with a GPU and
                          liger-kernel installed; torch.compile as asked (each stated, with what a GPU would get)
  4. block size           -1 -> min(1024, model max length, the model's positions)
  5. chat template        Alpaca rows under `none` -> alpaca
     packing              for the methods that pack (the method table's `packs`): data.chunk_size null -> block_size,
                          the one length of a packed row, and how the rows are packed
     streaming            data.streaming: only for the methods that stream (the method table's `streams`), with
                          training.max_steps (a stream has no known length), one source, no wrapped packing
  6. processes            num_processes null -> one per GPU (one without GPUs); on Slurm num_nodes = cluster.nodes
                          (from the allocation in a job's batch step), and cores and memory per node;
                          data.num_proc null -> the cores given to the job (at least ROWS_PER_TOKENISER rows
                          each), or left to each Slurm job's own allocation when planned for a cluster
  7. backend              auto -> none / DDP / ZeRO-2 / FSDP / ZeRO-3 / ZeRO-3 + offload / FSDP + offload, from
                          the memory estimate (ZeRO first at equal communication when deepspeed is installed;
                          FSDP where only it fits, or without deepspeed)
  8. accumulation         from training.global_batch_size and the world size, when given
  9. schedule             logging.steps -1 -> about 25 logs over the planned optimizer steps (from the training
                          rows, the batch, the accumulation and the world size)
 10. online sampling      grpo/rloo/distill: the rounds of generation (whole groups per process), prompt +
                          completion within the model's positions, the reference model, vLLM only on GPUs
 11. adapter              what the LoRA variants make of the adapter; target and saved module names checked
                          against the model's skeleton

Each decision is returned as a note that `plan` prints: nothing changes silently. Afterwards the configuration
is the one source of truth: the launch, the workers and the report only read it.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from launcher.config.errors import Problem
from launcher.config.schema import RunConfig
from launcher.config.validate import effective_block_size
from launcher.distributed import memory
from launcher.distributed.backends import world_size
from launcher.hardware import (
    CORES_FOR_TOKENISERS, ROWS_PER_TOKENISER, Hardware, cores_given, tokenising_processes,
)
from launcher.methods import METHODS


@dataclass
class Resolution:
    notes: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    backend_reason: str = "chosen in the configuration"
    estimate: memory.Estimate | None = None
    """Per-GPU memory estimate of the chosen layout (None when the model's config.json is not at hand)."""
    estimate_missing: str = ""
    """Why there is no estimate."""
    hidden_size: int | None = None
    """The model's hidden size (sizes DeepSpeed's communication buckets)."""
    shape: memory.ModelShape | None = None
    """The model's shape, counted from its config.json (None without one)."""


def resolve(cfg: RunConfig, hw: Hardware, data_format: str | None = None, train_rows: int | None = None) -> Resolution:
    """Fill in every `auto` of cfg in place, in the order of the module docstring. `train_rows`: the training
    rows the data check counted (the schedule's logging cadence is planned from them)."""
    out = Resolution()
    _method_defaults(cfg, out)
    _precision(cfg, hw, out)
    _weights_dtype(cfg, out)
    _attention(cfg, hw, out)
    _checkpointing(cfg, hw, out)
    _kernels(cfg, hw, out)
    _block_size(cfg, out)
    _template(cfg, data_format, out)
    _packing(cfg, hw, out)
    _streaming(cfg, out)
    _processes(cfg, hw, out)
    _tokenisers(cfg, train_rows, out)
    _backend(cfg, hw, out)
    _accumulation(cfg, out)
    _schedule(cfg, train_rows, out)
    _online(cfg, hw, out)
    _adapter(cfg, hw, out)
    _eval(cfg, out)
    if cfg.training.deterministic:
        out.notes.append("reproducibility: deterministic kernels; " + (
            "on CPU two runs of this configuration, and a run stopped and resumed, end with identical weights"
            if hw.gpus == 0 else "on GPUs runs repeat bit for bit on the same machine, GPU model, software stack and "
            "world size (slower kernels; an operation without a deterministic one is an error)"))
    t = cfg.training
    if t.eval_strategy == "steps" and t.eval_steps is None:
        t.eval_steps = t.save_steps
        out.notes.append(f"evaluation: every {t.save_steps} steps (training.eval_steps null -> training.save_steps; "
                         "set training.eval_steps to evaluate more or less often)")
    if cfg.logging.report_to == "wandb" and not os.environ.get("WANDB_API_KEY") and not os.environ.get("WANDB_MODE"):
        out.notes.append("logging: wandb runs offline (no WANDB_API_KEY); upload later with `wandb sync <run>/wandb`")
    return out


# null trainer.beta / loss_type per method: AutoTrain's dpo_beta default for the preference methods, trl's own
# defaults for the online ones (GRPOConfig: beta 0, loss dapo; RLOOConfig: beta 0.05; DistillationConfig: beta 1).
_BETA = {"dpo": 0.1, "orpo": 0.1, "cpo": 0.1, "simpo": 0.1, "kto": 0.1, "grpo": 0.0, "rloo": 0.05, "distill": 1.0}
_LOSS = {"dpo": "sigmoid", "grpo": "dapo"}
# null trainer.cpo_alpha: CPO's paper weighs its SFT term on the chosen answer 1.0; SimPO has none (a cpo_alpha
# above 0 makes it CPO-SimPO).
_CPO_ALPHA = {"cpo": 1.0, "simpo": 0.0}
GENERATED_TOKENS = 256
"""An online method's completion length when data.max_completion_length is null."""


def _method_defaults(cfg: RunConfig, out: Resolution) -> None:
    t, name = cfg.trainer, cfg.trainer.name
    if t.beta is None and name in _BETA:
        t.beta = _BETA[name]
        if METHODS[name].online:
            meaning = ("the divergence is reverse KL, on-policy distillation's" if name == "distill" else
                       "no KL penalty and no reference model loaded" if t.beta == 0 else
                       "a KL penalty to a frozen reference model")
            out.notes.append(f"{name}: trainer.beta null -> {t.beta:g} ({meaning})")
    if t.loss_type is None and name in _LOSS:
        t.loss_type = _LOSS[name]
        if name == "grpo":
            out.notes.append("grpo: trainer.loss_type null -> dapo (token losses averaged over the global batch's "
                             "active tokens: no length bias)")
    if t.cpo_alpha is None and name in _CPO_ALPHA:
        t.cpo_alpha = _CPO_ALPHA[name]
        out.notes.append(f"{name}: trainer.cpo_alpha null -> {t.cpo_alpha:g} (" + (
            "the SFT loss on each chosen answer, weighted 1, beside the preference loss" if t.cpo_alpha else
            "no SFT term; above 0 it adds the SFT loss on the chosen answers: CPO-SimPO") + ")")
    if METHODS[name].online and cfg.data.max_completion_length is None:
        cfg.data.max_completion_length = GENERATED_TOKENS
        out.notes.append(f"{name}: data.max_completion_length null -> {GENERATED_TOKENS} generated tokens at most")


def _precision(cfg: RunConfig, hw: Hardware, out: Resolution) -> None:
    mp = cfg.precision.mixed_precision
    if hw.gpus == 0:
        if mp in ("bf16", "fp16"):
            out.notes.append(f"precision: {mp} needs a GPU and this machine has none, so the run uses fp32")
        elif mp == "auto":
            out.notes.append("precision: auto -> fp32 (no GPU)")
        cfg.precision.mixed_precision = "fp32"
    elif mp == "auto":
        cfg.precision.mixed_precision = "bf16" if hw.bf16 else "fp16"
        out.notes.append(f"precision: auto -> {cfg.precision.mixed_precision} ({hw.gpu_name})")
    elif mp == "bf16" and not hw.bf16:
        cfg.precision.mixed_precision = "fp16"
        out.notes.append(f"precision: bf16 is not supported by {hw.gpu_name}, so the run uses fp16")


def automatic_weights_dtype(cfg: RunConfig) -> str:
    """precision.weights_dtype auto: bf16 for a LoRA run computing in bf16, else fp32."""
    return "bf16" if cfg.peft.enabled and cfg.precision.mixed_precision == "bf16" else "fp32"


def _weights_dtype(cfg: RunConfig, out: Resolution) -> None:
    p, lora = cfg.precision, cfg.peft.enabled
    if p.weights_dtype == "auto":
        p.weights_dtype = automatic_weights_dtype(cfg)
        why = ("LoRA's frozen base in the compute dtype: half the memory" if p.weights_dtype == "bf16" else
               "full fine-tune: fp32 master weights, the optimizer steps them" if not lora and
               p.mixed_precision != "fp32" else "the compute dtype" if p.mixed_precision == "fp32" else
               "an fp16 LoRA run keeps an fp32 base: fp16 weights overflow where bf16 ones do not")
        out.notes.append(f"weights: precision.weights_dtype auto -> {p.weights_dtype} ({why})")
    elif p.weights_dtype != "fp32" and not lora:
        out.problems.append(Problem("precision.weights_dtype", (
            f"{p.weights_dtype} weights are for LoRA's frozen base: a full fine-tune keeps fp32 master weights "
            f"(precision.mixed_precision={p.mixed_precision} computes in half precision): set it to auto or fp32, "
            "or peft.enabled=true")))


def _attention(cfg: RunConfig, hw: Hardware, out: Resolution) -> None:
    attn = cfg.model.attn_implementation
    flash_ok = hw.gpus > 0 and hw.flash_attn
    if attn == "auto":
        cfg.model.attn_implementation = "flash_attention_2" if flash_ok else "sdpa"
        why = "flash-attn installed, GPU present" if flash_ok else (
            "no GPU; on a GPU with flash-attn installed: flash_attention_2" if hw.gpus == 0
            else "flash-attn not installed: `pip install flash-attn` for flash_attention_2")
        out.notes.append(f"attention: auto -> {cfg.model.attn_implementation} ({why})")
    elif attn == "flash_attention_2" and not flash_ok:
        cfg.model.attn_implementation = "sdpa"
        why = "no GPU" if hw.gpus == 0 else "the flash-attn package is not installed"
        out.notes.append(f"attention: flash_attention_2 asked for, but {why}: using sdpa")


def _checkpointing(cfg: RunConfig, hw: Hardware, out: Resolution) -> None:
    if cfg.training.gradient_checkpointing == "auto":
        cfg.training.gradient_checkpointing = hw.gpus > 0
        out.notes.append(f"gradient checkpointing: auto -> {'on' if hw.gpus else 'off (CPU: it only costs time)'}")


def _kernels(cfg: RunConfig, hw: Hardware, out: Resolution) -> None:
    m = cfg.model
    if m.liger_kernel == "auto" or (m.liger_kernel is True and hw.gpus == 0):
        asked, m.liger_kernel = m.liger_kernel, hw.gpus > 0 and hw.liger
        why = ("GPU present, liger-kernel installed" if m.liger_kernel else
               "no GPU: Liger's kernels are Triton, GPU only; on a GPU with liger-kernel installed auto turns them on"
               if hw.gpus == 0 else "liger-kernel not installed: `pip install liger-kernel` for fused norm, RoPE, "
               "SwiGLU and a cross-entropy without the full logits")
        out.notes.append(f"kernels: Liger {asked} -> {'on' if m.liger_kernel else 'off'} ({why})")
    elif m.liger_kernel is True and not hw.liger:
        out.problems.append(Problem("model.liger_kernel", "is true but the liger-kernel package is not installed: "
                                    "`pip install liger-kernel`, or set model.liger_kernel=auto"))
    if m.compile:
        out.notes.append("compile: torch.compile on: the first step compiles (minutes), later steps run faster"
                         + ("" if cfg.data.packing else "; without data.packing every new sequence length "
                            "recompiles"))
    elif hw.gpus:
        out.notes.append("compile: off (model.compile=true compiles the model: faster steps after a first slow one)")


def model_positions(cfg: RunConfig) -> int | None:
    """max_position_embeddings of a local model folder (read from config.json; no weights are touched)."""
    config = Path(cfg.model.name_or_path).expanduser() / "config.json"
    if cfg.model.gguf_file or not config.is_file():
        return None
    value = json.loads(config.read_text()).get("max_position_embeddings")
    return value if isinstance(value, int) else None


def _block_size(cfg: RunConfig, out: Resolution) -> None:
    positions = model_positions(cfg)
    if cfg.data.block_size == -1:
        cfg.data.block_size = min(effective_block_size(cfg), positions or 1024)
        out.notes.append(f"block_size: -1 -> {cfg.data.block_size} (min(1024, model max length"
                         f"{', the model positions' if positions else ''}))")
    elif positions and cfg.data.block_size > positions:
        out.problems.append(Problem("data.block_size", f"{cfg.data.block_size} exceeds the {positions} positions "
                                    "the model was built for (max_position_embeddings in its config.json)"))


def _template(cfg: RunConfig, data_format: str | None, out: Resolution) -> None:
    from launcher.data.formats import effective_template  # the rule, where the data check also reads it

    template = effective_template(cfg, data_format)
    if template != cfg.data.chat_template:
        cfg.data.chat_template = template
        out.notes.append("data: Alpaca rows with chat_template none are rendered with the alpaca template")


def _packing(cfg: RunConfig, hw: Hardware, out: Resolution) -> None:
    d, method = cfg.data, METHODS[cfg.trainer.name]
    if not d.packing or not method.packs:
        return
    if d.chunk_size is None:
        d.chunk_size = d.block_size
    length = d.chunk_size
    if d.wrap_packed_sequences and "data.wrap_packed_sequences" not in method.reads:
        out.problems.append(Problem("data.wrap_packed_sequences", (
            f"{cfg.trainer.name} scores whole sequences (a log-probability or reward per answer), which wrapping "
            "would cut across rows: leave it false (best-fit packing keeps each example whole)")))
        return
    if d.wrap_packed_sequences:
        out.notes.append(f"data: packing (wrapped): all samples are concatenated and cut into blocks of {length} "
                         "tokens; every block is full, but samples are split across blocks and attend to their "
                         "neighbours")
    else:
        kernel = ("flash-attention's variable-length kernel runs each sample on its own (no L x L mask)"
                  if cfg.model.attn_implementation == "flash_attention_2" else
                  _packed_sdpa(hw, cfg.precision.mixed_precision) if cfg.model.attn_implementation == "sdpa" else
                  f"{cfg.model.attn_implementation} gets a block-diagonal L x L mask built from them")
        what = ("the chosen and rejected sequences (prompt + answer each) of several pairs, each pair's two in one "
                "row," if method.pairs else "the prompt + completion sequences of several examples (and their KL "
                "sequences)" if cfg.trainer.name == "kto" else "samples")
        out.notes.append(f"data: packing: {what} are packed best-fit into sequences of up to {length} tokens; "
                         f"position ids restart at each sequence, so none attends to another: {kernel}; "
                         "padding-free, no pad tokens computed")


def _packed_sdpa(hw: Hardware, precision: str) -> str:
    """How sdpa attends packed samples (launcher/attention.py chooses per batch, by the tensors' device and dtype):
    without flash-attn, a GPU still gets a variable-length kernel, torch's own."""
    per_sample = ("sdpa runs each sample on its own, split at the sample boundaries (launcher/attention.py), as "
                  "flash_attention_2's variable-length kernel does")
    if not hw.gpus:
        return f"{per_sample} (on CUDA: torch's variable-length flash attention, torch.nn.attention.varlen)"
    if precision == "fp32":
        return f"{per_sample} (torch's variable-length flash attention computes in fp16/bf16 only)"
    return ("torch's variable-length flash attention (torch.nn.attention.varlen; flash-attn is not installed) runs "
            "each sample on its own, the whole row in one call, split at the sample boundaries "
            "(launcher/attention.py); where it cannot (torch before 2.10, attention dropout, head dims over 256) "
            "sdpa runs each sample on its own")


def _streaming(cfg: RunConfig, out: Resolution) -> None:
    d, name = cfg.data, cfg.trainer.name
    if not d.streaming:
        if d.shuffle_window:
            out.notes.append("data.shuffle_window applies to data.streaming only: data read whole is shuffled by the "
                             "trainer every epoch")
        return
    streamers = [m.name for m in METHODS.values() if m.streams]
    if not METHODS[name].streams:
        out.problems.append(Problem("data.streaming", (
            f"the {name} trainer reads its data whole (trl prepares it up front); streaming is for "
            f"{', '.join(streamers)}: set data.streaming=false, or trainer={streamers[0]}")))
        return
    if cfg.training.max_steps <= 0:
        out.problems.append(Problem("training.max_steps", (
            "data.streaming reads the data as it trains, so the number of rows, and with it the length of an "
            "epoch, the learning-rate schedule and the end of training, is unknown up front: set "
            "training.max_steps (e.g. training.max_steps=1000), or data.streaming=false")))
    if d.packing and d.wrap_packed_sequences:
        out.problems.append(Problem("data.wrap_packed_sequences", (
            "with data.streaming the samples are packed best-fit over data.packing_buffer samples; wrapping is "
            "for data prepared whole: set data.wrap_packed_sequences=false")))
    if cfg.cluster.preprocess_job:
        out.problems.append(Problem("cluster.preprocess_job", (
            "with data.streaming the training job tokenises the stream as it trains, so there is nothing to prepare "
            "up front: set cluster.preprocess_job=false")))
    if d.packing_buffer < 1:
        out.problems.append(Problem("data.packing_buffer", f"must be 1 or more samples, got {d.packing_buffer}"))
    if d.shuffle_window < 0:
        out.problems.append(Problem("data.shuffle_window", f"must be 0 (file order) or a number of rows, got "
                                                           f"{d.shuffle_window}"))
    if out.problems:
        return
    how = (f"packed best-fit over buffers of {d.packing_buffer} samples" if name == "sft" and d.packing else
           f"concatenated and cut into blocks of {d.block_size} tokens" if name == "default" else "one per row")
    order = (f"shuffled within windows of {d.shuffle_window} rows (seed {cfg.training.seed})" if d.shuffle_window > 1
             else "in file order")
    out.notes.append(f"data: streaming: rows are read ({order}), tokenised and {how} as training goes, each process "
                     f"reading its own rows; training stops after training.max_steps={cfg.training.max_steps} "
                     "steps, and each checkpoint holds the stream's position so a resume continues exactly")


def _processes(cfg: RunConfig, hw: Hardware, out: Resolution) -> None:
    d, c = cfg.distributed, cfg.cluster
    if c.kind == "slurm":
        from launcher.cluster import resources

        if resources.in_batch_step():  # `sbatch slurm/train.sbatch`: the allocation decides
            from launcher.cluster import script

            out.notes += resources.from_allocation(c, server_nodes=script.vllm_server_nodes(cfg))
        d.num_nodes = c.nodes
    if d.num_processes is None:
        d.num_processes = max(hw.gpus, 1)
    if c.kind == "slurm" and not resources.in_batch_step():
        nodes = resources.describe_nodes(c.partition)
        out.notes += resources.gpu_request_notes(c, nodes) + resources.default_resources(c, d.num_processes, nodes)


def _tokenisers(cfg: RunConfig, train_rows: int | None, out: Resolution) -> None:
    """data.num_proc: decided here for this machine; a run planned for Slurm keeps null, so the preparation job
    and the training job each count the cores of their own allocation (cluster.preprocess_cpus for the first)."""
    d = cfg.data
    if d.streaming and d.num_proc is None:
        return  # a stream is tokenised inside the training process, as it trains (launcher/data/streaming.py)
    if d.num_proc is not None:
        if d.num_proc < 1:
            out.problems.append(Problem("data.num_proc", f"must be 1 or more processes, got {d.num_proc} (null = "
                                                         "the cores given to the job)"))
        return
    if cfg.cluster.kind == "slurm":
        from launcher.cluster import resources

        if not resources.in_batch_step():
            out.notes.append("data: num_proc null: the data is tokenised by as many processes as each Slurm job "
                             f"has cores (the preparation job's cluster.preprocess_cpus={cfg.cluster.preprocess_cpus})")
            return
    cores = cores_given()
    d.num_proc = tokenising_processes(None, train_rows)
    if cores < CORES_FOR_TOKENISERS:
        why = (f"{cores} CPU core(s) given to this job: one process, whose tokenizer already encodes on every core; "
               f"processes pay from {CORES_FOR_TOKENISERS} cores")
    elif train_rows is None:
        why = f"the {cores} CPU core(s) given to this job"
    else:
        why = (f"{train_rows} training rows over the {cores} CPU core(s) given to this job, at least "
               f"{ROWS_PER_TOKENISER} rows per process")
    out.notes.append(f"data: num_proc null -> {d.num_proc} tokenising process(es) ({why})")


def _backend(cfg: RunConfig, hw: Hardware, out: Resolution) -> None:
    d = cfg.distributed
    world = world_size(cfg)
    shape, out.estimate_missing = memory.model_shape(cfg)
    out.hidden_size = shape.hidden if shape else None
    out.shape = shape
    gpu_gib = hw.gpu_memory_gib if hw.gpus else None
    if d.backend == "auto":
        layout, out.backend_reason, out.estimate = memory.choose(cfg, shape, out.estimate_missing, world, gpu_gib)
        layout.apply(d)
    else:
        layout = memory.Layout.of(d)
        out.estimate = memory.estimate(cfg, shape, layout, world) if shape else None
        if out.estimate is not None and out.estimate.fits(gpu_gib) is False:
            out.notes.append(f"memory: warning: {layout.label} needs {out.estimate.describe()}, more than 90% of "
                             f"the {hw.gpu_memory_gib:g} GiB per GPU; distributed=auto picks the first layout "
                             "that fits")
    if out.estimate is None and world > 1:
        out.notes.append(f"memory: no estimate ({out.estimate_missing})")


def _accumulation(cfg: RunConfig, out: Resolution) -> None:
    """The hosted-API batch form: a global batch over all processes fixes the accumulation steps."""
    t = cfg.training
    if t.global_batch_size is None:
        return
    world = world_size(cfg)
    per_pass = t.batch_size * world
    if t.global_batch_size < per_pass or t.global_batch_size % per_pass:
        out.problems.append(Problem("training.global_batch_size / training.batch_size", (
            f"{t.global_batch_size} is not a multiple of batch_size {t.batch_size} x world size "
            f"{world} = {per_pass}: choose a global batch of k x {per_pass}")))
        return
    t.gradient_accumulation = t.global_batch_size // per_pass
    out.notes.append(f"batch: global {t.global_batch_size} = {t.batch_size} per device x {world} "
                     f"process(es) x {t.gradient_accumulation} accumulation steps")


LOGS_PER_RUN = 25
"""logging.steps -1 (AutoTrain's automatic): about this many logs over a run, every step for short runs."""


def planned_steps(cfg: RunConfig, train_rows: int, world_size: int) -> int:
    """Optimizer steps of the run: max_steps, or the epochs over `train_rows` at the global batch."""
    t = cfg.training
    if t.max_steps > 0:
        return t.max_steps
    per_step = t.batch_size * t.gradient_accumulation * world_size
    return max(1, math.ceil(train_rows / per_step)) * t.epochs


def _schedule(cfg: RunConfig, train_rows: int | None, out: Resolution) -> None:
    """The logging cadence, from the planned optimizer steps (the workers read it, never decide it)."""
    if cfg.logging.steps > 0:
        return
    if train_rows is None and cfg.training.max_steps <= 0:
        out.notes.append("logging: steps -1 stays automatic: the data is not at hand here, so the workers count "
                         f"its rows (about {LOGS_PER_RUN} logs over the run)")
        return
    steps = planned_steps(cfg, train_rows or 0, world_size(cfg))
    cfg.logging.steps = max(1, steps // LOGS_PER_RUN)
    out.notes.append(f"logging: steps -1 -> every {cfg.logging.steps} of about {steps} optimizer step(s)")


def _online(cfg: RunConfig, hw: Hardware, out: Resolution) -> None:
    """What trl's online trainers check only once the model is loaded, or never: a round of generation holds whole
    groups of completions on each process, prompt and completion fit the model, vLLM runs on GPUs."""
    t, name = cfg.trainer, cfg.trainer.name
    if not METHODS[name].online:
        return
    _absolute_references(cfg)
    if t.generation == "vllm" and hw.gpus == 0:
        out.problems.append(Problem("trainer.generation", "vllm generates with CUDA kernels and this machine has no "
                                    "GPU: use trainer.generation=transformers (the default)"))
    elif t.generation == "vllm" and not hw.vllm and cfg.cluster.kind == "slurm" and t.vllm_mode == "server":
        out.notes.append("generation: vllm is not installed here; the job's nodes need it (pip install "
                         "tunelaunch[vllm] in the environment they run)")
    elif t.generation == "vllm" and not hw.vllm:
        out.problems.append(Problem("trainer.generation", "vllm is not installed: pip install tunelaunch[vllm] "
                                    "(or trainer.generation=transformers)"))
    longest = cfg.data.max_prompt_length + cfg.data.max_completion_length
    positions = model_positions(cfg)
    if positions and longest > positions:
        out.problems.append(Problem("data.max_prompt_length / data.max_completion_length", (
            f"{cfg.data.max_prompt_length} + {cfg.data.max_completion_length} = {longest} tokens exceed the "
            f"{positions} positions of {cfg.model.name_or_path}: lower one of them")))
    if name == "distill":
        return
    world = world_size(cfg)
    rounds = t.steps_per_generation or cfg.training.gradient_accumulation
    per_round = cfg.training.batch_size * world * rounds
    if per_round % t.num_generations:
        out.problems.append(Problem("trainer.num_generations / training.batch_size", (
            f"a round of generation makes {world} process(es) x batch_size {cfg.training.batch_size} x "
            f"{'steps_per_generation' if t.steps_per_generation else 'gradient_accumulation'} {rounds} = "
            f"{per_round} completions, which does not divide into groups of num_generations={t.num_generations} "
            f"(each prompt's group is scored together): make that product a multiple of {t.num_generations}, "
            f"e.g. training.batch_size={t.num_generations} or trainer.num_generations="
            f"{_largest_divisor(per_round, t.num_generations)}")))
        return
    reference = ("no reference model (beta 0)" if not t.beta else
                 "reference: the base with the adapter switched off" if cfg.peft.enabled else
                 "reference: a frozen copy of the base model (counted in the memory estimate)")
    out.notes.append(f"{name}: each round samples {per_round // t.num_generations} prompt(s) x "
                     f"{t.num_generations} completions of up to {cfg.data.max_completion_length} tokens "
                     f"(sampled with {t.generation}), then {rounds} micro-step(s) learn from them; {reference}")


def _absolute_references(cfg: RunConfig) -> None:
    """Files the rewards, tools, schema and teacher name relative to the working folder, made absolute: the workers
    (a Slurm job's nodes, a resume from elsewhere) read them from the run's config.yaml wherever they start."""
    t = cfg.trainer

    def absolute(entry: str) -> str:
        if entry.startswith("run:"):
            return "run:" + str(Path(entry[4:]).expanduser().resolve())
        file, colon, function = entry.rpartition(":")
        return f"{Path(file).expanduser().resolve()}:{function}" if colon and file.endswith(".py") else entry

    t.rewards = [absolute(e) for e in t.rewards]
    t.tools = [absolute(e) for e in t.tools]
    if t.json_schema:
        t.json_schema = str(Path(t.json_schema).expanduser().resolve())
    if t.teacher and Path(t.teacher).expanduser().exists():
        t.teacher = str(Path(t.teacher).expanduser().resolve())


def _eval(cfg: RunConfig, out: Resolution) -> None:
    """eval.tasks: task files made absolute (the scoring job reads the run's config.yaml from anywhere), the chat
    template decision, and where the scoring runs."""
    e = cfg.eval
    if not e.tasks:
        return
    e.tasks = [str(Path(t).expanduser().resolve()) if t.endswith((".yaml", ".yml")) else t for t in e.tasks]
    chat = cfg.data.chat_template not in (None, "none")
    if e.apply_chat_template is None:
        e.apply_chat_template = chat
        why = f"trained under the {cfg.data.chat_template} template" if chat else "trained on plain text"
        out.notes.append(f"eval: apply_chat_template null -> {str(chat).lower()} ({why})")
    names = ", ".join(Path(t).stem if t.endswith((".yaml", ".yml")) else t for t in e.tasks)
    where = ("in a one-GPU Slurm job (eval.sbatch) that job.sbatch submits with --dependency=afterok once the run "
             "finished, so the training allocation is not held" if cfg.cluster.kind == "slurm" else
             "by rank 0 alone when training ends (lm-eval's one-process path; the other ranks leave)")
    limit = f", the first {e.limit} examples of each" if e.limit else ""
    out.notes.append(f"eval: {names}{limit}, {where}; scores in <run>/eval/, `tunelaunch runs` shows them")


def _largest_divisor(total: int, below: int) -> int:
    return max((g for g in range(2, below + 1) if total % g == 0), default=2)


def did_you_mean(name: str, known) -> str:
    """'; did you mean X?' for the closest of `known`, or nothing when none is close."""
    import difflib

    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def _check_target_names(cfg: RunConfig, out: Resolution) -> None:
    """Each peft.target_modules name must match a module of the model, or peft fails only once the weights are
    loaded (minutes into a job). The names come from the model skeleton memory.model_shape built from the local
    config.json; without one they are checked when the model loads, and the note says so."""
    targets = cfg.peft.target_list()
    if targets == "all-linear":
        return
    if out.shape is None:
        out.notes.append(f"peft: target_modules {', '.join(targets)} will be checked against the model's modules "
                         f"when it loads ({out.estimate_missing})")
        return
    linear = ", ".join(out.shape.linear_names)
    for name in out.shape.unmatched_targets:
        out.problems.append(Problem("peft.target_modules", (
            f"'{name}' matches no module of {cfg.model.name_or_path}{did_you_mean(name, out.shape.linear_names)} "
            f"(a name matches the modules whose dotted name ends with .{name}; the model's linear layers: {linear}; "
            "or all-linear)")))


def _adapter(cfg: RunConfig, hw: Hardware, out: Resolution) -> None:
    """What the LoRA variants make of the adapter, said once; what cannot run on this machine, refused."""
    p = cfg.peft
    if not p.enabled:
        return
    if p.use_dora and cfg.quantization.mode == "int8" and hw.gpus == 0:
        out.problems.append(Problem("peft.use_dora / quantization.mode", (
            "DoRA over int8 weights fails on CPU from the second step (bitsandbytes' CPU int8 matmul loses the "
            "weight's statistics once DoRA has dequantized it): use quantization.mode=int4 or none, or a GPU")))
    # the shape is the causal LM's: a score head (reward) is not in it, and peft trains it in full anyway
    head = ("score", "classifier") if METHODS[cfg.trainer.name].score_head else ()
    for name in out.shape.unmatched_modules if out.shape is not None else ():
        if name in head:
            continue
        out.problems.append(Problem("peft.modules_to_save", (
            f"'{name}' matches no module of {cfg.model.name_or_path} (a name matches the modules whose dotted "
            f"name ends with it, e.g. lm_head or embed_tokens){did_you_mean(name, out.shape.module_names)}")))
    _check_target_names(cfg, out)
    parts = []
    if p.use_dora:
        parts.append("DoRA (a trained magnitude per output feature of each adapted layer; slower steps, more "
                     "activations)")
    if p.use_rslora:
        parts.append(f"rsLoRA (update scaled by alpha/sqrt(r) = {p.alpha / p.r ** 0.5:g} instead of alpha/r = "
                     f"{p.alpha / p.r:g})")
    if p.init != "default":
        parts.append(f"init {p.init}")
    if p.modules_to_save:
        parts.append(f"trained in full and saved with the adapter: {', '.join(p.modules_to_save)}")
    if parts:
        trained = out.estimate.details["trained_params"] if out.estimate is not None else None
        out.notes.append(f"adapter: LoRA r={p.r} with " + "; ".join(parts) + (
            f"; {trained / 1e6:.2f}M trainable parameters" if trained is not None else ""))
