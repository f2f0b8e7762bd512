"""The reward functions of grpo/rloo: the shipped ones on hand-written completions, the plan-time checks (one test
per problem they report), and what the trainer is given."""
import json

import pytest

from launcher.config.schema import RunConfig
from launcher.rl.rewards import check_rewards, reward_functions
from launcher.rl.tools import check_tools, tool_functions
from tests.conftest import REPO, cli_env


def config(*rewards, **trainer) -> RunConfig:
    cfg = RunConfig()
    cfg.trainer.name = "grpo"
    cfg.trainer.rewards = list(rewards)
    for key, value in trainer.items():
        setattr(cfg.trainer, key, value)
    return cfg


def shipped(name, **trainer):
    (function,), (processing_class,) = reward_functions(config(name, **trainer))
    assert function.__name__ == name and processing_class is None
    return function


def chat(text):
    return [{"role": "assistant", "content": text}]


ROWS = [{"prompt": "What is 6 x 7?", "answer": "42"}]


def messages(cfg, rows=ROWS, conversational=False):
    return [str(p) for p in check_rewards(cfg, rows, conversational)]


# ---- the shipped functions

def test_format_searches_the_pattern_across_lines():
    format_ = shipped("format")
    completions = ["<answer>7</answer>", "<answer>line one\nline two</answer>", "7", "x <answer>7</answer>"]
    assert format_(completions=completions) == [1.0, 1.0, 0.0, 0.0]
    assert format_(completions=[chat("<answer>7</answer>"), chat("no")]) == [1.0, 0.0]


def test_length_is_flat_within_the_tolerance_and_falls_linearly_to_zero():
    length = shipped("length", length_target=10, length_tolerance=2)
    ids = [[0] * n for n in (10, 12, 8, 17, 22, 40, 0)]
    # 17 tokens: 7 from the target, 5 beyond the tolerance: 1 - 5/10; 22 and beyond: 0; 0 tokens: 1 - 8/10
    assert length(completion_ids=ids, completions=[""] * len(ids)) == pytest.approx([1, 1, 1, 0.5, 0, 0, 0.2])


def test_exact_match_compares_the_last_tagged_answer_with_the_column():
    exact = shipped("exact_match", answer_pattern=r"<answer>(.*?)</answer>")
    completions = ["<answer>1</answer> then <answer> 42 </answer>", "<answer>41</answer>", "42",
                   chat("<answer>42</answer>")]
    assert exact(completions=completions, answer=["42", "42", "42", 42]) == [1.0, 0.0, 0.0, 1.0]


def test_exact_match_without_a_pattern_takes_the_whole_completion_and_has_no_opinion_without_a_gold():
    exact = shipped("exact_match")
    assert exact(completions=[" 42\n", "the answer is 42", "42"], answer=["42", "42", None]) == [1.0, 0.0, None]


def test_exact_match_reads_the_configured_column():
    exact = shipped("exact_match", answer_column="solution")
    assert exact(completions=["7", "8"], solution=["7", "7"]) == [1.0, 0.0]


def test_math_judges_equal_answers_in_any_notation():
    math = shipped("math", answer_pattern=r"<answer>(.*?)</answer>")
    completions = ["<answer>$\\frac{1}{2}$</answer>", "<answer>0.5</answer>", "<answer>3</answer>", "0.5",
                   chat("<answer>$\\frac{1}{2}$</answer>")]
    assert math(completions=completions, answer=["1/2"] * 5) == [1.0, 1.0, 0.0, 0.0, 1.0]


def test_math_has_no_opinion_when_the_gold_does_not_parse():
    math = shipped("math")
    assert math(completions=["7", "7", "7"], answer=["no number here", None, "$7$"]) == [None, None, 1.0]


def test_json_schema_scores_valid_parsed_and_broken_json(tmp_path):
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}))
    score = shipped("json_schema", json_schema=str(schema))
    completions = ['{"name": "Ada"}', '{"name": 3}', "not json {", chat('{"name": "Ada"}')]
    assert score(completions=completions) == [1.0, 0.5, 0.0, 1.0]


def test_reward_functions_keeps_the_order_and_the_names(tmp_path, monkeypatch):
    (tmp_path / "mine.py").write_text("def brevity(completions, **kwargs):\n    return [1.0 for _ in completions]\n")
    monkeypatch.chdir(tmp_path)
    functions, classes = reward_functions(config("math", "mine.py:brevity", "format"))
    assert [f.__name__ for f in functions] == ["math", "brevity", "format"]
    assert classes == [None, None, None]


