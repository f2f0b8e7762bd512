"""How much GPU memory one process of a run needs, and the backend `distributed.backend=auto` picks from it.

Rough but stated: the estimate is for planning (does it fit, which backend), not a promise. It counts

    per GPU = weights + gradients + optimizer states + activations + 1 GiB (CUDA context, kernels, buffers)

and a run "fits" when that is at most 90% of the GPU's memory (the rest goes to allocator fragmentation and
temporary buffers). Terms, with P all parameters, N processes, r the LoRA rank:

Full fine-tune (every parameter trained), bytes per parameter:
    DDP / one process   weights 4 (fp32 master weights; bf16/fp16 is autocast) + gradients 4 + optimizer k
    DeepSpeed, bf16/fp16: weights 2 + gradients 2 + 4/N (the fp32 copy of this rank's gradient partition that
                        the optimizer step reads) + optimizer 4 (fp32 master copy) + k
    DeepSpeed, fp32:      weights 4 + gradients 4 + optimizer k
  where k is 8 for AdamW (two fp32 moments), 2 for 8-bit Adam, 0 for adafactor/SGD (their state is small).
  AdamW in bf16 mixed precision therefore costs 16 bytes per parameter under DDP (an 8B model: 128 GB per GPU).
  ZeRO shards by N: stage 1 the optimizer states, stage 2 also the gradients, stage 3 also the weights, which
  are then gathered module by module (counted as two of the largest gathered units - a decoder block, or the
  embedding / output layer when bigger - in the compute dtype). Optimizer offload (ZeRO-Offload) moves the
  optimizer term to CPU memory and, from stage 2, the gradient partitions too (the optimizer step runs on the
  CPU); parameter offload (stage 3) moves the weights as well. With AdamW these are DeepSpeed's own figures
  (estimate_zero2/zero3_model_states_mem_needs: 2P + 18P/N for ZeRO-2, 2P with offload, 2P/N + 4 x largest
  layer for ZeRO-3 with optimizer offload, 4 x largest layer with both), except ZeRO-3 without offload, where
  DeepSpeed says 18P/N + 4 x largest layer and we count 20P/N (2 + 2 + 4 + 4 + 8, the terms above);
  tests/unit/distributed/test_memory.py compares with them.

FSDP (FSDP2's fully_shard, through accelerate: one unit per decoder layer, the embedding and the output layer
units of their own), bytes per trained parameter, all sharded by N:
    weights 4 (the fp32 master: accelerate upcasts every trained parameter to fp32 and MixedPrecisionPolicy casts
    to bf16/fp16 as it gathers) + gradients 4 (reduce-scattered into the fp32 shard) + optimizer k
  that is 16P/N with AdamW, against ZeRO-3's 20P/N: no 16-bit copy beside the fp32 master, no fp32 copy of the
  gradient partition. A frozen model (the LoRA base, a reference, a teacher) is sharded as loaded (bf16, or
  QLoRA's packed 4-bit weights, whose quant storage is the compute dtype so that FSDP can shard them). On top,
  the gathered units in the gather dtype (the compute dtype; 0.55 bytes for a 4-bit Linear):
    reshard_after_forward=true   the unit computing and the one prefetched: two decoder layers, or the embedding /
                                 output layer beside one layer when that is more
    reshard_after_forward=false  every unit stays gathered from its forward to its backward: the whole model
                                 (ZeRO-2's parameter memory, one all-gather per step fewer)
  offload=optimizer_and_params (FSDP2's CPUOffloadPolicy) keeps the shards, their gradients and the optimizer in
  CPU memory and steps there: the GPU holds the gathered units only. Not counted: a layer's unsharded gradient
  before its reduce-scatter (one layer in the compute dtype, transient). QLoRA under FSDP loads the whole
  quantized model on every GPU before sharding it (accelerate's cpu_ram_efficient_loading skips 4-bit models):
  said in the estimate's notes, not in its total.

LoRA / QLoRA: the base is frozen (weights only, no gradients or optimizer states):
    base weights   Linear layers of the blocks: 0.55 bytes (int4 NF4 with double-quantized scales), 1 (int8),
                   else the base dtype; embeddings, norms and the output layer stay in the base dtype.
                   The base dtype is bf16 (2 bytes) when the run computes in bf16, else fp32 (4) - what
                   `launcher.models` loads; DeepSpeed casts it to bf16/fp16 when those are enabled.
    adapters       r x (in + out) parameters per adapted Linear, trained like a full fine-tune of that size
                   (peft keeps them in fp32); DoRA adds a magnitude vector of the layer's output size.
    modules_to_save  peft trains a copy of each named module in full: its parameters count as trained (weights,
                   gradients, optimizer states) on top of the frozen original.
  ZeRO-3 and FSDP shard the frozen base too; stages 1 and 2 leave it whole on every GPU.

Activations, per micro-batch of b sequences of s tokens (a = 2 bytes in bf16/fp16, 4 in fp32), for a
decoder with L blocks of hidden size h, key/value width h_kv, MLP width i and vocabulary V, attention through
sdpa/flash-attention (no s x s matrix is kept):
    one block keeps   b x s x (8h + 2h_kv + 4i) x a   (norm inputs and their fp32 upcasts, q/k/v, attention
                                                      output, the four MLP intermediates)
    without checkpointing   L blocks of that
    with checkpointing      L x b x s x h x a (each block's input) + one block recomputed in the backward pass
    plus the logits          b x s x V x (a + 8)  (the logits, their fp32 copy and its gradient)
    plus, with DoRA          b x s x (sum of the adapted layers' output sizes) x a: each DoRA layer keeps its base
                             output for the magnitude's gradient (per block with checkpointing). Rough: the
                             weight-sized norm DoRA computes per layer is transient and not counted.

Frozen models beside the trained one (their weights only, counted as the LoRA base above: the run's base dtype,
quantized with QLoRA; whole on every GPU except under ZeRO-3 and FSDP, which shard them as they shard the
policy):
    reference      dpo and kto always; grpo and rloo when trainer.beta > 0 (null is their default, 0: none). With
                   LoRA and no trainer.model_ref it is the base with the adapter switched off: no extra weights.
                   Its shape is trainer.model_ref's when that is a local folder (or in the hub cache), else the
                   model's.
    teacher        distill: trainer.teacher's shape from its config.json (a local folder, a run folder holding a
                   full model, or the base named in a run folder's adapter_config.json); else the student's shape as a
                   stand-in, and the description says so.

The online methods (grpo, rloo, distill) train on sequences of s = data.max_prompt_length + max_completion_length
(null: 256) tokens (the activations above use this s instead of block_size), and add
    KV cache       with trainer.generation=transformers: 2 x L x h_kv x s x (completions generated per device per
                   round: batch_size x steps_per_generation, gradient_accumulation when null) x a
    rollout logits b x s x V x 4: the fp32 log-softmax of the rollout batch for the loss (distill: twice, the
                   teacher's too)
    vLLM           with generation=vllm, vllm_mode=colocate: vLLM takes trainer.vllm_gpu_memory_utilization of each
                   GPU (its weights and KV cache, so no KV cache term); the run fits when its total is at most 90% of
                   the rest. vllm_mode=server generates on nodes of its own: nothing on the training GPUs.

The parameter counts come from the model's config.json, instantiated on the meta device (no weights are read
or allocated), so every architecture transformers knows is counted exactly; a hub id is counted from the hub
cache when an earlier download left its config.json there (never downloaded), else has no estimate, and `plan`
says so.
"""
from __future__ import annotations


