"""`plan` for the online methods (grpo, rloo, distill): the method defaults it resolves and states, and every bad
input the issue names refused with exit 2 and the key, before any weight loads (plan loads none: these run in
about a second each)."""
from __future__ import annotations

import json

import pytest

from launcher import cli
from launcher.config.errors import ConfigError
from launcher.hardware import Hardware
from launcher.planning import make_plan
from tests.unit.helpers import CPU, SAMPLES

GPUS = Hardware(gpus=2, gpu_name="H100", gpu_memory_gib=80, bf16=True)


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def grpo(tmp_path, *overrides, recipe="grpo/format_tiny", hw=CPU):
    return make_plan(None, [f"recipe={recipe}", f"project_name={tmp_path / 'run'}", *overrides], hw)


def problems(tmp_path, *overrides, **kwargs) -> list[str]:
    with pytest.raises(ConfigError) as err:
        grpo(tmp_path, *overrides, **kwargs)
    return [str(p) for p in err.value.problems]


def test_defaults_resolved_and_stated(tmp_path):
    p = grpo(tmp_path, "data.max_completion_length=null")
    t = p.cfg.trainer
    assert (t.beta, t.loss_type, p.cfg.data.max_completion_length) == (0.0, "dapo", 256)
    notes = "\n".join(p.notes)
    assert "grpo: trainer.beta null -> 0 (no KL penalty and no reference model loaded)" in notes
    assert "grpo: trainer.loss_type null -> dapo" in notes
    assert "grpo: data.max_completion_length null -> 256 generated tokens at most" in notes
    # batch 4 x 1 process x accumulation 2 = 8 completions a round: 2 prompts' groups of 4
    assert "grpo: each round samples 2 prompt(s) x 4 completions of up to 256 tokens" in notes
    rloo = grpo(tmp_path, "trainer.beta=null", recipe="rloo/format_tiny")
    assert rloo.cfg.trainer.beta == 0.05
    dpo = make_plan(None, ["recipe=dpo/preference_tiny", f"project_name={tmp_path / 'dpo'}", "trainer.beta=null"], CPU)
    assert (dpo.cfg.trainer.beta, dpo.cfg.trainer.loss_type) == (0.1, "sigmoid")


def test_reference_model_stated_when_beta_is_positive(tmp_path):
    full = "\n".join(grpo(tmp_path, "trainer.beta=0.04").notes)
    assert "reference: a frozen copy of the base model (counted in the memory estimate)" in full
    lora = "\n".join(grpo(tmp_path, "trainer.beta=0.04", "peft=lora").notes)
    assert "reference: the base with the adapter switched off" in lora


def test_num_generations_must_divide_the_round(tmp_path):
    found = problems(tmp_path, "trainer.num_generations=3")
    assert found == ["trainer.num_generations / training.batch_size: a round of generation makes 1 process(es) x "
                     "batch_size 4 x gradient_accumulation 2 = 8 completions, which does not divide into groups of "
                     "num_generations=3 (each prompt's group is scored together): make that product a multiple of "
                     "3, e.g. training.batch_size=3 or trainer.num_generations=2"]
    # the world size counts: 2 processes make a round of 16, which groups of 8 divide
    assert grpo(tmp_path, "trainer.num_generations=8", "distributed=ddp", "distributed.num_processes=2")


def test_vllm_is_refused_on_cpu(tmp_path):
    assert problems(tmp_path, "trainer.generation=vllm") == [
        "trainer.generation: vllm generates with CUDA kernels and this machine has no GPU: use "
        "trainer.generation=transformers (the default)"]


def test_vllm_without_the_package_on_gpus(tmp_path):
    pytest.importorskip("launcher")  # (vllm is not installed here; with it the plan would pass)
    found = problems(tmp_path, "trainer.generation=vllm", hw=GPUS)
    assert any(p.startswith("trainer.generation: vllm is not installed: pip install tunelaunch[vllm]") for p in found)


def test_preference_data_is_refused_naming_its_trainers(tmp_path):
    found = problems(tmp_path, f"data.path={SAMPLES / 'preference'}")
    assert len(found) == 1 and found[0].startswith("data.format: ")
    assert "rows are preference (prompt, chosen, rejected) (read by trainer=reward, dpo, orpo, cpo, simpo), which " \
           "the grpo trainer cannot use; it takes prompt_only" in found[0]


def test_a_prompt_ending_with_the_answer_is_refused(tmp_path):
    data = tmp_path / "chats.jsonl"
    data.write_text(json.dumps({"prompt": [{"role": "user", "content": "Hi"},
                                           {"role": "assistant", "content": "Hello"}], "answer": "x"}) + "\n")
    found = problems(tmp_path, f"data.path={data}")
    assert any("row 1: prompt: the last turn must be the user turn the model answers, got 'assistant'" in p
               for p in found), found


