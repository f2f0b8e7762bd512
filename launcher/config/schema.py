"""The run configuration: every knob of a run, typed and documented.

Each field's docstring (the string under it) is its documentation: `tunelaunch explain` prints them and
validation errors quote them. AutoTrain's name for a field, where it differs, is given in brackets; the
full mapping lives in `launcher.config.autotrain`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from launcher.methods import NAMES as _METHOD_NAMES

TrainerName = Literal[_METHOD_NAMES]  # the rows of launcher.methods
Auto = Literal["auto"]


@dataclass
class ModelConfig:
    name_or_path: str = ""
    """Hub id (`org/name`) or local folder of the base model. [model, base_model]"""
    gguf_file: Optional[str] = None
    """A GGUF file inside `name_or_path` to load instead of safetensors; it is dequantized for training."""
    revision: Optional[str] = None
    """Hub revision (branch, tag or commit) of the base model."""
    max_length: int = 2048
    """Longest sequence the model is run on; block_size and the prompt/completion limits may not exceed it.
    [model_max_length]"""
    attn_implementation: Literal["auto", "flash_attention_2", "sdpa", "eager"] = "auto"
    """Attention kernel. auto: flash_attention_2 when flash-attn is installed and a GPU is used, else sdpa.
    An explicit flash_attention_2 that cannot run falls back to sdpa and `plan` says so.
    [use_flash_attention_2: true = flash_attention_2]"""
    trust_remote_code: bool = False
    """Run Python code shipped with a hub model. Off unless you trust the model's repository."""
    liger_kernel: Union[bool, Auto] = "auto"
    """Liger's fused Triton kernels (RMSNorm, RoPE, SwiGLU, and a cross-entropy that never materialises the
    logits): less memory and more tokens/s on GPUs. auto: on when a GPU is used and the liger-kernel package is
    installed; they do not run on CPU, so there auto is off and `true` falls back with a note."""
    compile: bool = False
    """torch.compile the model (transformers' torch_compile): faster steps after a first compiled step that takes
    minutes; shapes that change from batch to batch (unpacked data) recompile, so it pays with packing."""


@dataclass
class ColumnMapping:
    text_column: str = "text"
    """Column holding the text, the chat messages, or (preference data) the chosen answer. [text_column]"""
    rejected_text_column: Optional[str] = None
    """Column holding the rejected answer; reward, dpo, orpo, cpo and simpo need it. [rejected_text_column]"""
    prompt_text_column: Optional[str] = None
    """Column holding the prompt; dpo, orpo, cpo and simpo need it. [prompt_text_column]"""
    label_column: Optional[str] = None
    """kto: column holding each completion's label, true/1 (desirable) or false/0 (undesirable); null = `label`.
    With kto, text_column names the completion column. (AutoTrain has no such column.)"""
    roles: dict[str, Literal["system", "user", "assistant"]] = field(default_factory=dict)
    """Chat data: the role each speaker name in your messages plays, e.g. `data.column_mapping.roles.bot=assistant`
    or `data.column_mapping.roles={human: user, gpt: assistant}`. ShareGPT's names need no mapping: human = user,
    gpt = assistant, function_call = assistant, tool and observation = user (shown, never trained).
    (AutoTrain has no such mapping.)"""


@dataclass
class DataSource:
    """One source of a mixture (data.datasets): its own files, splits, columns and format; the chat template,
    lengths and packing are the run's (data.*)."""
    path: str = ""
    """A folder holding `<split>.jsonl|.csv|.parquet`, a single data file, or a hub dataset id."""
    train_split: str = "train"
    """Training split of this source: the file name without extension in `path`, or the hub split."""
    valid_split: Optional[str] = None
    """Validation split of this source, or null for none."""
    column_mapping: ColumnMapping = field(default_factory=ColumnMapping)
    """Which columns of this source play which role."""
    format: Literal["auto", "text", "messages", "prompt_completion", "alpaca", "preference", "unpaired",
                    "unpaired_messages"] = "auto"
    """Row format of this source; auto detects it from the columns (as data.format)."""
    weight: float = 1.0
    """Share of this source in the mixture: weights are normalised to sum to 1. With data.mixture=interleave
    each training row is drawn from a source with probability its share; with concat, ignored (every row of
    every source, once)."""
    name: Optional[str] = None
    """Label shown by `prepare --show` and in the logs; null = the file or hub id."""