def test_the_example_reward_prefers_shorter_completions(monkeypatch):
    monkeypatch.chdir(REPO)
    (brevity,), _ = reward_functions(config("examples/rewards.py:brevity"))
    assert brevity(completions=["", "x" * 200, chat("x" * 600)]) == [1.0, 0.5, 0.25]
    assert messages(config("examples/rewards.py:brevity")) == []


# ---- plan-time checks

def test_grpo_without_rewards_is_refused_and_sft_is_not_checked():
    assert messages(config())[0].startswith("trainer.rewards: grpo needs at least one reward function: a shipped "
                                            "one (format, length, exact_match, math, json_schema)")
    cfg = config("nonsense")
    cfg.trainer.name = "sft"
    assert messages(cfg) == []


def test_an_unknown_name_suggests_a_shipped_one():
    assert messages(config("formt")) == [
        "trainer.rewards: 'formt' is not a shipped reward (format, length, exact_match, math, json_schema), a function "
        "(package.module:function or path/to/file.py:function) or a reward model (run:PATH). Did you mean 'format'?"]


def test_a_reference_that_does_not_import_says_so():
    assert messages(config("no_such_module_xyz:f")) == [
        "trainer.rewards: no_such_module_xyz:f: module 'no_such_module_xyz' not found (from "
        f"{__import__('os').getcwd()}; a file is written path/to/file.py:function)"]


def user_function(tmp_path, monkeypatch, body: str) -> str:
    (tmp_path / "my_rewards.py").write_text(body)
    monkeypatch.chdir(tmp_path)
    return "my_rewards.py:score"


def test_a_well_formed_user_function_passes_on_text_and_chat(tmp_path, monkeypatch):
    entry = user_function(tmp_path, monkeypatch, "def score(completions, answer, **kwargs):\n"
                                                 "    return [float(answer[0] in str(c)) for c in completions]\n")
    assert messages(config(entry)) == []
    assert messages(config(entry), rows=[{"prompt": [{"role": "user", "content": "hi"}], "answer": "42"}],
                    conversational=True) == []


def test_a_user_function_sees_what_trl_passes(tmp_path, monkeypatch):
    entry = user_function(tmp_path, monkeypatch, (
        "SEEN = {}\n"
        "def score(prompts, completions, completion_ids, trainer_state, log_extra, log_metric, **columns):\n"
        "    SEEN.update(prompts=prompts, completions=completions, columns=columns)\n"
        "    return [None, 0.5]\n"))
    assert messages(config(entry), conversational=True) == []
    from launcher.rl.references import resolve

    seen = __import__(resolve(entry).__module__).SEEN
    assert seen == {"prompts": ["What is 6 x 7?"] * 2, "columns": {"answer": ["42", "42"]},
                    "completions": [chat("42"), chat("<answer>7</answer>")]}


def test_a_wrong_signature_is_explained(tmp_path, monkeypatch):
    entry = user_function(tmp_path, monkeypatch, "def score(completions):\n    return [0.0] * len(completions)\n")
    (message,) = messages(config(entry))
    assert message.startswith("trainer.rewards: my_rewards.py:score: has the wrong signature: trl calls it as "
                              "f(prompts=, completions=, completion_ids=, **columns, trainer_state=, log_extra=, "
                              "log_metric=); accept **kwargs (score() got an unexpected keyword argument")


def test_a_missing_column_names_the_columns_the_data_has(tmp_path, monkeypatch):
    entry = user_function(tmp_path, monkeypatch, "def score(completions, **kw):\n    return kw['solution']\n")
    assert messages(config(entry)) == ["trainer.rewards: my_rewards.py:score: reads the column 'solution', which "
                                       "the data does not have (its columns: prompt, answer)"]


def test_an_exception_is_reported_with_its_type(tmp_path, monkeypatch):
    entry = user_function(tmp_path, monkeypatch, "def score(completions, **kw):\n    return [1 / 0] * 2\n")
    assert messages(config(entry)) == ["trainer.rewards: my_rewards.py:score: failed on two dummy completions "
                                       "['42', '<answer>7</answer>']: ZeroDivisionError: division by zero"]


@pytest.mark.parametrize("returned, said", [
    ("0.5", "returned 0.5 (a float) for 2 completions"),
    ("[1.0]", "returned 1 values for 2 completions"),
    ("['good', 'bad']", "returned ['good', 'bad']: each value must be a number or None, not str"),
])
def test_a_bad_return_value_says_what_came_back(tmp_path, monkeypatch, returned, said):
    entry = user_function(tmp_path, monkeypatch, f"def score(completions, **kw):\n    return {returned}\n")
    (message,) = messages(config(entry))
    assert message.startswith(f"trainer.rewards: my_rewards.py:score: {said}")


