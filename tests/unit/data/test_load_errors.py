"""Bad data: one clear message each, from the plan's preflight, before any tokenizer or model weight loads."""
import json
from pathlib import Path

import pytest

from launcher.config.errors import ConfigError
from launcher.hardware import Hardware
from launcher.planning import make_plan

CONVERSATION = [{"role": "user", "content": "Name a planet."}, {"role": "assistant", "content": "Mars."}]


@pytest.fixture
def nothing_loads(monkeypatch):
    """Any attempt to load a tokenizer or model weights fails the test."""
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("a tokenizer or model was loaded during the preflight")

    for cls in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer, transformers.PreTrainedModel,
                transformers.AutoModelForSequenceClassification):
        monkeypatch.setattr(cls, "from_pretrained", refuse)


def plan_problems(tmp_path: Path, *overrides: str) -> str:
    with pytest.raises(ConfigError) as caught:
        make_plan(None, ["recipe=sft/chat_tiny", "data.valid_split=null", f"project_name={tmp_path / 'run'}",
                         *overrides], Hardware())
    assert not (tmp_path / "run").exists()
    return caught.value.report()


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def jsonl(rows: list) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def test_malformed_json_line_names_file_and_line(tmp_path, nothing_loads):
    data = write(tmp_path / "d" / "train.jsonl", jsonl([{"messages": CONVERSATION}]) + '{"messages": [oops\n')
    report = plan_problems(tmp_path, f"data.path={data.parent}")
    assert f"{data}:2: not valid JSON" in report


def test_missing_column_lists_the_columns_and_the_mapping_that_fixes_it(tmp_path, nothing_loads):
    data = write(tmp_path / "d" / "train.jsonl", jsonl([{"question": "2+2?", "answer": "4"}]))
    report = plan_problems(tmp_path, f"data.path={data.parent}")
    assert "the file has: question, answer" in report
    assert "data.column_mapping.prompt_text_column=question data.column_mapping.text_column=answer" in report


def test_a_mapped_column_that_is_absent_lists_the_columns(tmp_path, nothing_loads):
    data = write(tmp_path / "d" / "train.jsonl", jsonl([{"dialogue": CONVERSATION}]))
    report = plan_problems(tmp_path, f"data.path={data.parent}", "data.column_mapping.text_column=conversation")
    assert "data.column_mapping.text_column=conversation names a column the file does not have" in report
    assert "its columns are: dialogue" in report and "data.column_mapping.text_column=dialogue" in report


def test_unknown_role(tmp_path, nothing_loads):
    bad = [{"role": "user", "content": "hi"}, {"role": "bot", "content": "hello"}]
    data = write(tmp_path / "d" / "train.jsonl", jsonl([{"messages": CONVERSATION}, {"messages": bad}]))
    report = plan_problems(tmp_path, f"data.path={data.parent}")
    assert f"{data}: row 2: messages[1]: unknown role 'bot'; use one of system, user, assistant" in report


@pytest.mark.parametrize("name,text", [("train.jsonl", ""), ("train.jsonl", "\n\n"), ("train.csv", "text\n")])
def test_empty_dataset(tmp_path, nothing_loads, name, text):
    data = write(tmp_path / "d" / name, text)
    report = plan_problems(tmp_path, f"data.path={data.parent}")
    assert f"{data}: no rows (an empty dataset)" in report


def test_a_conversation_the_jinja_template_cannot_render(tmp_path, nothing_loads):
    template = write(tmp_path / "no_system.jinja", (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}{{ m['role'] + ': ' }}{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] + eos_token }}"
        "{% endgeneration %}{% else %}{{ m['content'] }}{% endif %}\n{% endfor %}"))
    system = [{"role": "system", "content": "Be brief."}] + CONVERSATION
    data = write(tmp_path / "d" / "train.jsonl", jsonl([{"messages": CONVERSATION}, {"messages": system}]))
    report = plan_problems(tmp_path, f"data.path={data.parent}", f"data.chat_template={template}")
    assert (f"{data}: row 2: the {template} template cannot render this conversation "
            "(TemplateError: System role not supported)") in report
    assert "row 1" not in report


def test_a_jinja_template_with_a_syntax_error(tmp_path, nothing_loads):
    template = write(tmp_path / "broken.jinja", "{% for m in messages %}{{ m['content'] }\n")
    data = write(tmp_path / "d" / "train.jsonl", jsonl([{"messages": CONVERSATION}]))
    report = plan_problems(tmp_path, f"data.path={data.parent}", f"data.chat_template={template}")
    assert f"data.chat_template: {template}: not a valid Jinja template" in report