@dataclass
class DataConfig:
    path: str = "data"
    """A folder holding `<split>.jsonl|.csv|.parquet`, a single data file, or a hub dataset id. [data_path]"""
    train_split: str = "train"
    """Training split: the file name without extension in `path`, or the hub split. [train_split]"""
    valid_split: Optional[str] = None
    """Validation split, or null for none. [valid_split]"""
    num_validation_samples: int = 0
    """With no valid_split: hold out this many rows from the TAIL of train for validation (0 = no validation)."""
    validation_fraction: Optional[float] = None
    """Hold out this fraction of the training rows for validation, in (0, 0.5]: drawn at random with
    training.seed (the same rows on every run and every process); training uses the rest. It replaces
    valid_split (which is then not read) and cannot be combined with num_validation_samples. null = off."""
    format: Literal["auto", "text", "messages", "prompt_completion", "alpaca", "preference", "unpaired",
                    "unpaired_messages"] = "auto"
    """Row format. auto detects it from the columns: `text`, chat `messages` (list of {role, content}; ShareGPT's
    `conversations` of {from, value} is read as messages),
    `prompt`/`completion`, Alpaca `instruction`/`input`/`output`, preference `prompt`/`chosen`/`rejected`,
    unpaired (kto) `prompt`/`completion`/`label` or `messages`/`label`."""
    chat_template: str = "none"
    """How rows are rendered to text: none, chatml, zephyr, alpaca, tokenizer (the model's own template), or a
    path to a Jinja file. The template used is saved with the output tokenizer. [chat_template]"""
    column_mapping: ColumnMapping = field(default_factory=ColumnMapping)
    """Which columns of your data play which role. [column_mapping]"""
    add_eos_token: bool = True
    """Append the EOS token to each text so the model learns to stop. [add_eos_token]"""
    block_size: int = -1
    """Length of a training sequence (the `default` trainer cuts concatenated text into blocks of it);
    -1 = automatic: min(1024, model max_length). [block_size]"""
    max_prompt_length: int = 128
    """Longest prompt kept for dpo/orpo/cpo/simpo/kto/grpo/rloo/distill (longer prompts are truncated: the
    preference methods count them, the online ones keep the prompt's end).
    [max_prompt_length]"""
    max_completion_length: Optional[int] = None
    """Longest completion kept for dpo/orpo/cpo/simpo/kto; null = block_size minus the prompt. grpo, rloo, distill:
    the most tokens generated per completion; null = 256. [max_completion_length]"""
    padding_side: Literal["left", "right"] = "right"
    """Side the tokenizer pads on. [padding]"""
    packing: bool = False
    """Pack several samples into one sequence of block_size tokens without letting them attend to each other
    (position ids restart per sample). [pack_sequences]"""
    wrap_packed_sequences: bool = False
    """With packing: concatenate all samples and cut them into full blocks, across sample boundaries (constant
    length, but samples are split and see their neighbours). [wrap_packed_sequences]"""
    chunk_size: Optional[int] = None
    """With packing: length of a packed sequence; null = block_size. [chunk_size]"""
    datasets: list[DataSource] = field(default_factory=list)
    """Several sources mixed into one training set, each with its own path, splits, column_mapping, format and
    weight (a YAML list of maps). When set, data.path, train_split, valid_split, column_mapping and format are
    not read (each source has its own). Empty = the one source data.path."""
    mixture: Literal["concat", "interleave"] = "concat"
    """How data.datasets are mixed: concat (every row of every source, in order; shuffled by the trainer) or
    interleave (rows drawn from the sources with probabilities = their normalised weights, seeded with
    training.seed, through datasets.interleave_datasets)."""
    stopping_strategy: Literal["first_exhausted", "all_exhausted"] = "first_exhausted"
    """interleave: stop when the first source runs out (no row repeated; the realised shares follow the
    weights), or when every source has been seen whole (the smaller ones are repeated)."""
    streaming: bool = False
    """Read, tokenise and pack the training data on the fly instead of preparing it up front (corpora larger
    than memory or disk cache; default and sft trainers). Needs training.max_steps; rows are split across
    processes and nodes, and the stream's position is saved in each checkpoint so a resume continues exactly."""
    packing_buffer: int = 1000
    """streaming with data.packing: samples gathered before best-fit packing lays them into rows (more fills
    rows better, holds more in memory)."""
    shuffle_window: int = 0
    """streaming: the rows each process reads are shuffled within consecutive windows of this many rows, seeded
    by training.seed and the window's place in the stream, so a resume re-reads the window it stopped in and
    shuffles it the same way; 0 = file order. A window, not datasets' shuffle buffer (whose contents no checkpoint
    can hold): a row moves only within its window, and every pass is shuffled alike; shuffle the files once on
    disk for a global order."""
    num_proc: Optional[int] = None
    """Processes that tokenise the data (forked workers, a batch at a time); null = the CPU cores given to the job
    (Slurm's SLURM_CPUS_PER_TASK, else the cores this process may run on), at least 2000 rows each, and one process
    below 4 cores (the tokenizer's own threads use them already), stated by `plan`."""
    cache_dir: Optional[str] = None
    """Where tokenised datasets are cached (keyed by data, tokenizer, template, lengths, packing and trainer);
    null = `<cache root>/data` (TUNELAUNCH_CACHE or ~/.cache/tunelaunch)."""