import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from launcher.config.schema import DistributedConfig, RunConfig
from launcher.distributed.backends import BACKENDS

GIB = 2**30
OVERHEAD_BYTES = 1 * GIB
USABLE_FRACTION = 0.9
INT4_BYTES = 0.55
INT8_BYTES = 1.0
ONLINE_COMPLETION_TOKENS = 256
"""data.max_completion_length null, for the online methods (the schema's default)."""


@dataclass(frozen=True)
class ModelShape:
    params: int
    """All parameters."""
    block_linear_params: int
    """Parameters of the Linear layers outside the output layer: what bitsandbytes quantizes."""
    lora_in_out: int
    """Sum of (in + out) features over the Linear layers LoRA adapts: r times this is the adapter size."""
    hidden: int
    layers: int
    intermediate: int
    kv_hidden: int
    vocab: int
    block_params: int
    """Parameters of the largest decoder block."""
    largest_module_params: int = 0
    """Parameters held directly by the largest single module (in a Llama the embedding or the output layer):
    what DeepSpeed's estimator calls the largest layer."""
    lora_out: int = 0
    """Sum of out features over the adapted Linear layers: DoRA's magnitude parameters."""
    saved_params: int = 0
    """Parameters of the modules peft.modules_to_save names (trained in full)."""
    unmatched_modules: tuple[str, ...] = ()
    """Names in peft.modules_to_save that match no module of the model."""
    unmatched_targets: tuple[str, ...] = ()
    """Names in peft.target_modules that match no module of the model (peft would fail once the model loaded)."""
    linear_names: tuple[str, ...] = ()
    """Short names of the model's Linear layers (q_proj, k_proj, ...), each once: what target_modules can name."""
    module_names: tuple[str, ...] = ()
    """Short names of all the model's modules, each once (lm_head, embed_tokens, ...): what modules_to_save names."""