def test_without_data_rows_the_function_is_resolved_but_not_called(tmp_path, monkeypatch):
    entry = user_function(tmp_path, monkeypatch, "def score(completions):\n    return 0\n")
    assert messages(config(entry), rows=[]) == []


def test_an_async_reward_function_is_awaited(tmp_path, monkeypatch):
    entry = user_function(tmp_path, monkeypatch, "async def score(completions, **kw):\n    return [1.0, 0.0]\n")
    assert messages(config(entry)) == []


def test_reward_weights_must_match_the_rewards():
    assert messages(config("format", "length", reward_weights=[1.0])) == [
        "trainer.reward_weights: 1 weights for 2 rewards (format, length): give one weight per reward, or none "
        "(1.0 each)"]


def test_bad_regular_expressions_are_refused():
    (bad_format,) = messages(config("format", format_pattern="<answer>(.*</answer>"))
    assert bad_format.startswith("trainer.format_pattern: '<answer>(.*</answer>' is not a regular expression: "
                                 "missing ), unterminated subpattern")
    (two_groups,) = messages(config("exact_match", answer_pattern="(a)(b)"))
    assert two_groups.startswith("trainer.answer_pattern: '(a)(b)' has 2 groups; it needs exactly one")


@pytest.mark.parametrize("name", ["exact_match", "math"])
def test_answer_rewards_need_the_answer_column_in_the_data(name):
    rows = [{"prompt": "q", "solution": "4"}]
    assert messages(config(name), rows=rows) == [
        f"trainer.answer_column: the {name} reward compares with the data column 'answer', which the data does not "
        "have (its columns: prompt, solution); set trainer.answer_column to one of solution."]
    assert messages(config(name, answer_column="solution"), rows=rows) == []


def test_json_schema_needs_an_existing_valid_schema(tmp_path):
    assert messages(config("json_schema")) == [
        "trainer.json_schema: the json_schema reward needs trainer.json_schema, the path of a JSON Schema file"]
    missing = tmp_path / "none.json"
    assert messages(config("json_schema", json_schema=str(missing))) == [
        f"trainer.json_schema: {missing}: file not found ({missing})"]
    bad = tmp_path / "bad.json"
    bad.write_text('{"type": 12}')
    (message,) = messages(config("json_schema", json_schema=str(bad)))
    assert message.startswith(f"trainer.json_schema: {bad} is not a valid JSON Schema: 12 is not valid under")


def test_math_needs_math_verify(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "math_verify", None)  # an import of it now fails, as when not installed
    assert messages(config("math")) == [
        "trainer.rewards: the math reward needs math-verify: pip install tunelaunch[rl] (or pip install math-verify)"]


def test_length_needs_a_positive_target():
    assert messages(config("length", length_target=0)) == [
        "trainer.length_target / trainer.length_tolerance: the length reward needs length_target > 0 and "
        "length_tolerance >= 0 (got 0, 16)"]


