"""ShareGPT data: a `conversations` column of {from, value} turns (or {role, content}) is read as chat messages,
speaker names become roles (ShareGPT's own, then data.column_mapping.roles), and a bad row says how to fix it."""
import json
from pathlib import Path

import pytest

from launcher.config.compose import compose
from launcher.config.parse import from_dict
from launcher.config.schema import RunConfig
from launcher.data import formats
from launcher.data.load import check_data
from tests.unit.helpers import SAMPLES, data_config

SHAREGPT = [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Name a planet."},
            {"from": "gpt", "value": "Mars."}]
AS_MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a planet."},
               {"role": "assistant", "content": "Mars."}]


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def problems_text(data) -> str:
    return "\n".join(p.message for p in data.problems)


# ---- detection and normalisation

def test_the_sample_is_detected_as_messages_with_a_note_naming_sharegpt():
    data = check_data(data_config(SAMPLES / "sharegpt" / "train.json"))
    assert not data.problems, data.problems
    assert data.format == "messages" and len(data.train.rows) == 20
    assert data.train.rows[0]["messages"] == [
        {"role": "user", "content": "What is the boiling point of water?"},
        {"role": "assistant", "content": "At sea level, water boils at 100 degrees Celsius, which is 212 degrees "
                                         "Fahrenheit."}]
    assert any("ShareGPT rows" in note and "human -> user, gpt -> assistant" in note for note in data.notes)


def test_conversations_of_role_and_content_are_messages_too(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"conversations": AS_MESSAGES}])
    data = check_data(data_config(tmp_path))
    assert not data.problems and data.format == "messages"
    assert data.train.rows[0]["messages"] == AS_MESSAGES


def test_a_csv_cell_holding_a_sharegpt_list(tmp_path):
    cell = json.dumps(SHAREGPT).replace('"', '""')
    (tmp_path / "train.csv").write_text(f'conversations\n"{cell}"\n')
    data = check_data(data_config(tmp_path))
    assert not data.problems, data.problems
    assert data.train.rows[0]["messages"] == AS_MESSAGES


def test_a_sharegpt_string_in_a_text_column_is_recognised_as_messages():
    assert formats._is_messages(json.dumps(SHAREGPT))
    assert formats._is_messages(repr(SHAREGPT))


def test_tool_turns_are_shown_as_user_turns_and_the_tool_call_is_the_reply():
    turns = [{"from": "human", "value": "Weather in Oslo?"}, {"from": "function_call", "value": '{"city": "Oslo"}'},
             {"from": "observation", "value": "4 C, rain"}, {"from": "tool", "value": "wind 20 km/h"},
             {"from": "gpt", "value": "Cold and wet."}]
    roles = [m["role"] for m in formats.parse_messages(turns)]
    assert roles == ["user", "assistant", "user", "user", "assistant"]


def test_kto_takes_sharegpt_conversations_with_a_label(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"conversations": SHAREGPT, "label": True},
                                           {"conversations": SHAREGPT, "label": False}])
    data = check_data(data_config(tmp_path, trainer="kto"))
    assert not data.problems, data.problems
    assert data.format == "unpaired_messages"
    assert data.train.rows[0]["completion"] == [{"role": "assistant", "content": "Mars."}]


def test_preference_answers_as_sharegpt_turns():
    row = {"prompt": [{"from": "human", "value": "Name a planet."}], "chosen": [{"from": "gpt", "value": "Mars."}],
           "rejected": [{"from": "gpt", "value": "The Moon."}]}
    out = formats.normalise(row, formats.BY_NAME["preference"])
    assert out["prompt"] == [{"role": "user", "content": "Name a planet."}]
    assert out["rejected"] == [{"role": "assistant", "content": "The Moon."}]


def test_a_messages_column_beside_conversations_wins():
    assert formats.apply_aliases(["messages", "conversations"], "sft") == {}
    assert formats.apply_aliases(["conversations"], "sft") == {"conversations": "messages"}


# ---- other speaker names: data.column_mapping.roles

def test_roles_maps_other_speaker_names(tmp_path):
    turns = [{"from": "customer", "value": "Is it open?"}, {"from": "agent", "value": "Yes, until six."}]
    write_jsonl(tmp_path / "train.jsonl", [{"conversations": turns}])
    data = check_data(data_config(tmp_path, map_roles={"customer": "user", "agent": "assistant"}))
    assert not data.problems, data.problems
    assert [m["role"] for m in data.train.rows[0]["messages"]] == ["user", "assistant"]


def test_an_unknown_speaker_names_file_row_and_the_mapping_that_fixes_it(tmp_path):
    turns = [{"from": "human", "value": "hi"}, {"from": "bot", "value": "hello"}]
    path = write_jsonl(tmp_path / "train.jsonl", [{"conversations": SHAREGPT}, {"conversations": turns}])
    report = problems_text(check_data(data_config(tmp_path)))
    assert f"{path}: row 2: messages[1]: unknown role 'bot'; use one of system, user, assistant" in report
    assert "data.column_mapping.roles.bot=assistant" in report
    # the fix it suggests works
    assert not check_data(data_config(tmp_path, map_roles={"bot": "assistant"})).problems


def test_a_turn_of_other_field_names_says_which_shapes_are_read(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [{"conversations": [{"speaker": "human", "text": "hi"}]}])
    report = problems_text(check_data(data_config(tmp_path)))
    assert f"{path}: row 1: messages[0]: expected {{role, content}} or ShareGPT's {{from, value}}" in report


def test_the_text_column_mapping_suggested_for_an_unknown_column_works(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"dialog": SHAREGPT}])
    report = problems_text(check_data(data_config(tmp_path)))
    assert "data.column_mapping.text_column=dialog" in report
    data = check_data(data_config(tmp_path, map_text_column="dialog"))
    assert not data.problems, data.problems
    assert data.format == "messages" and data.train.rows[0]["messages"] == AS_MESSAGES


# ---- the roles key in the configuration

@pytest.mark.parametrize("override", ["data.column_mapping.roles={human: user, bot: assistant}",
                                      "data.column_mapping.roles.bot=assistant"])
def test_roles_from_the_command_line(override):
    cfg = compose(None, ["recipe=sft/chat_tiny", override]).config
    assert cfg.data.column_mapping.roles["bot"] == "assistant"


def test_a_role_that_is_not_a_chat_role_is_a_config_problem():
    _, problems = from_dict(RunConfig, {"data": {"column_mapping": {"roles": {"bot": "robot"}}}})
    assert [p.key for p in problems] == ["data.column_mapping.roles.bot"]
    assert "expected one of: system, user, assistant" in problems[0].message