@dataclass(frozen=True)
class Layout:
    """How a run spreads over processes: the candidates `auto` chooses between."""
    backend: str
    """A row of launcher.distributed.backends."""
    zero_stage: int = 0
    offload: str = "none"
    reshard: bool = True
    """FSDP's reshard_after_forward (true for every other backend, which does not read it)."""

    @property
    def zero(self) -> bool:
        return BACKENDS[self.backend].zero

    @property
    def fsdp(self) -> bool:
        return BACKENDS[self.backend].fully_shard

    @property
    def label(self) -> str:
        return BACKENDS[self.backend].label(DistributedConfig(
            backend=self.backend, zero_stage=self.zero_stage or 2, offload=self.offload,
            reshard_after_forward=self.reshard))

    def apply(self, d: DistributedConfig) -> None:
        """Make the configuration say this layout: the backend, and ZeRO's stage and offload or FSDP's resharding
        and offload where they apply."""
        d.backend = self.backend
        if self.zero:
            d.zero_stage, d.offload = self.zero_stage, self.offload
        elif self.fsdp:
            d.offload, d.reshard_after_forward = self.offload, self.reshard

    @classmethod
    def of(cls, d: DistributedConfig) -> "Layout":
        if BACKENDS[d.backend].zero:
            return cls(d.backend, d.zero_stage, d.offload)
        if BACKENDS[d.backend].fully_shard:
            # optimizer-only offload is refused with FSDP (launch.check); estimated as none meanwhile
            return cls(d.backend, offload=d.offload if d.offload == "optimizer_and_params" else "none",
                       reshard=bool(d.reshard_after_forward))
        return cls(d.backend)


@dataclass
class Estimate:
    layout: Layout
    world: int
    weights: float
    gradients: float
    optimizer: float
    activations: float
    overhead: float = OVERHEAD_BYTES
    cpu_offloaded: float = 0.0
    """Bytes per process moved to CPU memory by offload (not counted in total)."""
    details: dict = field(default_factory=dict)
    reference: float = 0.0
    """A frozen reference model's weights (dpo, kto; grpo/rloo with beta > 0), when it is a copy of its own."""
    teacher: float = 0.0
    """distill: the teacher's weights."""
    kv_cache: float = 0.0
    """Online methods generating with transformers: the KV cache of one round of generation."""
    rollout_logits: float = 0.0
    """Online methods: the fp32 log-softmax of the rollout batch."""
    vllm_share: float = 0.0
    """The share of each GPU a colocated vLLM takes (trainer.vllm_gpu_memory_utilization); not in total."""
    notes: tuple[str, ...] = ()
    """What the figures assume beyond the formulas (a stand-in shape), said with them."""

    @property
    def total(self) -> float:
        return sum(value for _, value in self.components())

    def components(self) -> list[tuple[str, float]]:
        """(label, bytes) of every term in total; the online terms only where they count."""
        extra = [("reference", self.reference), ("teacher", self.teacher), ("KV cache", self.kv_cache),
                 ("rollout logits", self.rollout_logits)]
        return [("weights", self.weights), ("gradients", self.gradients), ("optimizer", self.optimizer),
                ("activations", self.activations), *[(k, v) for k, v in extra if v], ("overhead", self.overhead)]

    @property
    def usable_fraction(self) -> float:
        """The share of a GPU the total may reach: 90%, of what a colocated vLLM leaves."""
        return USABLE_FRACTION * (1 - self.vllm_share)

    def fits(self, gpu_memory_gib: float | None) -> bool | None:
        if not gpu_memory_gib:
            return None
        return self.total <= self.usable_fraction * gpu_memory_gib * GIB

    def describe(self, per: str = "GPU") -> str:
        parts = ", ".join(f"{name} {value / GIB:.1f}" for name, value in self.components())
        off = f"; {self.cpu_offloaded / GIB:.1f} GiB offloaded to CPU" if self.cpu_offloaded else ""
        vllm = (f"; plus vLLM (colocated) {self.vllm_share:.0%} of each GPU: training must fit in "
                f"{self.usable_fraction:.0%} of it" if self.vllm_share else "")
        notes = "".join(f"; {note}" for note in self.notes)
        return f"~{self.total / GIB:.1f} GiB per {per} ({parts}){off}{vllm}{notes}"


# ---- the model's shape, from its config.json alone