@dataclass
class TrainerConfig:
    name: TrainerName = "sft"
    """Training method, one of launcher.methods: default (causal LM on blocks of text), sft, reward, dpo, orpo,
    cpo, simpo, kto, and the online methods that learn from the model's own samples: grpo, rloo and distill.
    [trainer, task]"""
    train_on: Literal["completion", "all"] = "completion"
    """sft loss on the assistant turns / completion only (with their end-of-turn token), or on all tokens."""
    train_on_reasoning: bool = True
    """sft: train on the reasoning traces of assistant turns (`reasoning_content`, or `<think>` spans in the
    content) as well as the replies; false = the traces are shown to the model but not trained."""
    beta: Optional[float] = None
    """dpo: strength of the KL penalty to the reference model (ipo: its regularisation tau); orpo: weight of the
    odds-ratio loss; cpo/simpo: scale of the reward (the SimPO paper uses 2.0-2.5, with simpo_gamma about half
    of it); kto: how far the policy may move from the reference (the KTO paper uses 0.1); grpo/rloo: the KL
    penalty to the reference model (0 = no reference model is loaded; DeepSeek-R1 used 0.001); distill: which
    divergence from the teacher, 0 = forward KL, 0.5 = Jensen-Shannon, 1 = reverse KL (on-policy distillation's).
    null = the method's default, stated by `plan`: 0.1 (dpo, orpo, cpo, simpo, kto), 0 (grpo, rloo), 1 (distill).
    [dpo_beta]"""
    model_ref: Optional[str] = None
    """dpo, kto: reference model; null uses the base model (with LoRA: the base without the adapter). [model_ref]"""
    loss_type: Optional[Union[str, list[str]]] = None
    """dpo: the loss, one of trl's DPOConfig.loss_type: sigmoid (DPO), hinge (SLiC), ipo, exo_pair, nca_pair,
    robust, bco_pair, sppo_hard, aot, aot_unpaired, apo_zero, apo_down, discopop, sft, sigmoid_norm. A list
    sums several, weighted by loss_weights: [sigmoid, bco_pair, sft] with weights [0.8, 0.2, 1.0] is MPO. Write a
    list `trainer.loss_type=[sigmoid,sft]`, `"trainer.loss_type='sigmoid,sft'"` or as a YAML list.
    grpo: how the token losses are aggregated, one of trl's GRPOConfig.loss_type: grpo (per-sequence mean: a
    length bias), dapo (over the active tokens of the global batch), dr_grpo (over a constant: Dr. GRPO), bnpo,
    cispo, sapo, luspo (GSPO's, with importance_sampling_level=sequence), vespo.
    null = the method's default, stated by `plan`: sigmoid (dpo), dapo (grpo)."""
    loss_weights: Optional[list[float]] = None
    """dpo: one weight per loss_type entry; null = 1.0 each. Write `trainer.loss_weights=[0.8,0.2]`,
    `"trainer.loss_weights='0.8,0.2'"` or a YAML list."""
    label_smoothing: float = 0.0
    """dpo (robust, exo_pair, aot, aot_unpaired), cpo, simpo: the assumed chance that a pair's preference is
    flipped, in [0, 0.5). exo_pair needs it above 0 (its paper: 1e-3); robust DPO's paper suggests 0.1."""
    simpo_gamma: float = 0.5
    """simpo: target reward margin gamma: the loss is -log sigmoid(beta x (mean log-prob chosen - mean log-prob
    rejected) - gamma). The SimPO paper's gamma / beta is 0.3-0.8 (e.g. beta 2.0, gamma 1.0)."""
    cpo_alpha: Optional[float] = None
    """cpo/simpo: weight of the SFT (negative log-likelihood) loss on the chosen answer; null = 1.0 for cpo (the
    CPO paper), 0 for simpo (pure SimPO; above 0 is CPO-SimPO)."""
    desirable_weight: float = 1.0
    """kto: weight of the loss on desirable (label true) completions. With unequal classes the KTO paper keeps
    desirable_weight x desirable rows / (undesirable_weight x undesirable rows) in [1, 4/3]; `plan` reports the
    balance and a weight that fits."""
    undesirable_weight: float = 1.0
    """kto: weight of the loss on undesirable (label false) completions (see desirable_weight)."""
    num_generations: int = 8
    """grpo, rloo: completions sampled per prompt (the group whose rewards are compared). A round of generation,
    processes x training.batch_size x steps_per_generation completions, must hold whole groups (a batch_size that
    is a multiple of it also keeps each group on one process)."""
    temperature: float = 1.0
    """grpo, rloo, distill: sampling temperature of the completions (distill: also of the divergence)."""
    top_p: float = 1.0
    """grpo, rloo, distill: nucleus sampling of the completions, in (0, 1]; 1 = all tokens."""
    epsilon: float = 0.2
    """grpo, rloo: the clip range of the importance ratio (PPO's epsilon), lower side."""
    epsilon_high: Optional[float] = None
    """grpo, rloo: upper clip range (DAPO's clip-higher: 0.28); null = epsilon."""
    importance_sampling_level: Literal["token", "sequence"] = "token"
    """grpo: importance ratios per token, or per sequence (the mean token log-ratio: GSPO)."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """grpo: divide the advantages by the reward std of the group, of the whole batch, or not at all (Dr. GRPO:
    none, which removes the question-difficulty bias)."""
    num_iterations: int = 1
    """grpo, rloo: optimisation passes over each batch of generations (mu in the GRPO paper); above 1 the
    importance ratio and clipping matter."""
    steps_per_generation: Optional[int] = None
    """grpo, rloo: optimizer micro-steps served by one round of generation; null = training.gradient_accumulation.
    A round generates processes x batch_size x steps_per_generation completions."""
    mask_truncated_completions: bool = False
    """grpo, rloo: leave completions that hit data.max_completion_length out of the loss (DAPO)."""
    rewards: list[str] = field(default_factory=list)
    """grpo, rloo: the reward functions, summed (weighted by reward_weights). Each entry is one of:
    a shipped function: `format` (the completion matches trainer.format_pattern), `length` (near
    trainer.length_target tokens), `exact_match` (equals the data column trainer.answer_column), `math` (the same
    mathematical answer as that column, through math-verify), `json_schema` (parses as JSON and validates
    against trainer.json_schema);
    your function, `package.module:function` or `path/to/file.py:function`, called as trl calls it:
    `f(prompts=, completions=, completion_ids=, **data_columns, trainer_state=, log_extra=, log_metric=)`, so
    it takes the arguments it reads and `**kwargs`, and returns one float (or None = no opinion) per completion;
    a reward model trained with trainer=reward: `run:runs/my-rm` (its tokenizer and chat template are used).
    `plan` imports each one and calls it on two dummy completions with your data's columns. Write
    `trainer.rewards=[format,math]` or a YAML list."""
    reward_weights: Optional[list[float]] = None
    """grpo, rloo: one weight per entry of rewards; null = 1.0 each."""
    format_pattern: str = r"^<answer>.*</answer>$"
    """grpo, rloo: the regular expression of the `format` reward: 1.0 when it matches the completion (searched,
    with . matching newlines: anchor it with ^ and $ for the whole completion), else 0.0."""
    length_target: int = 64
    """grpo, rloo: the `length` reward's target, in tokens of the completion."""
    length_tolerance: int = 16
    """grpo, rloo: the `length` reward is 1.0 within this many tokens of length_target; beyond that it falls
    linearly, reaching 0.0 once the completion is off by length_tolerance + length_target tokens."""
    answer_column: str = "answer"
    """grpo, rloo: the data column the `exact_match` and `math` rewards compare a completion with."""
    answer_pattern: Optional[str] = None
    """grpo, rloo: a regular expression with one group that picks the answer out of a completion for
    `exact_match` and `math` (its last match), e.g. `<answer>(.*?)</answer>`; null = the whole completion."""
    json_schema: Optional[str] = None
    """grpo, rloo: a JSON Schema file for the `json_schema` reward (1.0: parses and validates; 0.5: parses only)."""
    tools: list[str] = field(default_factory=list)
    """grpo, distill: Python functions the model may call during its rollouts (`package.module:function` or
    `path/to/file.py:function`, with a type hint for every argument and a Google-style docstring describing each
    under `Args:`: they become the tool's schema); the result is
    fed back as a tool turn. Needs a chat template that renders tool calls (data.chat_template=tokenizer on a
    model trained for tools, or qwen3)."""
    max_tool_calls: Optional[int] = None
    """grpo, distill: the most tool calls in one rollout; null = until the model stops calling or the completion
    length is used up."""
    teacher: Optional[str] = None
    """distill: the teacher model, a hub id, a local folder or a finished run folder (its saved model, an adapter
    merged onto its base). It must share the student's vocabulary."""
    generation: Literal["transformers", "vllm"] = "transformers"
    """grpo, rloo, distill: what samples the completions: transformers' generate (CPU and GPU), or vLLM (GPUs only,
    `pip install tunelaunch[vllm]`)."""
    vllm_mode: Literal["colocate", "server"] = "colocate"
    """With generation=vllm: colocate runs vLLM inside each training process (sharing its GPU: see
    vllm_gpu_memory_utilization); server sends the prompts to a `trl vllm-serve` server (on Slurm, `submit` starts it
    on cluster.vllm_nodes nodes of its own)."""
    vllm_gpu_memory_utilization: float = 0.3
    """With generation=vllm and vllm_mode=colocate: the share of each GPU's memory vLLM takes (its weights and KV
    cache); training gets the rest, and the memory estimate counts it."""


