"""The one resolution pass (launcher/resolve.py): every `auto` becomes concrete for the machine, in the stated
order, each decision a note; afterwards the configuration is the one source of truth.

The backend and process count it chooses are tested as the launch plan they make, in distributed/test_launch.py."""
import pytest

from launcher import hardware, resolve as resolve_module
from launcher.hardware import Hardware
from launcher.resolve import Resolution, resolve
from tests.unit.helpers import CPU, H100x8, SAMPLES, plan, problems, valid_cfg


def test_the_steps_run_in_the_documented_order(monkeypatch):
    calls = []
    for step in ("_precision", "_attention", "_checkpointing", "_kernels", "_block_size", "_template", "_packing",
                 "_processes", "_backend", "_accumulation"):
        monkeypatch.setattr(resolve_module, step, lambda *a, _s=step: calls.append(_s))
    assert isinstance(resolve(valid_cfg(), CPU), Resolution)
    assert calls == ["_precision", "_attention", "_checkpointing", "_kernels", "_block_size", "_template", "_packing",
                     "_processes", "_backend", "_accumulation"]
    doc = resolve_module.__doc__
    words = ["precision", "attention", "gradient checkpointing", "Liger", "block size", "chat template", "processes",
             "backend", "accumulation"]
    assert [doc.index(w) for w in words] == sorted(doc.index(w) for w in words)


def test_nothing_auto_is_left():
    for hw in (CPU, H100x8):
        cfg = valid_cfg()
        resolve(cfg, hw)
        assert "auto" not in (cfg.precision.mixed_precision, cfg.model.attn_implementation,
                              cfg.training.gradient_checkpointing, cfg.distributed.backend, cfg.model.liger_kernel)
        assert cfg.data.block_size > 0 and cfg.distributed.num_processes >= 1


# ---- precision, attention, checkpointing

@pytest.mark.parametrize("precision", ["auto", "bf16", "fp16"])
def test_cpu_precision_becomes_fp32_with_a_note(precision):
    cfg = valid_cfg()
    cfg.precision.mixed_precision = precision
    res = resolve(cfg, CPU)
    assert res.problems == []
    assert cfg.precision.mixed_precision == "fp32"
    assert any(n.startswith("precision:") and precision in n and "fp32" in n for n in res.notes)


def test_cpu_flash_attention_falls_back_to_sdpa_with_a_note():
    cfg = valid_cfg()
    cfg.model.attn_implementation = "flash_attention_2"
    notes = resolve(cfg, CPU).notes
    assert cfg.model.attn_implementation == "sdpa"
    assert any("flash_attention_2" in n and "sdpa" in n for n in notes)


def test_cpu_auto_values():
    cfg = valid_cfg()
    notes = resolve(cfg, CPU).notes
    assert cfg.model.attn_implementation == "sdpa"
    assert cfg.training.gradient_checkpointing is False
    assert cfg.data.block_size == 1024  # -1 -> min(1024, 2048)
    assert any("gradient checkpointing" in n for n in notes)


def test_explicit_gradient_checkpointing_is_kept():
    cfg = valid_cfg()
    cfg.training.gradient_checkpointing = True
    resolve(cfg, CPU)
    assert cfg.training.gradient_checkpointing is True


def test_eight_h100_auto_values():
    cfg = valid_cfg()
    res = resolve(cfg, H100x8)
    assert res.problems == []
    assert cfg.precision.mixed_precision == "bf16"
    assert cfg.model.attn_implementation == "flash_attention_2"
    assert cfg.training.gradient_checkpointing is True
    assert any("bf16" in n and "H100" in n for n in res.notes)


def test_gpu_without_bf16_gets_fp16():
    cfg = valid_cfg()
    cfg.precision.mixed_precision = "bf16"
    notes = resolve(cfg, Hardware(gpus=1, gpu_name="T4", gpu_memory_gib=16, bf16=False, flash_attn=False)).notes
    assert cfg.precision.mixed_precision == "fp16"
    assert cfg.model.attn_implementation == "sdpa"
    assert any("T4" in n for n in notes)


# ---- block size