def model_shape(cfg: RunConfig) -> tuple[ModelShape | None, str]:
    """The shape of the run's base model, or None with the reason there is no estimate."""
    if cfg.model.gguf_file:
        return None, "the model is a GGUF file (no config.json to count from)"
    folder = local_config_folder(cfg.model.name_or_path, cfg.model.revision)
    if folder is None:
        return None, (f"{cfg.model.name_or_path} is not a local folder with a config.json nor in the hub cache "
                      "(plan downloads nothing); download it first for an estimate")
    try:
        return cached_shape(folder, cfg.peft.target_list(), cfg.model.trust_remote_code,
                            list(cfg.peft.modules_to_save)), ""
    except Exception as err:  # an architecture transformers cannot build: say so, do not fail the plan
        return None, f"transformers could not build {folder.name} from its config.json ({type(err).__name__}: {err})"


def local_config_folder(name_or_path: str, revision: str | None = None) -> Path | None:
    """The folder holding the model's config.json on this machine: the model's own folder, or its snapshot in the
    hub cache when an earlier download left it there. Never the network: plan must answer offline and fast."""
    folder = Path(name_or_path).expanduser()
    if (folder / "config.json").is_file():
        return folder
    if folder.is_absolute() or name_or_path.startswith((".", "~")) or name_or_path.count("/") != 1:
        return None  # a path that is not there, not a hub id: nothing to look up
    try:
        from huggingface_hub import try_to_load_from_cache  # a file lookup in the cache folder, no request

        found = try_to_load_from_cache(name_or_path, "config.json", revision=revision)
    except Exception:  # a malformed id or an unreadable cache: the same as not cached
        return None
    return Path(found).parent if isinstance(found, str) else None


def target_matches(module_name: str, target: str) -> bool:
    """Whether peft adapts `module_name` for one name of a target_modules list: the name itself or a dotted suffix
    of it (peft.tuners.tuners_utils.check_target_module_exists; tests/unit/distributed/test_memory.py checks the
    two agree). Not peft's own function: importing peft costs seconds, and plan reads the names from the cache."""
    return module_name == target or module_name.endswith("." + target)


def short_names(names) -> tuple[str, ...]:
    """The last part of each dotted module name, each once, in the model's order; layer indexes left out."""
    return tuple(dict.fromkeys(n.rsplit(".", 1)[-1] for n in names if n and not n.rsplit(".", 1)[-1].isdigit()))


def cached_shape(folder: Path, target_modules, trust_remote_code: bool, modules_to_save: list[str]) -> ModelShape:
    """shape_from_config of a model folder, kept in the cache under the content it depends on: building the model
    on the meta device imports torch and transformers (seconds), and a plan is made again and again for one model."""
    import hashlib
    from importlib.metadata import version

    from launcher import atomic
    from launcher.embedded import cache_root

    code = sorted(folder.glob("*.py")) if trust_remote_code else []
    key = hashlib.sha256(json.dumps([
        (folder / "config.json").read_text(), *(f.read_text() for f in code), target_modules, trust_remote_code,
        modules_to_save, version("transformers"), Path(__file__).read_text(),
    ]).encode()).hexdigest()[:20]
    path = cache_root() / "shapes" / f"{key}.json"
    try:
        fields = json.loads(path.read_text())
        return ModelShape(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
    except (OSError, ValueError, TypeError, KeyError):
        pass
    shape = shape_from_config({}, target_modules, trust_remote_code=trust_remote_code, folder=folder,
                              modules_to_save=modules_to_save)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, json.dumps(asdict(shape)))
    return shape