@dataclass
class TrainingConfig:
    epochs: int = 1
    """Passes over the training data. [epochs]"""
    max_steps: int = -1
    """Stop after this many optimizer steps (overrides epochs); -1 = run the epochs."""
    lr: float = 3e-5
    """Peak learning rate. [lr]"""
    batch_size: int = 2
    """Samples per device per forward pass. [batch_size, micro_batch_size]"""
    global_batch_size: Optional[int] = None
    """Samples per optimizer step over all processes; when set, gradient_accumulation is derived from it,
    batch_size and the world size (it must divide evenly). [train_batch_size]"""
    gradient_accumulation: int = 4
    """Forward passes accumulated per optimizer step. [gradient_accumulation]"""
    warmup_ratio: float = 0.1
    """Fraction of steps spent warming the learning rate up. [warmup_ratio]"""
    optimizer: str = "adamw_torch"
    """A transformers optimizer name (adamw_torch, adamw_torch_fused, adafactor, paged_adamw_8bit, ...). [optimizer]"""
    scheduler: str = "linear"
    """A transformers scheduler name (linear, cosine, constant, constant_with_warmup, ...). [scheduler]"""
    weight_decay: float = 0.0
    """Decoupled weight decay. [weight_decay]"""
    max_grad_norm: float = 1.0
    """Gradient clipping norm. [max_grad_norm]"""
    seed: int = 42
    """Seed for weights init, data order and dropout. [seed]"""
    deterministic: bool = False
    """Bitwise-reproducible training: deterministic kernels only (torch.use_deterministic_algorithms, cuBLAS
    workspace, no cuDNN autotuning), as the HF Trainer's full_determinism. On CPU two runs of one config then end
    with identical weights, and a run stopped and resumed ends with the weights of an uninterrupted one; on GPUs
    the same holds on one machine and software stack, at some speed cost."""
    gradient_checkpointing: Union[bool, Auto] = "auto"
    """Recompute activations in the backward pass to save memory. auto: on with a GPU, off on CPU (where it
    costs 8-12x the time for nothing). [disable_gradient_checkpointing: true = false]"""
    eval_strategy: Literal["no", "steps", "epoch"] = "epoch"
    """When to evaluate on the validation split (ignored without one). [eval_strategy]"""
    eval_steps: Optional[int] = None
    """Evaluation interval when eval_strategy is steps; null = save_steps (the plan says so), so that every
    checkpoint has its evaluation."""
    save_strategy: Literal["no", "steps", "epoch"] = "epoch"
    """When to write a checkpoint (a restarted run resumes from the newest complete one)."""
    save_steps: int = 500
    """Checkpoint interval when save_strategy is steps."""
    save_total_limit: int = 1
    """Checkpoints kept on disk. [save_total_limit]"""
    resume_from: str = "latest"
    """Which checkpoint an unfinished run in project_name resumes from: latest (the newest complete one), none
    (start over; on an unfinished run only with overwrite=true, which moves it aside), or `checkpoint-N` (its name
    or path inside the run folder). A resume keeps what training computes (model, data, method, LoRA shape,
    precision, world size, batch, optimiser and schedule: `plan` refuses a change and lists it) and may change how
    long and how often (max_steps, epochs, logging, saving, evaluation, cluster and hub settings: `plan` notes
    them); the lists are launcher/run_dir.py RESUME_REFUSES and RESUME_MAY_CHANGE. The run folder's config.yaml
    becomes the new one only once training has resumed from the checkpoint."""
    auto_find_batch_size: bool = False
    """Halve the batch size on out-of-memory errors and retry. [auto_find_batch_size]"""
    validation_prompt: Optional[str] = None
    """A prompt answered by the model at each evaluation, logged so you can watch it learn. [validation_prompt]"""
    neftune_noise_alpha: Optional[float] = None
    """sft: NEFTune, uniform noise of scale alpha / sqrt(tokens x hidden) added to the input embeddings in training
    (not in evaluation or generation); the paper's values are 5-15. null = off."""


