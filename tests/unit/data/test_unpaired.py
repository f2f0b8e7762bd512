"""Unpaired preference data (the kto trainer): detection, labels, the class checks and their balance, the
column mapping, and the plan refusing bad data (exit code 2) before anything loads."""
import json
from pathlib import Path

import pytest

from launcher import cli
from launcher.config.schema import RunConfig
from launcher.config.validate import validate
from launcher.data import formats
from launcher.data.load import check_data
from tests.unit.helpers import SAMPLES, data_config, valid_cfg

TURNS = [{"role": "user", "content": "Name a planet."}, {"role": "assistant", "content": "Mars."}]


def config(path, trainer: str = "kto", template: str = "none", **data) -> RunConfig:
    return data_config(path, trainer, template, **data)


def write_jsonl(folder: Path, rows: list) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def rows(*labels) -> list:
    return [{"prompt": f"Question {i}?", "completion": f"Answer {i}.", "label": label}
            for i, label in enumerate(labels)]


def messages(data) -> str:
    return "\n".join(p.message for p in data.problems)


# ---- the samples and the two layouts

@pytest.mark.parametrize("sample,template,fmt,counts", [
    ("kto", "none", "unpaired", (20, 12)),
    ("kto", "chatml", "unpaired", (20, 12)),
    ("kto_chat", "chatml", "unpaired_messages", (12, 12)),
])
def test_the_samples_are_detected_and_every_row_is_accepted(sample, template, fmt, counts):
    data = check_data(config(SAMPLES / sample, template=template))
    assert not data.problems, data.problems
    assert data.format == fmt
    assert formats.label_counts(data.train.rows) == counts
    assert all(set(r) == {"prompt", "completion", "label"} and isinstance(r["label"], bool) for r in data.train.rows)


def test_a_conversation_splits_into_the_prompt_turns_and_the_labelled_reply():
    row = check_data(config(SAMPLES / "kto_chat", template="chatml")).train.rows[8]
    assert [m["role"] for m in row["prompt"]] == ["user", "assistant", "user"]
    assert row["completion"] == [{"role": "assistant", "content": row["completion"][0]["content"]}]


def test_labels_as_booleans_numbers_and_csv_text(tmp_path):
    (tmp_path / "train.csv").write_text("prompt,completion,label\nA?,a,true\nB?,b,False\nC?,c,1\nD?,d,0\n")
    data = check_data(config(tmp_path))
    assert not data.problems and [r["label"] for r in data.train.rows] == [True, False, True, False]
    write_jsonl(tmp_path / "j", rows(True, 0, 1.0, False))
    assert [r["label"] for r in check_data(config(tmp_path / "j")).train.rows] == [True, False, True, False]


def test_message_lists_in_prompt_and_completion_columns(tmp_path):
    write_jsonl(tmp_path, [{"prompt": TURNS[:1], "completion": TURNS[1:], "label": True},
                           {"prompt": "Name a star.", "completion": [{"role": "assistant", "content": "Mars."}],
                            "label": False}])
    data = check_data(config(tmp_path, template="chatml"))
    assert not data.problems and data.format == "unpaired"
    assert data.train.rows[0]["prompt"] == TURNS[:1] and data.train.rows[1]["prompt"] == "Name a star."


# ---- bad labels and classes: one problem each, naming the column and the fix

@pytest.mark.parametrize("label", ["good", 2, 0.5, [True]])
def test_a_label_that_is_not_boolean_or_0_1_names_the_row_and_the_column(tmp_path, label):
    write_jsonl(tmp_path, rows(True, False, label))
    data = check_data(config(tmp_path))
    assert len(data.problems) == 1
    message = data.problems[0].message
    assert "row 3: column 'label' should hold true/false or 1/0" in message and repr(label)[:10] in message


def test_a_row_without_a_label_value(tmp_path):
    write_jsonl(tmp_path, rows(True, False) + [{"prompt": "Q?", "completion": "A."}])
    assert "row 3: no 'label' value" in messages(check_data(config(tmp_path)))


@pytest.mark.parametrize("label,have,need", [(True, "true (desirable)", "false/0 (undesirable)"),
                                              (0, "false (undesirable)", "true/1 (desirable)")])
def test_one_class_only_is_a_problem(tmp_path, label, have, need):
    write_jsonl(tmp_path, rows(label, label, label))
    data = check_data(config(tmp_path))
    assert len(data.problems) == 1, data.problems
    assert f"every training row is labelled {have} in column 'label'" in data.problems[0].message
    assert f"needs {need} completions too" in data.problems[0].message


def test_one_class_left_after_the_validation_rows_are_held_out(tmp_path):
    write_jsonl(tmp_path, rows(True, True, False))
    assert "every training row is labelled true" in messages(check_data(config(tmp_path, num_validation_samples=1)))


def test_no_label_column_says_how_to_add_or_map_one():
    data = check_data(config(SAMPLES / "prompt_completion"))
    assert [p.key for p in data.problems] == ["data.column_mapping.label_column"]
    assert "no label column" in data.problems[0].message
    assert "data.column_mapping.label_column=<column>" in data.problems[0].message


def test_a_conversation_must_end_with_the_reply_the_label_judges(tmp_path):
    write_jsonl(tmp_path, [{"messages": TURNS, "label": True}, {"messages": [*TURNS, TURNS[0]], "label": False}])
    data = check_data(config(tmp_path, template="chatml"))
    assert len(data.problems) == 1
    assert "row 2: messages: the last turn must be the assistant reply the label judges, got 'user'" in messages(data)