def shape_from_config(config: dict, target_modules: str | list[str] = "all-linear", trust_remote_code: bool = False,
                      folder: Path | None = None, modules_to_save: list[str] = ()) -> ModelShape:
    """Instantiate the architecture on the meta device (no memory, no weights) and count."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if folder is not None:
        hf_config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    else:
        config = dict(config)
        hf_config = AutoConfig.for_model(config.pop("model_type"), **config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config, trust_remote_code=trust_remote_code)
    text = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
    output = model.get_output_embeddings()
    targets = None if target_modules == "all-linear" else target_modules
    names = [name for name, _ in model.named_modules()]
    linear_params = lora_in_out = lora_out = 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or module is output:
            continue
        linear_params += module.weight.numel()
        if targets is None or any(target_matches(name, t) for t in targets):
            lora_in_out += module.in_features + module.out_features
            lora_out += module.out_features
    # peft matches a modules_to_save name as a suffix of the module's name (peft.utils.other._set_trainable)
    saved = {name: module for name, module in model.named_modules()
             if name and any(name.endswith(key) for key in modules_to_save)}
    outermost = [n for n in saved if not any(n.startswith(other + ".") for other in saved)]
    saved_params = sum(p.numel() for n in outermost for p in saved[n].parameters())
    blocks = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == text.num_hidden_layers]
    block_params = max((sum(p.numel() for p in b.parameters()) for b in blocks[0]), default=0) if blocks else 0
    largest_module = max((sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()), default=0)
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return ModelShape(
        params=sum(p.numel() for p in model.parameters()),
        block_linear_params=linear_params,
        lora_in_out=lora_in_out,
        hidden=text.hidden_size,
        layers=text.num_hidden_layers,
        intermediate=getattr(text, "intermediate_size", None) or 4 * text.hidden_size,
        kv_hidden=(getattr(text, "num_key_value_heads", None) or heads) * head_dim,
        vocab=text.vocab_size,
        block_params=block_params,
        largest_module_params=largest_module,
        lora_out=lora_out,
        saved_params=saved_params,
        unmatched_modules=tuple(k for k in modules_to_save if not any(n.endswith(k) for n in saved)),
        unmatched_targets=tuple(t for t in targets or () if not any(target_matches(n, t) for n in names)),
        linear_names=short_names(n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)),
        module_names=short_names(names),
    )


# ---- the frozen models beside the trained one: a reference, a teacher

@dataclass(frozen=True)
class Companions:
    """The shapes of the frozen models a run holds beside the one it trains (None: it holds none)."""
    reference: ModelShape | None = None
    teacher: ModelShape | None = None
    notes: tuple[str, ...] = ()
    """Where a shape is a stand-in, and why."""


def kl_beta(cfg: RunConfig) -> float:
    """trainer.beta as grpo/rloo read it: null is resolved by launcher.resolve (to 0 for them), so 0 here too."""
    return cfg.trainer.beta or 0.0


def has_reference(cfg: RunConfig) -> bool:
    """Whether the method computes log-ratios to a frozen reference: dpo and kto always (they read
    trainer.model_ref), the policy-gradient methods (they read num_generations) only with a KL penalty."""
    from launcher.methods import reads

    name = cfg.trainer.name
    return reads(name, "trainer.model_ref") or (reads(name, "trainer.num_generations") and kl_beta(cfg) > 0)


def reference_is_a_copy(cfg: RunConfig) -> bool:
    """A reference with weights of its own: with LoRA and no model_ref the trainers switch the adapter off instead
    (launcher/trainers/dpo.py), so the reference costs nothing."""
    return has_reference(cfg) and (not cfg.peft.enabled or bool(cfg.trainer.model_ref))


def teacher_folder(cfg: RunConfig) -> Path | None:
    """The folder holding the distill teacher's config.json on this machine, or None: what launcher.rl.teacher
    makes of a local folder, run folder or adapter, else a hub id found in the local cache."""
    from launcher.rl.teacher import teacher_config_folder  # (launcher.rl imports the config layer: kept lazy)

    folder = teacher_config_folder(cfg)
    if folder is None and cfg.trainer.teacher:
        return local_config_folder(cfg.trainer.teacher)
    return folder


def _shape_at(folder: Path | None, cfg: RunConfig) -> ModelShape | None:
    """The shape of a frozen model's folder (no LoRA targets: nothing of it is trained), None when it cannot be
    built."""
    if folder is None:
        return None
    try:
        return cached_shape(folder, "all-linear", cfg.model.trust_remote_code, [])
    except Exception:  # an architecture transformers cannot build: the caller stands the student in
        return None


def companions(cfg: RunConfig, shape: ModelShape) -> Companions:
    """The reference's and the teacher's shapes; the model's own where theirs is not at hand (said in notes)."""
    reference = teacher = None
    notes = []
    if reference_is_a_copy(cfg):
        reference = shape
        if cfg.trainer.model_ref:
            reference = _shape_at(local_config_folder(cfg.trainer.model_ref), cfg)
            if reference is None:
                notes.append(f"reference counted as the model's shape ({cfg.trainer.model_ref} has no local "
                             "config.json)")
                reference = shape
    if cfg.trainer.name == "distill":
        teacher = _shape_at(teacher_folder(cfg), cfg)
        if teacher is None:
            notes.append(f"teacher counted as the student's shape ({cfg.trainer.teacher or 'no teacher'} has no "
                         "local config.json)")
            teacher = shape
    return Companions(reference, teacher, tuple(notes))


# ---- the estimate

def optimizer_state_bytes(name: str) -> float:
    """Bytes of optimizer state per trained parameter (beyond any master copy)."""
    if "8bit" in name:
        return 2.0
    if name.startswith(("adafactor", "sgd", "lomo", "adalomo")):
        return 0.0
    return 8.0  # AdamW and its variants: two fp32 moments; unknown names are assumed to be like it