@dataclass
class PeftConfig:
    enabled: bool = False
    """Train a LoRA adapter instead of all weights. [peft]"""
    r: int = 16
    """LoRA rank. [lora_r]"""
    alpha: int = 32
    """LoRA scaling numerator (the update is scaled by alpha / r). [lora_alpha]"""
    dropout: float = 0.05
    """Dropout on the LoRA input. [lora_dropout]"""
    target_modules: Union[str, list[str]] = "all-linear"
    """Modules that get adapters: all-linear, or a list of module names, written
    `peft.target_modules=[q_proj,v_proj]`, `"peft.target_modules='q_proj,v_proj'"` (quoted: Hydra reads a bare
    comma as a sweep) or a YAML list in a --config file. [target_modules]"""
    merge_adapter: bool = False
    """Merge the adapter into the base weights when saving (a failed merge is an error). [merge_adapter]"""
    use_dora: bool = False
    """DoRA: split each adapted weight into a magnitude (a trained vector of its output size, saved with the
    adapter) and a direction that LoRA updates. Closer to a full fine-tune at low rank; steps are slower and
    keep more activations."""
    use_rslora: bool = False
    """Rank-stabilised LoRA: scale the update by alpha / sqrt(r) instead of alpha / r, so high ranks still learn."""
    init: str = "default"
    """How the adapter starts: default (A random, B zero: training starts from the base model exactly),
    gaussian (A drawn from a Gaussian of std 1/r, B zero), or orthogonal (A and B random with orthogonal
    factors, so their product starts at zero; needs an even r). launcher/config/lora_inits.py says why peft's
    other initialisations are not offered."""
    modules_to_save: list[str] = field(default_factory=list)
    """Modules trained in full and saved with the adapter, by name, e.g. [lm_head, embed_tokens] (new chat
    template tokens then get trained embeddings); they cost gradients and optimizer states like a full fine-tune
    of their size. Merging puts them into the merged model. Write `peft.modules_to_save=[lm_head,embed_tokens]`,
    `"peft.modules_to_save='lm_head,embed_tokens'"` or a YAML list."""

    def target_list(self) -> Union[str, list[str]]:
        """target_modules as peft takes it: "all-linear", or the list of module names."""
        if self.target_modules in ("all-linear", ["all-linear"]):
            return "all-linear"
        if isinstance(self.target_modules, list):
            return list(self.target_modules)
        return [self.target_modules]  # one name (a comma-separated string was split when the config was read)