# ---- column mapping and detection

def test_column_mapping_names_the_prompt_completion_and_label_columns(tmp_path):
    write_jsonl(tmp_path, [{"question": "2+2?", "answer": "4", "thumbs_up": True},
                           {"question": "2+3?", "answer": "6", "thumbs_up": False}])
    data = check_data(config(tmp_path, map_prompt_text_column="question", map_text_column="answer",
                             map_label_column="thumbs_up"))
    assert not data.problems and data.format == "unpaired"
    assert data.train.rows[1] == {"prompt": "2+3?", "completion": "6", "label": False}
    assert any("kto labels ('thumbs_up'): 1 desirable, 1 undesirable" in n for n in data.notes)


def test_a_bad_label_in_a_mapped_column_is_named_by_that_column(tmp_path):
    write_jsonl(tmp_path, [{"prompt": "Q?", "completion": "A.", "thumbs_up": "yes"}])
    data = check_data(config(tmp_path, map_label_column="thumbs_up"))
    assert "row 1: column 'thumbs_up' should hold true/false or 1/0" in messages(data)


def test_a_mapped_label_column_that_is_absent(tmp_path):
    write_jsonl(tmp_path, rows(True, False))
    data = check_data(config(tmp_path, map_label_column="rating"))
    assert "data.column_mapping.label_column=rating names a column the file does not have" in messages(data)


def test_without_columns_it_knows_the_fix_maps_all_three(tmp_path):
    write_jsonl(tmp_path, [{"q": "2+2?", "a": "4", "ok": True}])
    assert ("data.column_mapping.prompt_text_column=q data.column_mapping.text_column=a "
            "data.column_mapping.label_column=ok") in messages(check_data(config(tmp_path)))


def test_other_trainers_read_a_label_column_as_extra(tmp_path):
    """A format the trainer takes wins: sft trains prompt/completion rows that also carry a label."""
    write_jsonl(tmp_path, rows(True, False))
    data = check_data(config(tmp_path, trainer="sft"))
    assert not data.problems and data.format == "prompt_completion"
    assert data.train.rows[0] == {"prompt": "Question 0?", "completion": "Answer 0."}
    assert any("the sft trainer does not read the column 'label' and trains on every row" in n for n in data.notes)


# ---- the balance of the classes

def test_the_balance_is_noted_with_weights_that_fit_when_the_given_ones_do_not():
    cfg = config(SAMPLES / "kto")
    note = next(n for n in check_data(cfg).notes if "kto labels" in n)
    assert "20 desirable, 12 undesirable training rows (62% desirable)" in note
    # 20 / 12 = 1.67 is outside [1, 4/3]: undesirable_weight in [1.25, 1.66] (or desirable_weight in [0.6, 0.8])
    assert "trainer.undesirable_weight in [1.25, 1.66] or trainer.desirable_weight in [0.60, 0.80]" in note
    cfg.trainer.undesirable_weight = 1.5  # 20 / (1.5 x 12) = 1.11: fits, so no advice
    note = next(n for n in check_data(cfg).notes if "kto labels" in n)
    assert note.endswith("(62% desirable)")


# ---- the trainer's options

def test_a_label_column_for_another_trainer_is_a_note():
    from launcher.config.validate import unused_keys

    cfg = valid_cfg()
    cfg.data.column_mapping.label_column = "thumbs_up"
    assert validate(cfg) == []
    assert unused_keys(cfg) == [
        "data.column_mapping.label_column: thumbs_up is not used by the sft trainer (read by kto)"]
    cfg.trainer.name = "kto"
    assert unused_keys(cfg) == []


def test_class_weights_must_be_positive_and_the_batch_hold_two_rows():
    cfg = valid_cfg()
    cfg.trainer.name = "kto"
    assert validate(cfg) == []
    cfg.trainer.desirable_weight, cfg.trainer.undesirable_weight, cfg.training.batch_size = 0.0, -1.0, 1
    problems = {p.key: p.message for p in validate(cfg)}
    assert set(problems) == {"trainer.desirable_weight", "trainer.undesirable_weight", "training.batch_size"}
    assert "at least 2, got 1: set training.batch_size=2" in problems["training.batch_size"]


# ---- the plan: exit code 2 before anything loads

@pytest.fixture
def nothing_loads(monkeypatch):
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("a tokenizer or model was loaded during the preflight")

    for cls in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer, transformers.PreTrainedModel):
        monkeypatch.setattr(cls, "from_pretrained", refuse)


@pytest.mark.parametrize("bad,expected", [
    ([{"prompt": "Q?", "completion": "A."}], "with no label column"),
    (rows(True, True), "every training row is labelled true (desirable) in column 'label'"),
    (rows(True, "maybe"), "row 2: column 'label' should hold true/false or 1/0"),
])
def test_bad_kto_data_is_a_plan_error(tmp_path, capsys, nothing_loads, bad, expected):
    write_jsonl(tmp_path / "data", bad)
    code = cli.main(["plan", "recipe=kto/unpaired_tiny", f"data.path={tmp_path / 'data'}",
                     f"project_name={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert expected in err
    assert not (tmp_path / "run").exists()