def test_the_checks_import_no_training_library(tmp_path):
    """plan answers in about a second: checking every kind of reward imports neither torch nor transformers."""
    import subprocess
    import sys

    (tmp_path / "mine.py").write_text("def score(completions, **kwargs):\n    return [1.0] * len(completions)\n")
    (tmp_path / "schema.json").write_text('{"type": "object"}')
    run_folder(tmp_path / "rm")
    code = ("import sys\nfrom launcher.config.schema import RunConfig\nfrom launcher.rl.rewards import check_rewards\n"
            "cfg = RunConfig(); cfg.trainer.name = 'grpo'; cfg.trainer.json_schema = 'schema.json'\n"
            "cfg.trainer.rewards = ['format', 'length', 'exact_match', 'math', 'json_schema', 'mine.py:score',"
            " 'run:rm']\n"
            "problems = check_rewards(cfg, [{'prompt': 'q', 'answer': '4'}], False)\n"
            "print(problems, [m for m in ('torch', 'transformers', 'trl', 'peft') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env=cli_env())
    assert out.stdout.strip() == "[] []", out.stderr[-2000:]


# ---- reward models: run:PATH

def run_folder(path, trainer="reward", status="finished"):
    path.mkdir()
    (path / "config.yaml").write_text(f"trainer:\n  name: {trainer}\n")
    (path / "run_state.json").write_text(json.dumps({"status": status}))
    return path


def test_a_reward_run_must_exist_be_a_reward_run_and_be_finished(tmp_path):
    assert messages(config(f"run:{tmp_path}/none")) == [
        f"trainer.rewards: run:{tmp_path}/none: no such folder ({tmp_path}/none)"]
    sft = run_folder(tmp_path / "sft", trainer="sft")
    assert messages(config(f"run:{sft}")) == [
        f"trainer.rewards: run:{sft}: {sft} is a sft run, not a reward model: train one with trainer=reward"]
    running = run_folder(tmp_path / "running", status="running")
    assert messages(config(f"run:{running}")) == [
        f"trainer.rewards: run:{running}: {running} has not finished training (its run_state.json says running); "
        "a reward model is read from a finished run"]
    assert messages(config(f"run:{run_folder(tmp_path / 'rm')}")) == []


def tiny_reward_model(folder, seed=0):
    """A one-layer Llama sequence classifier with the embedded tiny model's tokenizer, saved in folder."""
    import shutil

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from launcher.embedded import build_tiny_llama

    folder.mkdir(exist_ok=True)
    tiny = build_tiny_llama()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(tiny / name, folder / name)
    pad = AutoTokenizer.from_pretrained(folder).pad_token_id
    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(LlamaConfig(
        vocab_size=1024, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, num_labels=1, pad_token_id=pad))
    model.save_pretrained(folder)
    return model, tiny


TEXTS = ["a short one", "a somewhat longer text here"]


def scores(model, tokenizer):
    import torch

    with torch.no_grad():
        return model(**tokenizer(TEXTS, return_tensors="pt", padding=True)).logits[:, 0].tolist()


def test_a_finished_reward_run_loads_as_a_model_with_its_tokenizer(tmp_path):
    folder = run_folder(tmp_path / "my-rm")
    saved, tiny = tiny_reward_model(folder)

    (model,), (tokenizer,) = reward_functions(config(f"run:{folder}"))
    assert type(model).__name__ == "LlamaForSequenceClassification" and model.num_labels == 1
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert tokenizer.chat_template == (tiny / "chat_template.jinja").read_text()
    assert model.config._name_or_path.endswith("my-rm")  # trl logs it as rewards/my-rm/mean
    assert scores(model, tokenizer) == pytest.approx(scores(saved.eval(), tokenizer), abs=1e-6)


def test_a_lora_reward_run_is_merged_onto_its_base_with_its_trained_score_head(tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model

    from transformers import AutoModelForSequenceClassification

    tiny_reward_model(tmp_path / "base")
    base = AutoModelForSequenceClassification.from_pretrained(tmp_path / "base")  # the adapter then names it its base
    folder = run_folder(tmp_path / "lora-rm")
    peft_model = get_peft_model(base, LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # a trained adapter: non-zero LoRA B and a score head unlike the base's
        for name, param in peft_model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                param.add_(torch.randn_like(param))
    peft_model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (folder / name).write_bytes((tmp_path / "base" / name).read_bytes())

    (model,), (tokenizer,) = reward_functions(config(f"run:{folder}"))
    untouched_base = AutoModelForSequenceClassification.from_pretrained(tmp_path / "base").eval()
    assert scores(model, tokenizer) != pytest.approx(scores(untouched_base, tokenizer), abs=1e-3)  # the adapter counts
    assert not any("lora_" in name for name, _ in model.named_parameters())  # merged
    assert scores(model, tokenizer) == pytest.approx(scores(peft_model.eval(), tokenizer), abs=1e-5)


# ---- tools

TOOLS = '''
def weather(city: str, days: int = 1) -> str:
    """The forecast for a city.

    Args:
        city: The city's name.
        days (int): How many days ahead.
    """
    return "sunny"

def untyped(city) -> str:
    """The forecast.

    Args:
        city: The city's name.
    """

def undocumented(city: str) -> str:
    return city

def half_documented(city: str, days: int) -> str:
    """The forecast.

    Args:
        city: The city's name.
    """
'''


def test_tools_need_type_hints_and_a_documented_argument_each(tmp_path, monkeypatch):
    (tmp_path / "tools.py").write_text(TOOLS)
    monkeypatch.chdir(tmp_path)
    cfg = config("format", tools=[f"tools.py:{n}" for n in ("weather", "untyped", "undocumented", "half_documented",
                                                             "nothing")])
    assert [str(p) for p in check_tools(cfg)] == [
        "trainer.tools: tools.py:untyped: argument city has no type hint: each argument needs one (e.g. city: str)",
        "trainer.tools: tools.py:undocumented: has no docstring: the model reads it to know what the tool does "
        "(describe each argument under Args:)",
        "trainer.tools: tools.py:half_documented: its docstring does not describe argument days: write an Args: "
        "section with one `name: description` line per argument",
        "trainer.tools: tools.py:nothing: tools.py has no attribute 'nothing'"]
    cfg.trainer.tools = ["tools.py:weather"]
    assert check_tools(cfg) == []
    assert [t.__name__ for t in tool_functions(cfg)] == ["weather"]