@dataclass
class QuantizationConfig:
    mode: Literal["none", "int4", "int8"] = "none"
    """Load the base weights quantized through bitsandbytes (QLoRA); needs peft.enabled. [quantization]"""


@dataclass
class PrecisionConfig:
    mixed_precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """Compute precision. auto: bf16 on GPUs that support it, else fp16 on GPU, fp32 on CPU. [mixed_precision]"""
    weights_dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """The dtype the base weights are loaded in. auto: bf16 for a LoRA run computing in bf16 (its base is frozen,
    so it sits in the compute dtype at half the memory), fp32 otherwise (a full fine-tune keeps fp32 master
    weights and autocast computes in bf16/fp16). Half-precision weights are for LoRA's frozen base only."""


@dataclass
class DistributedConfig:
    backend: Literal["auto", "none", "ddp", "deepspeed", "fsdp"] = "auto"
    """How processes share the work. auto: none for one process; for several, DDP when the per-GPU memory
    estimate fits, else DeepSpeed ZeRO-2, ZeRO-3, then ZeRO-3 with CPU offload, with FSDP where it fits and ZeRO at the
    same cost does not (or in ZeRO's place without deepspeed); `plan` says why. [distributed_backend]"""
    zero_stage: Literal[1, 2, 3] = 2
    """DeepSpeed ZeRO stage when backend is deepspeed."""
    offload: Literal["none", "optimizer", "optimizer_and_params"] = "none"
    """CPU offload. deepspeed: the optimizer states (optimizer) or those and the parameters
    (optimizer_and_params, ZeRO-3). fsdp: optimizer_and_params only (FSDP2's CPUOffloadPolicy keeps parameters,
    gradients and optimizer states in CPU memory and steps the optimizer there)."""
    reshard_after_forward: bool = True
    """fsdp: free each layer's gathered parameters after its forward and gather them again for the backward
    (ZeRO-3's memory); false keeps them gathered until the backward (ZeRO-2's memory, one all-gather fewer)."""
    num_processes: Optional[int] = None
    """Processes per node; null = one per visible GPU (one on a machine without GPUs)."""
    num_nodes: int = 1
    """Machines taking part."""
    node_rank: int = 0
    """This machine's rank among num_nodes (give each node its own: node_rank=0 on the rendezvous host)."""
    main_process_ip: str = "127.0.0.1"
    """Address of node 0, the rendezvous endpoint."""
    main_process_port: int = 29500
    """Port of the rendezvous endpoint on node 0."""
    launcher: Literal["accelerate", "torchrun"] = "accelerate"
    """Program that starts the worker processes."""
    timeout_minutes: int = 30
    """How long a collective operation may wait for the other ranks before the run fails (the process group's
    timeout, NCCL's included); raise it when one rank does long work alone (saving, evaluating)."""


@dataclass
class LoggingConfig:
    report_to: Literal["none", "tensorboard", "wandb", "mlflow", "trackio"] = "none"
    """Experiment tracker. tensorboard writes `<run>/tensorboard`; wandb runs offline without WANDB_API_KEY;
    mlflow logs to MLFLOW_TRACKING_URI, else a local file store `mlruns/` beside the runs; trackio logs locally
    (its own store, TRACKIO_DIR) unless told a Space. [log]"""
    steps: int = -1
    """Log every this many optimizer steps; -1 = automatic (about 25 logs per run, at least every step
    for short runs). [logging_steps]"""
    samples_steps: Optional[int] = None
    """grpo, rloo, distill: every this many steps, the sampled prompts, completions and rewards are appended to
    `samples.jsonl` in the run folder; null = every logging step, 0 = never."""


@dataclass
class EvalConfig:
    tasks: list[str] = field(default_factory=list)
    """lm-evaluation-harness tasks scored on the trained model when training ends: registry names (`arc_easy`,
    `hellaswag`) or task YAML files (`samples/eval/pirate.yaml`, local data, no network). Results go to
    `<run>/eval/<task>.json`; `tunelaunch runs` shows them. Empty: no evaluation."""
    limit: Optional[int] = None
    """Score only the first N examples of each task (a quick check); null = all of them."""
    num_fewshot: Optional[int] = None
    """Examples shown before each question; null = each task's own default."""
    batch_size: int = 8
    """Examples scored per forward pass."""
    apply_chat_template: Optional[bool] = None
    """Prompt through the run's chat template (lm-eval's --apply_chat_template); null = yes for runs trained
    under a chat template, no for plain text (the plan says which)."""


