"""The distill trainer's own pieces, without training: the options it gives trl's DistillationConfig, the last
logged divergence it reports, and the plan-time teacher checks of launcher.rl.teacher (no teacher, a folder that is
missing or holds no model, the student itself, a vocabulary other than the student's)."""
import json

import pytest

from launcher.config.schema import RunConfig
from launcher.rl.teacher import check_teacher, model_folder, teacher_config_folder
from launcher.trainers.distill import distill_config, final_divergence


def model_dir(path, vocab: int, tokens: int | None = None):
    """A model folder as far as the plan reads it: config.json, and a tokenizer.json of `tokens` tokens."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": vocab}))
    if tokens is not None:
        vocab_map = {f"t{i}": i for i in range(tokens - 2)}
        added = [{"id": tokens - 2, "content": "<s>"}, {"id": tokens - 1, "content": "</s>"}]
        (path / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": vocab_map},
                                                         "added_tokens": added}))
    return path


def config(student, teacher) -> RunConfig:
    cfg = RunConfig()
    cfg.trainer.name = "distill"
    cfg.model.name_or_path = str(student)
    cfg.trainer.teacher = None if teacher is None else str(teacher)
    return cfg


def test_the_options_reach_trls_config(tmp_path):
    from launcher.hardware import Hardware
    from launcher.planning import make_plan

    teacher = model_dir(tmp_path / "teacher", 1024)
    overrides = ["recipe=distill/tiny_from_run", f"trainer.teacher={teacher}", f"project_name={tmp_path / 'run'}"]
    cfg = make_plan(None, overrides + ["trainer.beta=0.5", "trainer.temperature=0.7", "trainer.top_p=0.9",
                                       "data.max_completion_length=32", "trainer.max_tool_calls=2"], Hardware()).cfg
    args = distill_config(cfg, tmp_path, 40, False)
    assert (args.beta, args.temperature, args.top_p) == (0.5, 0.7, 0.9)
    assert (args.max_completion_length, args.max_tool_calling_iterations) == (32, 2)
    assert not args.use_vllm and not args.remove_unused_columns
    assert not args.bf16 and not args.gradient_checkpointing  # ours on CPU, not trl's defaults
    assert args.log_completions  # trl decodes the sampled texts only then; samples.jsonl is written from them

    # the method's defaults, resolved (and stated) by plan: the trainer reads the resolved configuration
    cfg = make_plan(None, overrides + ["trainer.beta=null", "data.max_completion_length=null",
                                       "logging.samples_steps=0"], Hardware()).cfg
    args = distill_config(cfg, tmp_path, 40, False)
    assert (args.beta, args.max_completion_length) == (1.0, 256)  # reverse KL; the online methods' 256 tokens
    assert not args.log_completions  # samples_steps=0: no samples.jsonl, nothing decoded


def test_the_last_logged_divergence_is_reported():
    history = [{"loss": 0.07, "entropy": 6.9, "step": 1},
               {"loss": 0.003, "entropy": 6.8, "completions/mean_length": 21.25,
                "completions/clipped_ratio": 0.75, "step": 10},
               {"train_loss": 0.02, "step": 10}]
    assert final_divergence(history) == {"final_divergence": 0.003, "final_entropy": 6.8,
                                         "final_completion_length": 21.25, "final_clipped_ratio": 0.75}
    assert final_divergence([]) == {}


def test_distill_needs_a_teacher(tmp_path):
    problems = check_teacher(config(model_dir(tmp_path / "student", 1024), None))
    assert [p.key for p in problems] == ["trainer.teacher"]
    assert "distill needs a teacher" in problems[0].message
    other = config(tmp_path / "student", None)
    other.trainer.name = "sft"
    assert check_teacher(other) == []  # only distill reads it


def test_a_missing_or_empty_teacher_folder_is_refused(tmp_path):
    student = model_dir(tmp_path / "student", 1024)
    problems = check_teacher(config(student, tmp_path / "nowhere"))
    assert len(problems) == 1 and "folder not found" in problems[0].message and "nowhere" in problems[0].message

    (tmp_path / "empty").mkdir()
    assert "not a model, adapter or run folder" in check_teacher(config(student, tmp_path / "empty"))[0].message

    run = tmp_path / "run"  # a run folder of ours that has saved nothing yet
    run.mkdir()
    (run / "config.yaml").write_text("trainer: {name: sft}\n")
    message = check_teacher(config(student, run))[0].message
    assert "holds no model yet" in message and "finish or resume" in message


def test_a_run_folder_teaches_with_its_final_model_else_its_latest_checkpoint(tmp_path):
    student = model_dir(tmp_path / "student", 1024, tokens=1024)
    run = tmp_path / "run"
    model_dir(run / "checkpoint-4", 1024, tokens=1024)
    (run / "checkpoint-4" / "trainer_state.json").write_text("{}")
    (run / "config.yaml").write_text("trainer: {name: sft}\n")
    assert model_folder(str(run)) == run / "checkpoint-4"
    assert check_teacher(config(student, run)) == []
    (run / "config.json").write_text(json.dumps({"vocab_size": 1024}))  # the finished run's own model
    assert model_folder(str(run)) == run and teacher_config_folder(config(student, run)) == run


@pytest.mark.parametrize("teacher_vocab, teacher_tokens, what", [
    (49152, 1024, "49152 tokens (vocab_size in config.json)"),
    (1024, 1000, "1000 tokens (tokenizer.json tokens)"),
])
def test_a_teacher_of_another_vocabulary_is_refused_naming_both(tmp_path, teacher_vocab, teacher_tokens, what):
    student = model_dir(tmp_path / "student", 1024, tokens=1024)
    teacher = model_dir(tmp_path / "teacher", teacher_vocab, tokens=teacher_tokens)
    problems = check_teacher(config(student, teacher))
    assert len(problems) == 1 and problems[0].key == "trainer.teacher / model.name_or_path"
    message = problems[0].message
    assert str(teacher) in message and str(student) in message
    assert what in message and "has 1024" in message
    assert "must share a tokenizer" in message and "same series" in message


def test_an_adapter_teacher_is_measured_on_its_base(tmp_path):
    student = model_dir(tmp_path / "student", 1024)
    base = model_dir(tmp_path / "big", 49152)
    adapter = tmp_path / "adapter-run"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
    assert teacher_config_folder(config(student, adapter)) == base
    assert "49152 tokens" in check_teacher(config(student, adapter))[0].message


def test_the_student_cannot_teach_itself_and_a_hub_id_is_left_to_the_worker(tmp_path):
    student = model_dir(tmp_path / "student", 1024)
    assert "the teacher is the student itself" in check_teacher(config(student, student))[0].message
    assert check_teacher(config(student, "HuggingFaceTB/SmolLM2-360M-Instruct")) == []
    assert teacher_config_folder(config(student, "HuggingFaceTB/SmolLM2-360M-Instruct")) is None
    assert "neither an existing folder nor a hub id" in check_teacher(config(student, "not a model!"))[0].message