def frozen_bytes(cfg: RunConfig, shape: ModelShape, sixteen_bit: bool) -> float:
    """A frozen model's weights as launcher.models loads it: the LoRA base, a reference, a teacher. In
    precision.weights_dtype (auto: bf16 with LoRA in bf16, else fp32: a full fine-tune's load keeps fp32 master
    weights), 16-bit wherever DeepSpeed casts it; QLoRA quantizes the Linear layers of the blocks."""
    mp, loaded = cfg.precision.mixed_precision, cfg.precision.weights_dtype
    if loaded == "auto":  # unresolved: what launcher.resolve.automatic_weights_dtype makes of it
        loaded = "bf16" if cfg.peft.enabled and mp == "bf16" else "fp32"
    base_dtype = 2 if loaded in ("bf16", "fp16") or sixteen_bit else 4
    quant = {"int4": INT4_BYTES, "int8": INT8_BYTES}.get(cfg.quantization.mode) if cfg.peft.enabled else None
    linear_bytes = quant if quant is not None else base_dtype
    return shape.block_linear_params * linear_bytes + (shape.params - shape.block_linear_params) * base_dtype


def fsdp_gathered(cfg: RunConfig, shape: ModelShape, gather_bytes: int, reshard: bool) -> float:
    """Bytes of the parameters FSDP holds gathered at its peak, in the gather dtype (`gather_bytes`: the compute
    dtype, MixedPrecisionPolicy's param_dtype), a QLoRA layer's 4-bit Linear weights as packed. Resharding after
    forward: the unit computing and the one prefetched - two decoder layers, or the embedding / output layer
    beside a layer when that is more (accelerate makes each of them a unit of its own). Without: every unit, held
    from its forward to its backward."""
    quant = {"int4": INT4_BYTES, "int8": INT8_BYTES}.get(cfg.quantization.mode) if cfg.peft.enabled else None
    linear = gather_bytes if quant is None else quant
    if not reshard:
        return shape.block_linear_params * linear + (shape.params - shape.block_linear_params) * gather_bytes
    # the Linear layers of one block (block_linear_params counts them over all blocks)
    layer_linear = shape.block_linear_params / max(shape.layers, 1)
    layer = layer_linear * linear + max(shape.block_params - layer_linear, 0) * gather_bytes
    return max(2 * layer, shape.largest_module_params * gather_bytes + layer)


def sequence_tokens(cfg: RunConfig) -> int:
    """Tokens of one training sequence: block_size, or an online method's prompt plus its generated completion."""
    if online(cfg):
        return cfg.data.max_prompt_length + (cfg.data.max_completion_length or ONLINE_COMPLETION_TOKENS)
    return max(cfg.data.block_size, 1)


def online(cfg: RunConfig) -> bool:
    from launcher.methods import METHODS

    return METHODS[cfg.trainer.name].online


def completions_per_round(cfg: RunConfig) -> int:
    """Completions one process generates in one round (trl's generation batch over the processes)."""
    t = cfg.training
    return t.batch_size * (cfg.trainer.steps_per_generation or t.gradient_accumulation)


def vllm_share(cfg: RunConfig) -> float:
    """The share of each training GPU vLLM takes: only when it is colocated in the training processes."""
    t = cfg.trainer
    return t.vllm_gpu_memory_utilization if online(cfg) and t.generation == "vllm" and t.vllm_mode == "colocate" \
        else 0.0


def rollout_bytes(cfg: RunConfig, shape: ModelShape, act_bytes: int) -> tuple[float, float]:
    """(KV cache, rollout logits) of an online method; zeros for the others. vLLM keeps its KV cache in its own
    share (colocate) or on its own nodes (server), so only transformers' generate puts one on the training GPU."""
    if not online(cfg):
        return 0.0, 0.0
    s = sequence_tokens(cfg)
    kv = 0.0
    if cfg.trainer.generation == "transformers":
        kv = 2 * shape.layers * shape.kv_hidden * s * completions_per_round(cfg) * act_bytes
    # distill's divergence takes the log-softmax of the teacher's logits beside the student's
    copies = 2 if cfg.trainer.name == "distill" else 1
    return kv, copies * cfg.training.batch_size * s * shape.vocab * 4