@dataclass
class HubConfig:
    push_to_hub: bool = False
    """Upload the result to `username/project_name` on the Hugging Face Hub. [push_to_hub]"""
    username: Optional[str] = None
    """Hub user or organisation that owns the repository. [username]"""
    token: Optional[str] = None
    """Hub token; better left unset and given as HF_TOKEN. Never written to disk or logs. [token]"""
    private: bool = True
    """Create the hub repository as private."""


@dataclass
class ContainerConfig:
    kind: Literal["none", "pyxis", "apptainer"] = "none"
    """Run every node's training inside a container: pyxis/enroot (`srun --container-image=...`) or Apptainer /
    Singularity (`apptainer exec --bind ... IMAGE`). The batch step stays on the host and needs only bash and
    Slurm there; the image needs Python with tunelaunch (or `cluster.snapshot=true`) and no Slurm command."""
    image: Optional[str] = None
    """The image: for pyxis a name or squashfs file (`nvcr.io#nvidia/pytorch:25.01-py3`, `/shared/img.sqsh`), for
    apptainer a `.sif` file or a URI it accepts."""
    mounts: list[str] = field(default_factory=list)
    """More host paths to mount, `SRC` or `SRC:DST` (the run folder, the working folder, the data, the data
    cache, a local model and the log folder are mounted at the same paths without asking). Write
    `cluster.container.mounts=[/data,/scratch:/tmp]`, quoted `'/data,/scratch:/tmp'` or a YAML list."""
    workdir: Optional[str] = None
    """Working folder inside the container; null = the folder `submit` ran in (mounted)."""
    mount_home: bool = True
    """Mount the home folder (pyxis does by default; false adds `--no-container-mount-home`; apptainer: false adds
    `--no-home`)."""
    program: str = "apptainer"
    """apptainer only: the program on the nodes, `apptainer` or `singularity` (or its full path)."""