def test_a_template_that_marks_no_reply_to_train(tmp_path, nothing_loads):
    template = write(tmp_path / "user_only.jinja", (  # markers around the user turn instead of the assistant's
        "{% for m in messages %}{% if m['role'] == 'user' %}{% generation %}{{ m['content'] }}{% endgeneration %}"
        "{% endif %}{% endfor %}"))
    only_system = [{"role": "system", "content": "Be brief."}, {"role": "assistant", "content": "Mars."}]
    data = write(tmp_path / "d" / "train.jsonl", jsonl([{"messages": only_system}]))
    report = plan_problems(tmp_path, f"data.path={data.parent}", f"data.chat_template={template}")
    assert "marks no assistant reply in this conversation, so nothing would be trained" in report


def test_tokenizer_template_of_a_model_without_one(tmp_path, nothing_loads):
    from launcher.embedded import build_tiny_llama

    model = tmp_path / "model"
    model.mkdir()
    tiny = build_tiny_llama()
    (model / "config.json").write_text((tiny / "config.json").read_text())
    config = json.loads((tiny / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    data = write(tmp_path / "d" / "train.jsonl", jsonl([{"messages": CONVERSATION}]))
    report = plan_problems(tmp_path, f"data.path={data.parent}", f"model.name_or_path={model}",
                           "data.chat_template=tokenizer")
    assert f"'tokenizer' means the model's own chat template, but {model} has none" in report


@pytest.mark.parametrize("missing", ["chosen", "rejected"])
def test_a_preference_row_missing_chosen_or_rejected(tmp_path, nothing_loads, missing):
    rows = [{"prompt": "2+2?", "chosen": "4", "rejected": "5"}, {"prompt": "3+3?", "chosen": "6", "rejected": "7"}]
    del rows[1][missing]
    data = write(tmp_path / "d" / "train.jsonl", jsonl(rows))
    report = plan_problems(tmp_path, f"data.path={data.parent}", "trainer=dpo", "data.chat_template=none")
    assert (f"{data}: row 2: no '{missing}' value (preference rows need prompt, chosen, rejected in every row)"
            in report)


def test_a_preference_file_without_a_rejected_column(tmp_path, nothing_loads):
    data = write(tmp_path / "d" / "train.jsonl", jsonl([{"prompt": "2+2?", "chosen": "4"}]))
    report = plan_problems(tmp_path, f"data.path={data.parent}", "trainer=dpo", "data.chat_template=none")
    assert "the dpo trainer understands; it needs prompt+chosen+rejected" in report
    assert "the file has: prompt, chosen" in report and "data.column_mapping.rejected_text_column=" in report


def test_chat_rows_without_a_template(tmp_path, nothing_loads):
    data = write(tmp_path / "d" / "train.jsonl", jsonl([{"messages": CONVERSATION}]))
    report = plan_problems(tmp_path, f"data.path={data.parent}", "data.chat_template=none")
    assert "rows are chat messages but chat_template is none" in report


def test_packing_lengths_are_checked(tmp_path, nothing_loads):
    report = plan_problems(tmp_path, "data.packing=true", "data.chunk_size=100000")
    assert "data.chunk_size / model.max_length: chunk_size 100000 exceeds model max length" in report


def test_several_bad_rows_are_reported_together_but_capped(tmp_path, nothing_loads):
    rows = [{"messages": [{"role": "user", "content": "hi"}]} for _ in range(9)]  # no assistant turn
    data = write(tmp_path / "d" / "train.jsonl", jsonl(rows))
    report = plan_problems(tmp_path, f"data.path={data.parent}")
    assert report.count("no assistant turn, so there is nothing to learn") == 5
    assert f"{data}: 4 more rows with problems" in report


def test_a_missing_template_file_is_one_problem(tmp_path, nothing_loads):
    report = plan_problems(tmp_path, f"data.chat_template={tmp_path / 'missing.jinja'}")
    assert "is neither a template name" in report and report.count("missing.jinja") == 1


def test_packing_lengths_are_not_checked_with_packing_off(tmp_path, nothing_loads):
    """data.chunk_size is read only with packing on: a length that would be refused is a note without it."""
    from launcher.planning import make_plan

    plan = make_plan(None, ["recipe=sft/chat_tiny", "data.valid_split=null", f"project_name={tmp_path / 'run'}",
                            "data.chunk_size=100000"], Hardware())
    assert plan.cfg.data.packing is False
    assert "data: chunk_size is ignored because data.packing is off" in plan.notes