def test_block_size_capped_by_local_model_positions(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text('{"max_position_embeddings": 256}')
    cfg = valid_cfg()
    cfg.model.name_or_path = str(tmp_path / "m")
    res = resolve(cfg, CPU)
    assert res.problems == [] and cfg.data.block_size == 256
    cfg = valid_cfg()
    cfg.model.name_or_path = str(tmp_path / "m")
    cfg.data.block_size = 512
    assert [p.key for p in resolve(cfg, CPU).problems] == ["data.block_size"]


# ---- chat template and packing: stated here, once the data's format and the block size are known

def test_alpaca_rows_under_none_get_the_alpaca_template():
    cfg = valid_cfg()
    notes = resolve(cfg, CPU, data_format="alpaca").notes
    assert cfg.data.chat_template == "alpaca"
    assert "data: Alpaca rows with chat_template none are rendered with the alpaca template" in notes
    for fmt, template in (("messages", "none"), ("alpaca", "chatml"), (None, "none")):
        cfg = valid_cfg()
        cfg.data.chat_template = template
        notes = resolve(cfg, CPU, data_format=fmt).notes
        assert cfg.data.chat_template == template and not any("Alpaca" in n for n in notes)


def test_the_alpaca_template_reaches_the_plan(tmp_path):
    p = plan(tmp_path, f"data.path={SAMPLES / 'alpaca'}", "data.chat_template=none", "data.valid_split=null")
    assert p.data.format == "alpaca" and p.cfg.data.chat_template == "alpaca"
    assert p.notes.count("data: Alpaca rows with chat_template none are rendered with the alpaca template") == 1


@pytest.mark.parametrize("wrapped", [False, True])
def test_packing_is_described_with_the_resolved_length_and_attention(wrapped):
    cfg = valid_cfg()
    cfg.data.packing, cfg.data.wrap_packed_sequences = True, wrapped
    notes = [n for n in resolve(cfg, CPU).notes if n.startswith("data: packing")]
    assert len(notes) == 1
    if wrapped:
        assert "concatenated and cut into blocks of 1024 tokens" in notes[0]  # block_size -1 -> 1024
    else:
        assert "best-fit into sequences of up to 1024 tokens" in notes[0] and "sdpa runs each sample on its own" in notes[0]
    cfg = valid_cfg()
    cfg.data.packing, cfg.data.chunk_size = True, 256
    assert any("up to 256 tokens" in n for n in resolve(cfg, CPU).notes)


def test_packing_is_not_described_without_packing_or_for_another_trainer():
    cfg = valid_cfg()
    assert not any(n.startswith("data: packing") for n in resolve(cfg, CPU).notes)
    cfg = valid_cfg()
    cfg.data.packing, cfg.trainer.name = True, "grpo"
    assert not any(n.startswith("data: packing") for n in resolve(cfg, CPU).notes)
    assert cfg.data.chunk_size is None


@pytest.mark.parametrize("trainer", ["dpo", "orpo", "cpo", "simpo", "reward", "kto"])
def test_the_pairwise_trainers_pack_whole_examples_at_the_resolved_length(trainer):
    cfg = valid_cfg()
    cfg.data.packing, cfg.trainer.name = True, trainer
    notes = [n for n in resolve(cfg, CPU).notes if n.startswith("data: packing")]
    assert cfg.data.chunk_size == cfg.data.block_size == 1024  # the one packed length, resolved
    assert len(notes) == 1 and "up to 1024 tokens" in notes[0]
    assert ("chosen and rejected" in notes[0]) == (trainer != "kto")
    cfg = valid_cfg()
    cfg.data.packing, cfg.data.wrap_packed_sequences, cfg.trainer.name = True, True, trainer
    assert [p.key for p in resolve(cfg, CPU).problems] == ["data.wrap_packed_sequences"]


# ---- processes

def test_num_processes_null_is_one_per_gpu():
    for hw, expected in ((CPU, 1), (H100x8, 8)):
        cfg = valid_cfg()
        assert cfg.distributed.num_processes is None
        resolve(cfg, hw)
        assert cfg.distributed.num_processes == expected
    cfg = valid_cfg()
    cfg.distributed.num_processes = 2
    resolve(cfg, H100x8)
    assert cfg.distributed.num_processes == 2  # a stated count is kept


# ---- accumulation from a global batch

def test_global_batch_size_fixes_the_accumulation_over_the_world(tmp_path):
    p = plan(tmp_path, "distributed=ddp", "distributed.num_processes=2", "training.global_batch_size=8")
    assert (p.cfg.training.batch_size, p.cfg.training.gradient_accumulation) == (2, 2)
    assert any("global 8 = 2 per device x 2 process(es) x 2 accumulation" in n for n in p.notes)
    assert any("not a multiple of batch_size 2 x world size 2" in s for s in problems(
        tmp_path, "distributed=ddp", "distributed.num_processes=2", "training.global_batch_size=6"))


def test_the_world_of_the_global_batch_is_the_resolved_one():
    """Accumulation comes after the processes: on 8 GPUs with num_processes null the world is 8."""
    cfg = valid_cfg()
    cfg.training.global_batch_size, cfg.training.batch_size = 64, 2
    res = resolve(cfg, H100x8)
    assert res.problems == [] and cfg.training.gradient_accumulation == 4


# ---- logging

def test_wandb_without_a_key_runs_offline_and_says_so(monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = valid_cfg()
    cfg.logging.report_to = "wandb"
    assert any(n.startswith("logging: wandb runs offline") for n in resolve(cfg, CPU).notes)
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = valid_cfg()
    cfg.logging.report_to = "wandb"
    assert not any(n.startswith("logging: wandb") for n in resolve(cfg, CPU).notes)


def test_plan_states_what_deterministic_runs_reproduce():
    from launcher.hardware import Hardware
    from launcher.resolve import resolve
    from tests.unit.helpers import valid_cfg

    cfg = valid_cfg()
    assert not [n for n in resolve(cfg, Hardware()).notes if n.startswith("reproducibility")]
    cfg = valid_cfg()
    cfg.training.deterministic = True
    cpu = [n for n in resolve(cfg, Hardware()).notes if n.startswith("reproducibility")]
    assert len(cpu) == 1 and "on CPU" in cpu[0] and "identical weights" in cpu[0]
    cfg = valid_cfg()
    cfg.training.deterministic = True
    gpu = [n for n in resolve(cfg, Hardware(gpus=8, gpu_name="H100", gpu_memory_gib=80, bf16=True)).notes
           if n.startswith("reproducibility")]
    assert len(gpu) == 1 and "same machine, GPU model" in gpu[0]


# ---- GPU speed options: Liger kernels, torch.compile, packing's attention path

H100_LIGER = Hardware(gpus=1, gpu_name="H100", gpu_memory_gib=80, bf16=True, flash_attn=True, liger=True)


@pytest.mark.parametrize("asked", ["auto", True])
def test_liger_is_off_on_cpu_and_the_note_says_what_a_gpu_would_get(asked):
    cfg = valid_cfg()
    cfg.model.liger_kernel = asked
    res = resolve(cfg, Hardware(liger=True))
    assert cfg.model.liger_kernel is False and res.problems == []
    note = next(n for n in res.notes if n.startswith("kernels: Liger"))
    assert "off" in note and "GPU only" in note and "auto turns them on" in note


def test_liger_auto_is_on_with_a_gpu_and_the_package_and_reaches_the_trainer(tmp_path):
    from launcher.trainers.common import training_kwargs

    cfg = valid_cfg()
    res = resolve(cfg, H100_LIGER)
    assert cfg.model.liger_kernel is True
    assert any(n.startswith("kernels: Liger auto -> on") for n in res.notes)
    kwargs = training_kwargs(cfg, tmp_path, 10, False, 1)
    assert kwargs["use_liger_kernel"] is True and kwargs["torch_compile"] is False


def test_liger_auto_without_the_package_says_how_to_install_it():
    cfg = valid_cfg()
    res = resolve(cfg, H100x8)
    assert cfg.model.liger_kernel is False
    assert any("pip install liger-kernel" in n for n in res.notes)


def test_liger_asked_for_on_a_gpu_without_the_package_is_a_problem_naming_the_key():
    cfg = valid_cfg()
    cfg.model.liger_kernel = True
    res = resolve(cfg, H100x8)
    assert [p.key for p in res.problems] == ["model.liger_kernel"]
    assert "pip install liger-kernel" in str(res.problems[0])


def test_compile_is_stated_on_a_gpu_and_warns_about_recompiling_unpacked_data():
    cfg = valid_cfg()
    assert any(n.startswith("compile: off (model.compile=true") for n in resolve(cfg, H100x8).notes)
    cfg = valid_cfg()
    cfg.model.compile = True
    note = next(n for n in resolve(cfg, H100x8).notes if n.startswith("compile:"))
    assert "recompiles" in note


@pytest.mark.parametrize("hw, kernel", [(CPU, "sdpa runs each sample on its own"),
                                        (H100_LIGER, "variable-length kernel runs"),
                                        (Hardware(gpus=1, gpu_name="H100", bf16=True), "torch.nn.attention.varlen")])
def test_packing_note_names_the_attention_path(hw, kernel):
    cfg = valid_cfg()
    cfg.data.packing = True
    notes = resolve(cfg, hw).notes
    assert any(n.startswith("data: packing:") and kernel in n for n in notes), notes


# ---- what the workers used to decide, resolved once

@pytest.mark.parametrize("trainer,alpha", [("cpo", 1.0), ("simpo", 0.0)])
def test_cpo_alpha_null_becomes_the_methods_weight_and_is_stated(trainer, alpha):
    cfg = valid_cfg()
    cfg.trainer.name = trainer
    notes = resolve(cfg, CPU).notes
    assert cfg.trainer.cpo_alpha == alpha
    assert any(n.startswith(f"{trainer}: trainer.cpo_alpha null -> {alpha:g}") for n in notes)
    cfg = valid_cfg()
    cfg.trainer.name, cfg.trainer.cpo_alpha = trainer, 0.5
    resolve(cfg, CPU)
    assert cfg.trainer.cpo_alpha == 0.5


@pytest.mark.parametrize("lora,precision,expected", [
    (True, "bf16", "bf16"), (True, "fp16", "fp32"), (False, "bf16", "fp32"), (True, "fp32", "fp32"),
])
def test_the_base_weights_dtype_is_resolved_and_stated(lora, precision, expected):
    cfg = valid_cfg()
    cfg.peft.enabled, cfg.precision.mixed_precision = lora, precision
    notes = resolve(cfg, H100x8).notes
    assert cfg.precision.weights_dtype == expected
    assert any(n.startswith(f"weights: precision.weights_dtype auto -> {expected}") for n in notes)


def test_half_precision_weights_for_a_full_fine_tune_are_refused_with_the_fix():
    cfg = valid_cfg()
    cfg.peft.enabled, cfg.precision.weights_dtype = False, "bf16"
    problems = resolve(cfg, H100x8).problems
    assert [p.key for p in problems] == ["precision.weights_dtype"] and "fp32 master weights" in problems[0].message


def test_automatic_logging_is_planned_from_the_rows_and_stated():
    cfg = valid_cfg()
    cfg.training.batch_size, cfg.training.gradient_accumulation, cfg.training.epochs = 2, 1, 3
    notes = resolve(cfg, CPU, train_rows=400).notes
    assert cfg.logging.steps == 600 // 25  # 200 steps an epoch, 3 epochs
    assert "logging: steps -1 -> every 24 of about 600 optimizer step(s)" in notes
    cfg = valid_cfg()
    cfg.training.max_steps = 10
    resolve(cfg, CPU)
    assert cfg.logging.steps == 1
    cfg = valid_cfg()  # the data is not at hand (a hub dataset from a login node): the workers count it
    notes = resolve(cfg, CPU).notes
    assert cfg.logging.steps == -1 and any(n.startswith("logging: steps -1 stays automatic") for n in notes)
    cfg = valid_cfg()
    cfg.logging.steps = 7
    resolve(cfg, CPU, train_rows=400)
    assert cfg.logging.steps == 7


# ---- data processes and streaming

def test_num_proc_null_is_the_cores_given_with_enough_rows_each_and_stated(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    cfg = valid_cfg()
    out = resolve(cfg, CPU, train_rows=5000)  # 2000 rows per process at least: 2 of the 4 cores
    assert cfg.data.num_proc == 2
    assert any("num_proc null -> 2 tokenising process(es) (5000 training rows over the 4 CPU core(s)" in n
               for n in out.notes), out.notes
    cfg = valid_cfg()
    resolve(cfg, CPU, train_rows=100)
    assert cfg.data.num_proc == 1
    cfg = valid_cfg()
    resolve(cfg, CPU)  # rows not counted here (a hub dataset): every core
    assert cfg.data.num_proc == 4


def test_num_proc_null_is_one_process_on_two_cores_whatever_the_rows(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    cfg = valid_cfg()
    out = resolve(cfg, CPU, train_rows=1_000_000)
    assert cfg.data.num_proc == 1
    assert any("num_proc null -> 1 tokenising process(es) (2 CPU core(s) given to this job: one process, whose "
               "tokenizer already encodes on every core" in n for n in out.notes), out.notes


def test_a_slurm_allocation_gives_its_own_cores_not_the_nodes(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "6")
    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert hardware.cores_given() == 6
    monkeypatch.delenv("SLURM_JOB_ID")
    assert hardware.cores_given() == 64


def test_num_proc_planned_for_slurm_is_left_to_each_job(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    cfg = valid_cfg()
    cfg.cluster.kind = "slurm"
    cfg.cluster.preprocess_cpus = 8
    out = Resolution()
    resolve_module._tokenisers(cfg, 100_000, out)
    assert cfg.data.num_proc is None
    assert any("each Slurm job" in n and "preprocess_cpus=8" in n for n in out.notes), out.notes


def test_an_explicit_num_proc_is_kept_and_zero_refused():
    cfg = valid_cfg()
    cfg.data.num_proc = 3
    resolve(cfg, CPU, train_rows=10)
    assert cfg.data.num_proc == 3
    cfg = valid_cfg()
    cfg.data.num_proc = 0
    assert any(p.key == "data.num_proc" for p in resolve(cfg, CPU).problems)


def test_streaming_needs_max_steps_and_says_why():
    cfg = valid_cfg()
    cfg.data.streaming = True
    out = resolve(cfg, CPU)
    [problem] = [p for p in out.problems if p.key == "training.max_steps"]
    assert "unknown up front" in problem.message and "training.max_steps=" in problem.message
    cfg = valid_cfg()
    cfg.data.streaming = True
    cfg.training.max_steps = 20
    out = resolve(cfg, CPU)
    assert not out.problems
    assert any(n.startswith("data: streaming: rows are read (in file order), tokenised") and "max_steps=20" in n
               for n in out.notes)


def test_a_shuffle_window_is_stated_refused_below_zero_and_noted_unused_without_streaming():
    cfg = valid_cfg()
    cfg.data.streaming, cfg.training.max_steps, cfg.data.shuffle_window = True, 5, 500
    out = resolve(cfg, CPU)
    assert any("rows are read (shuffled within windows of 500 rows (seed" in n for n in out.notes), out.notes
    cfg.data.shuffle_window = -1
    [problem] = [p for p in resolve(cfg, CPU).problems if p.key == "data.shuffle_window"]
    assert "must be 0 (file order) or a number of rows, got -1" in problem.message
    cfg = valid_cfg()
    cfg.data.shuffle_window = 500
    out = resolve(cfg, CPU)
    assert not out.problems and any(n.startswith("data.shuffle_window applies to data.streaming only") for n in out.notes)


@pytest.mark.parametrize("trainer", ["dpo", "kto", "grpo"])
def test_streaming_is_refused_for_the_trainers_that_read_data_whole(trainer):
    cfg = valid_cfg()
    cfg.trainer.name = trainer
    cfg.data.streaming = True
    cfg.training.max_steps = 5
    out = Resolution()
    resolve_module._streaming(cfg, out)
    [problem] = out.problems
    assert problem.key == "data.streaming" and f"the {trainer} trainer reads its data whole" in problem.message
    assert "default, sft" in problem.message or "sft, default" in problem.message


def test_streaming_wrapped_packing_is_refused_and_a_mixture_is_not():
    cfg = valid_cfg()
    cfg.data.streaming, cfg.training.max_steps = True, 5
    cfg.data.packing = cfg.data.wrap_packed_sequences = True
    from launcher.config.schema import DataSource
    cfg.data.datasets = [DataSource(path="a"), DataSource(path="b")]
    out = Resolution()
    resolve_module._streaming(cfg, out)
    assert {p.key for p in out.problems} == {"data.wrap_packed_sequences"}