@dataclass
class ClusterConfig:
    kind: Literal["local", "slurm"] = "local"
    """Where the run starts: local (this machine, `tunelaunch train`) or slurm (`tunelaunch submit`, or
    `sbatch slurm/train.sbatch`)."""
    nodes: int = 1
    """Slurm nodes; each runs one launcher that starts distributed.num_processes workers. Sets
    distributed.num_nodes."""
    gpus_per_node: Optional[int] = None
    """GPUs requested per node (`--gpus-per-node`); distributed.num_processes follows it. null = none asked for:
    CPU nodes, and `plan` warns (a job meant for GPUs that forgot them trains in fp32 on CPUs); 0 = CPU nodes on
    purpose, without the warning."""
    gpu_memory_gib: Optional[float] = None
    """Memory of one of the nodes' GPUs, for the memory estimate and distributed=auto (null = unknown: DDP)."""
    bf16: bool = True
    """Whether the nodes' GPUs compute in bf16 (Ampere or newer); false makes precision auto choose fp16."""
    cpus_per_task: Optional[int] = None
    """CPU cores for each node's launcher, its workers and their data loaders (`--cpus-per-task`, given to srun
    too, which since Slurm 22.05 no longer inherits it). null = the node's cores in proportion to the GPUs asked
    for, read from `sinfo` for the partition when it can be (else 8 per GPU), or one per worker on CPU nodes;
    `plan` says which."""
    cpus_per_gpu: Optional[int] = None
    """CPU cores per GPU (`--cpus-per-gpu`), instead of cpus_per_task."""
    mem: Optional[str] = None
    """Memory per node (`--mem`), e.g. 64G or 500000M. null = the node's memory in proportion to the GPUs asked for
    when `sinfo` describes the partition, else the partition's default; `plan` says which."""
    mem_per_gpu: Optional[str] = None
    """Memory per GPU (`--mem-per-gpu`), instead of mem."""
    time: Optional[str] = None
    """Time limit (`--time`): minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS; null = the partition's."""
    partition: Optional[str] = None
    """Slurm partition (`--partition`)."""
    account: Optional[str] = None
    """Account charged (`--account`)."""
    qos: Optional[str] = None
    """Quality of service (`--qos`)."""
    constraint: Optional[str] = None
    """Node features required (`--constraint`), e.g. a100|h100."""
    exclusive: bool = False
    """Whole nodes for this job (`--exclusive`): nothing else runs beside it."""
    gres: Optional[str] = None
    """Generic resources (`--gres`), e.g. gpu:h100:8 where a site asks for GPUs that way (then leave
    gpus_per_node at the count, for planning)."""
    exclude: Optional[str] = None
    """Nodes never to use (`--exclude`), e.g. gpu[07,12]."""
    nodelist: Optional[str] = None
    """Nodes to use (`--nodelist`)."""
    reservation: Optional[str] = None
    """Reservation to run in (`--reservation`)."""
    mail_type: Optional[str] = None
    """When Slurm mails (`--mail-type`), e.g. END,FAIL."""
    mail_user: Optional[str] = None
    """Who Slurm mails (`--mail-user`)."""
    env: dict[str, str] = field(default_factory=dict)
    """Environment variables exported on every node before training: NCCL_*, FI_*, HF_HOME, ... Set one with
    `cluster.env.NCCL_DEBUG=INFO`."""
    extra_directives: list[str] = field(default_factory=list, metadata={"split_text": False})
    """More `#SBATCH` options, written as given, e.g. ["--begin=now+1hour"]. No shell variables: Slurm does not
    expand them in #SBATCH lines."""
    setup: list[str] = field(default_factory=list, metadata={"split_text": False})
    """Shell lines run on every node before training (inside the container when there is one): module loads,
    `source .venv/bin/activate`, `conda activate env`. A list, one item per line (a comma inside a line stays):
    `"cluster.setup=['module load cuda','source .venv/bin/activate']"` or a YAML list."""
    container: ContainerConfig = field(default_factory=ContainerConfig)
    """A container the training runs in on every node (pyxis/enroot or Apptainer)."""
    wrapper: Optional[str] = None
    """A command each node's program runs inside, written before it, e.g. `numactl --interleave=all` (for a
    container, use cluster.container)."""
    python: Optional[str] = None
    """The Python that runs tunelaunch on the nodes; null = the one running `submit` (a venv on a shared
    filesystem), or `python3` inside a container. Set it when the setup lines activate an environment."""
    snapshot: bool = False
    """Run the code as it was at submission: the launcher package is copied into `<project_name>/code` and put
    first on the nodes' PYTHONPATH, so editing the checkout while the job waits or requeues changes nothing."""
    signal_lead: int = 120
    """Seconds before the time limit at which Slurm signals the job (`--signal=B:USR1@N`): every rank then
    saves a complete checkpoint and the job requeues itself."""
    max_requeues: int = 3
    """How many times the run requeues itself after a preemption or the time limit (counted over every job of
    the run, resubmissions included) before it gives up."""
    max_failures: int = 1
    """How many times the run requeues itself after a failure (a crashed rank, a lost node, a launch that never
    met) to resume from its newest complete checkpoint; 0 = a failure ends the run."""
    log_dir: Optional[str] = None
    """Folder of the jobs' stdout/stderr; null = `<project_name>/slurm`. One file per job; each start of it
    (a requeue) begins with a line naming the restart."""
    per_node_logs: bool = False
    """Write each node's output to a file of its own (`<log_dir>/<name>-<job>-node<N>.out`) instead of the job's
    log, which then holds the batch step's own lines (and a step killed for memory shows only as a killed task)."""
    array_parallelism: Optional[int] = None
    """Sweeps (`submit -m`): at most this many trials run at once (the job array's %K); null = no limit."""
    preprocess_job: bool = False
    """Tokenise and pack the data in a CPU job of its own first; training starts after it succeeds
    (`--dependency=afterok`, and is cancelled if it fails: `--kill-on-invalid-dep=yes`) and reuses its cache
    (data.cache_dir must be on a filesystem the nodes share)."""
    preprocess_partition: Optional[str] = None
    """Partition of the preprocessing job (null = the training partition). It gets none of the training job's GPU
    settings, qos, constraint, exclusivity or extra directives."""
    preprocess_time: Optional[str] = "1:00:00"
    """Time limit of the preprocessing job."""
    preprocess_cpus: int = 1
    """CPU cores of the preprocessing job (tokenising runs in one process)."""
    vllm_nodes: int = 1
    """With trainer.generation=vllm and vllm_mode=server: nodes of the job that run the vLLM server (its own srun
    step), beside cluster.nodes training nodes."""
    preprocess_mem: Optional[str] = None
    """Memory of the preprocessing job (null = the partition's default)."""


@dataclass
class RunConfig:
    project_name: str = ""
    """Name of the run and its output folder (a relative path is taken from the working directory); empty =
    `runs/<method>-<data>` (`runs/sft-chat` for data.path=samples/chat), stated by `plan`. [project_name]"""
    overwrite: bool = False
    """Start over when project_name holds a finished run: the old run is moved aside to
    `<project_name>.old-<time>`, never deleted. Without it a finished run is an error; an unfinished one resumes
    (training.resume_from). On an unfinished run it starts over (moving it aside) only when it cannot be resumed:
    with training.resume_from=none, or a configuration that changes what its checkpoints were trained on."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The base model."""
    data: DataConfig = field(default_factory=DataConfig)
    """The training data and how it is rendered."""
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    """The training method."""
    training: TrainingConfig = field(default_factory=TrainingConfig)
    """Optimisation."""
    peft: PeftConfig = field(default_factory=PeftConfig)
    """LoRA."""
    quantization: QuantizationConfig = field(default_factory=QuantizationConfig)
    """Quantized base weights (QLoRA)."""
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    """Numeric precision."""
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    """Processes, nodes and the distributed backend."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Metrics logging."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Benchmarks scored after training (lm-evaluation-harness)."""
    hub: HubConfig = field(default_factory=HubConfig)
    """Publishing to the Hugging Face Hub."""
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    """Where the run starts: this machine, or a Slurm cluster."""


REDACTED = "<redacted>"