def estimate(cfg: RunConfig, shape: ModelShape, layout: Layout, world: int,
             frozen_models: Companions | None = None) -> Estimate:
    """Per-GPU bytes for a resolved config on `world` processes laid out as `layout`. `frozen_models` (the
    reference's and teacher's shapes) is looked up from cfg when not given: `choose` looks it up once."""
    if frozen_models is None:
        frozen_models = companions(cfg, shape)
    mp = cfg.precision.mixed_precision
    act_bytes = 2 if mp in ("bf16", "fp16") else 4
    ds, fs = layout.zero, layout.fsdp
    n = world if ds or fs else 1
    stage, offload = (layout.zero_stage, layout.offload) if ds else (0, "none")
    k = optimizer_state_bytes(cfg.training.optimizer)
    sixteen_bit = ds and mp in ("bf16", "fp16")

    if cfg.peft.enabled:
        trained = cfg.peft.r * shape.lora_in_out + shape.saved_params
        if cfg.peft.use_dora:
            trained += shape.lora_out
        frozen = frozen_bytes(cfg, shape, sixteen_bit)
    else:
        trained, frozen = shape.params, 0.0
    # trl prepares a reference or teacher with DeepSpeed or FSDP: ZeRO-3 and FSDP shard it, stages 1-2 leave it
    # whole (stage 0)
    ref, teacher = (frozen_bytes(cfg, m, sixteen_bit) / (n if stage >= 3 or fs else 1) if m else 0.0
                    for m in (frozen_models.reference, frozen_models.teacher))

    w_b, g_b, o_b = (2, 2, 4 + k) if sixteen_bit else (4, 4, k)
    weights, grads, opt = trained * w_b + frozen, trained * g_b, trained * o_b
    # The fp32 copy of this rank's gradient partition that the optimizer step reads (a term the first version
    # left out: it under-counted 16-bit ZeRO-2 by 4P/N against DeepSpeed's own estimator). Stage 3 makes it one
    # sub-group (default 1e9 elements) at a time, i.e. the whole partition below 1e9 elements per rank.
    grads32 = trained * 4 / n if sixteen_bit else 0.0
    if stage >= 1:
        opt /= n
    if stage >= 2:
        grads /= n
    gather = 0.0
    if stage >= 3:
        weights /= n
        unit = max(shape.block_params, shape.largest_module_params)
        gather = 2 * unit * (2 if sixteen_bit else 4)
    offloaded = 0.0
    if offload in ("optimizer", "optimizer_and_params"):
        # ZeRO-Offload steps on the CPU: the optimizer state and the fp32 gradient partition live there, and
        # from stage 2 the 16-bit gradient partition is copied there as it is reduced (the first version kept
        # the gradients on the GPU, 2P/N too many: auto then reached for parameter offload too early).
        offloaded += opt + grads32 + (grads if stage >= 2 else 0.0)
        opt, grads32 = 0.0, 0.0
        if stage >= 2:
            grads = 0.0
    if offload == "optimizer_and_params":
        offloaded += weights
        weights = 0.0
    notes = frozen_models.notes
    if fs:
        # FSDP2 shards all of it; sixteen_bit is false, so weights/gradients/optimizer are the fp32 master, its fp32
        # gradient and the optimizer's state (accelerate upcasts the trained parameters to fp32)
        weights, grads, opt = weights / n, grads / n, opt / n
        gather = fsdp_gathered(cfg, shape, act_bytes, layout.reshard)
        if layout.offload == "optimizer_and_params":  # CPUOffloadPolicy: the shards live and step on the CPU
            offloaded = weights + grads + opt
            weights = grads = opt = 0.0
        if cfg.peft.enabled and cfg.quantization.mode == "int4":
            notes += (f"loading: each GPU holds the whole 4-bit model ({frozen / GIB:.1f} GiB) before FSDP shards "
                      "it (accelerate's cpu_ram_efficient_loading skips 4-bit models)",)
    grads += grads32

    b, s = cfg.training.batch_size, sequence_tokens(cfg)
    per_block = b * s * (8 * shape.hidden + 2 * shape.kv_hidden + 4 * shape.intermediate) * act_bytes
    if cfg.training.gradient_checkpointing is True:
        blocks = shape.layers * b * s * shape.hidden * act_bytes + per_block
    else:
        blocks = shape.layers * per_block
    logits = b * s * shape.vocab * (act_bytes + 8)
    dora = 0.0
    if cfg.peft.enabled and cfg.peft.use_dora:
        dora = b * s * shape.lora_out * act_bytes
        if cfg.training.gradient_checkpointing is True:
            dora /= shape.layers
    kv, rollout = rollout_bytes(cfg, shape, act_bytes)
    return Estimate(layout, world, weights=weights + gather, gradients=grads, optimizer=opt,
                    activations=blocks + logits + dora, cpu_offloaded=offloaded,
                    details={"trained_params": trained, "params": shape.params, "zero3_gather": gather if ds else 0.0,
                             "gathered": gather},
                    reference=ref, teacher=teacher, kv_cache=kv, rollout_logits=rollout, vllm_share=vllm_share(cfg),
                    notes=notes)


# ---- auto: the first layout that fits