def test_prompt_column_mapped_and_other_columns_kept(tmp_path):
    data = tmp_path / "qa.csv"
    data.write_text("question,solution\nWhat is 2 + 2?,4\nWhat is 3 + 5?,8\n")
    p = grpo(tmp_path, f"data.path={data}", "data.column_mapping.prompt_text_column=question",
             "trainer.rewards=[exact_match]", "trainer.answer_column=solution")
    assert p.data.format == "prompt_only"
    assert p.data.train.rows[0] == {"prompt": "What is 2 + 2?", "solution": "4"}


REWARDS = '''
def brief(completions, **kwargs):
    return [1.0 / (1 + len(str(c))) for c in completions]

def no_kwargs(completions):
    return [0.0 for c in completions]

def needs_solution(completions, solution, **kwargs):
    return [float(str(c) == s) for c, s in zip(completions, solution)]
'''


@pytest.mark.parametrize("entry, expected", [
    ("missing_module:f", "trainer.rewards: missing_module:f: module 'missing_module' not found"),
    ("my_rewards.py:no_kwargs", "has the wrong signature: trl calls it as f(prompts=, completions=, "
                                "completion_ids=, **columns, trainer_state=, log_extra=, log_metric=); accept **kwargs"),
    ("my_rewards.py:needs_solution", "reads the column 'solution', which the data does not have (its columns: "
                                     "prompt, answer)"),
    ("formt", "'formt' is not a shipped reward"),
])
def test_bad_rewards_exit_2_before_anything_loads(tmp_path, capsys, entry, expected):
    (tmp_path / "my_rewards.py").write_text(REWARDS)
    code = cli.main(["plan", "recipe=grpo/format_tiny", f"project_name={tmp_path / 'run'}",
                     f"trainer.rewards=[{entry}]"])
    err = capsys.readouterr()
    assert code == 2, err
    assert expected in err.out + err.err
    assert not (tmp_path / "run").exists()


def test_a_user_reward_with_the_right_signature_passes(tmp_path):
    (tmp_path / "my_rewards.py").write_text(REWARDS)
    p = grpo(tmp_path, "trainer.rewards=[format,my_rewards.py:brief]", "trainer.reward_weights=[1.0,0.5]")
    # made absolute: the workers read it from config.yaml wherever they start
    assert p.cfg.trainer.rewards == ["format", f"{tmp_path / 'my_rewards.py'}:brief"]


def test_rewards_are_required_and_weights_counted(tmp_path):
    found = problems(tmp_path, "trainer.rewards=[]")
    assert any(p.startswith("trainer.rewards: grpo needs at least one reward function") for p in found)
    found = problems(tmp_path, "trainer.reward_weights=[1.0,2.0]")
    assert any(p.startswith("trainer.reward_weights: 2 weights for 1 rewards") for p in found), found


def test_loss_names_come_from_trl_with_a_did_you_mean(tmp_path):
    assert problems(tmp_path, "trainer.loss_type=dr_grop") == [
        "trainer.loss_type: unknown GRPO loss 'dr_grop'. Did you mean 'dr_grpo'? Known: grpo, dr_grpo, dapo, bnpo, "
        "cispo, sapo, luspo, vespo"]
    assert grpo(tmp_path, "trainer.loss_type=luspo", "trainer.importance_sampling_level=sequence")
    assert problems(tmp_path, "trainer.loss_type=luspo")[0].startswith(
        "trainer.loss_type / trainer.importance_sampling_level: luspo is a sequence-level loss")


def test_sampling_settings_checked(tmp_path):
    found = problems(tmp_path, "trainer.num_generations=1", "training.batch_size=1", "trainer.temperature=0",
                     "trainer.top_p=1.5", "trainer.epsilon_high=0.1", "trainer.beta=-1")
    keys = [p.split(":")[0] for p in found]
    assert keys == ["trainer.beta", "trainer.num_generations", "trainer.temperature", "trainer.top_p",
                    "trainer.epsilon_high"], found


def test_prompt_and_completion_within_the_model_positions(tmp_path):
    found = problems(tmp_path, "data.max_prompt_length=400", "data.max_completion_length=200")
    assert found == ["data.max_prompt_length / data.max_completion_length: 400 + 200 = 600 tokens exceed the 512 "
                     f"positions of {grpo.__globals__['CPU'] and p_model(tmp_path)}: lower one of them"]


def p_model(tmp_path) -> str:
    return grpo(tmp_path).cfg.model.name_or_path


def test_the_grpo_keys_are_unused_by_sft(tmp_path):
    p = make_plan(None, ["recipe=sft/chat_tiny", f"project_name={tmp_path / 'sft'}", "trainer.num_generations=4",
                         "trainer.rewards=[format]"], CPU)
    notes = "\n".join(p.notes)
    assert "trainer.num_generations: 4 is not used by the sft trainer (read by grpo, rloo)" in notes
    assert "trainer.rewards: ['format'] is not used by the sft trainer (read by grpo, rloo)" in notes