CANDIDATES = (
    Layout("ddp"),
    Layout("deepspeed", 2),
    Layout("fsdp", reshard=False),
    Layout("deepspeed", 3),
    Layout("fsdp"),
    Layout("deepspeed", 3, "optimizer"),
    Layout("deepspeed", 3, "optimizer_and_params"),
    Layout("fsdp", offload="optimizer_and_params"),
)
"""auto's layouts in the order it tries them: by what each adds to a step's time, ZeRO before FSDP at equal cost
when deepspeed is installed (see `choose`)."""


def installed(package: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(package) is not None


def choose(cfg: RunConfig, shape: ModelShape | None, why_none: str, world: int,
           gpu_memory_gib: float | None, available: Callable[[str], bool] = installed,
           ) -> tuple[Layout, str, Estimate | None]:
    """(layout, reason, its estimate) for distributed.backend=auto: the first of CANDIDATES whose estimate fits.

    The order is what each layout costs a step beyond the compute, cheapest first:
      1. DDP: one all-reduce of the gradients.
      2. ZeRO-2, then FSDP without resharding: the same volume (a reduce-scatter of the gradients and one
         all-gather of the parameters), the parameters whole on each GPU for most of the step.
      3. ZeRO-3, then FSDP: a second all-gather of the parameters in the backward (1.5x DDP's traffic).
      4. ZeRO-3 with optimizer offload: the optimizer steps on the CPU and the gradients cross PCIe, several times
         slower than any of the above; then ZeRO-3 with full offload and FSDP with CPU offload (FSDP2 has no
         optimizer-only offload): the parameters cross PCIe at every gather too.
    ZeRO-2 therefore comes before FSDP whenever the replicated parameters fit (it communicates less than
    resharding FSDP), and any layout that fits without offload comes before any offload.

    At equal cost ZeRO comes first when deepspeed is installed: that is what auto chose before FSDP was a
    candidate, so a configuration that did not change plans the same, and ZeRO's CPU path is the one the launcher
    runs in its own tests. FSDP is taken where ZeRO at the same cost does not fit and FSDP does: it holds 16 bytes
    per trained parameter with AdamW where ZeRO holds 20 (no 16-bit copy beside the fp32 master, no fp32 copy of
    the gradient shard), which can spare an offload. Without deepspeed, FSDP takes ZeRO's place at each step
    (torch's own, no package). When nothing fits, the smallest estimate is returned and the reason says so.
    `available(package)`: whether a backend's package is installed (a layout whose package is not is skipped)."""
    frozen_models = companions(cfg, shape) if shape else None
    if world == 1:
        est = estimate(cfg, shape, Layout("none"), 1, frozen_models) if shape else None
        return Layout("none"), "one process: no distributed wrapper", est
    if shape is None:
        return Layout("ddp"), f"{world} processes: DDP (no memory estimate: {why_none})", None
    if not gpu_memory_gib:
        est = estimate(cfg, shape, Layout("ddp"), world, frozen_models)
        return Layout("ddp"), f"{world} processes: DDP (no GPU memory to compare the estimate with)", est
    missing = sorted({p for layout in CANDIDATES if (p := BACKENDS[layout.backend].package) and not available(p)})
    candidates = [layout for layout in CANDIDATES if BACKENDS[layout.backend].package not in missing]
    order = ", ".join(layout.label for layout in candidates)
    without = f" ({', '.join(missing)} not installed: its layouts left out)" if missing else ""
    tried, estimates = [], []
    for layout in candidates:
        est = estimate(cfg, shape, layout, world, frozen_models)
        if est.fits(gpu_memory_gib):
            why = f"{world} processes: {layout.label}, the first of {order}{without} whose estimate fits " \
                  f"{gpu_memory_gib:g} GiB" + (f" beside vLLM's {est.vllm_share:.0%}" if est.vllm_share else "")
            if tried:
                why += " (" + "; ".join(tried) + ")"
            if layout.fsdp and not missing and tried:
                why += "; FSDP fits where ZeRO at the same communication does not"
                if not cfg.peft.enabled and cfg.precision.mixed_precision in ("bf16", "fp16"):
                    # the difference that matters in 16-bit full fine-tunes; otherwise it is the gathered units
                    why += (": no 16-bit copy beside the fp32 master weights nor fp32 copy of the gradient shard "
                            "(with AdamW 16 bytes per parameter over the GPUs, where ZeRO holds 18 or 20)")
            return layout, why, est
        tried.append(f"{layout.label} needs ~{est.total / GIB:.0f} GiB")
        estimates.append((est.total, layout, est))
    _, layout, est = min(estimates, key=lambda item: item[0])
    return layout, (f"{world} processes: nothing fits {gpu_memory_gib:g} GiB per GPU even with CPU offload "
                    f"({'; '.join(tried)}){without}: {layout.label} is the closest"), est
