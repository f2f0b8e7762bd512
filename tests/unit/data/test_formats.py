"""Tool-calling chats and reasoning traces as rows: tool calls, tool turns, a `tools` column and
`reasoning_content` are read into the canonical messages the templates render, and each bad input is one error
naming its row and turn, before any model loads."""
import json

import pytest

from launcher.data import formats
from launcher.data.formats import RowError, check_tool_conversation, parse_messages, parse_tools
from launcher.data.load import check_data
from tests.unit.data.test_sharegpt import problems_text, write_jsonl
from tests.unit.helpers import SAMPLES, data_config

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather now",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def call(name="get_weather", arguments='{"city": "Oslo"}', **extra) -> dict:
    return {"type": "function", "function": {"name": name, "arguments": arguments}, **extra}


def tool_chat(arguments='{"city": "Oslo"}') -> list[dict]:
    return [{"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": None, "tool_calls": [call(arguments=arguments, id="c1")]},
            {"role": "tool", "content": "4 C, rain", "tool_call_id": "c1", "name": "get_weather"},
            {"role": "assistant", "content": "Cold and wet."}]


def refusal(value, **kwargs) -> str:
    with pytest.raises(RowError) as err:
        parse_messages(value, **kwargs)
    return str(err.value)


# ---- what a tool-calling chat becomes

def test_a_tool_chat_becomes_the_canonical_messages():
    messages = parse_messages(tool_chat())
    assert messages == [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": "",
         "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}},
                         "id": "c1"}]},
        {"role": "tool", "content": "4 C, rain", "tool_call_id": "c1", "name": "get_weather"},
        {"role": "assistant", "content": "Cold and wet."}]


def test_arguments_given_as_an_object_and_calls_without_the_function_wrapper_are_taken():
    turns = tool_chat()
    turns[1]["tool_calls"] = [{"name": "get_weather", "arguments": {"city": "Oslo", "unit": None}}]
    parsed = parse_messages(turns)[1]["tool_calls"]
    # the null is what datasets' JSON reader adds for a key another row has: it is dropped
    assert parsed == [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]


def test_a_tool_result_given_as_json_stays_json_text():
    turns = tool_chat()
    turns[2]["content"] = {"temperature": 4, "sky": "rain"}
    assert parse_messages(turns)[2]["content"] == '{"temperature": 4, "sky": "rain"}'


def test_reasoning_content_is_kept_and_think_spans_in_the_reply_pass_unchanged():
    turns = [{"role": "user", "content": "2+2?"},
             {"role": "assistant", "content": "4.", "reasoning_content": "Two and two."},
             {"role": "user", "content": "3+3?"},
             {"role": "assistant", "content": "<think>\nThree and three.\n</think>\n\n6."}]
    messages = parse_messages(turns)
    assert messages[1] == {"role": "assistant", "content": "4.", "reasoning_content": "Two and two."}
    assert messages[3] == {"role": "assistant", "content": "<think>\nThree and three.\n</think>\n\n6."}
    assert "reasoning_content" in refusal([turns[0], {**turns[1], "reasoning_content": ["a"]}])


def test_tools_column_as_a_list_a_json_string_or_bare_schemas():
    bare = WEATHER["function"]
    assert parse_tools([WEATHER]) == [WEATHER]
    assert parse_tools(json.dumps([WEATHER])) == [WEATHER]
    assert parse_tools([bare]) == [WEATHER]
    assert parse_tools(None) is None and parse_tools("  ") is None


@pytest.mark.parametrize("value, says", [
    ("[{'name': 1", "tools: not JSON"),
    ({"name": "x"}, "tools: expected a list"),
    ([{"description": "no name"}], "tools[0]: expected a function's JSON schema"),
])
def test_a_bad_tools_column_is_named(value, says):
    with pytest.raises(RowError) as err:
        parse_tools(value)
    assert says in str(err.value), err.value


# ---- the bad inputs, each named with its turn

def test_arguments_that_are_not_json_name_the_turn_and_the_call():
    error = refusal(tool_chat(arguments="{city: Oslo}"))
    assert error.startswith("messages[1].tool_calls[0]: the arguments are not JSON"), error
    assert "{city: Oslo}" in error and "JSON object" in error


def test_arguments_that_are_json_but_not_an_object_are_refused():
    assert "should be a JSON object" in refusal(tool_chat(arguments='["Oslo"]'))


def test_a_tool_turn_with_no_call_before_it():
    turns = [{"role": "user", "content": "hi"}, {"role": "tool", "content": "4 C"},
             {"role": "assistant", "content": "ok"}]
    error = refusal(turns)
    assert error.startswith("messages[1]: a tool turn with no tool call before it to answer"), error


def test_more_tool_results_than_calls():
    turns = tool_chat()
    turns.insert(3, {"role": "tool", "content": "again"})
    assert refusal(turns).startswith("messages[3]: a tool turn with more tool results than the calls")


def test_a_tool_call_id_that_no_call_has():
    turns = tool_chat()
    turns[2]["tool_call_id"] = "c9"
    assert "messages[2]: tool_call_id 'c9' names no call" in refusal(turns)


def test_tool_calls_on_a_user_turn():
    turns = tool_chat()
    turns[0]["tool_calls"] = [call()]
    assert refusal(turns).startswith("messages[0]: a user turn with tool_calls")


def test_a_call_to_a_tool_the_row_does_not_list():
    messages = parse_messages(tool_chat())
    other = {"type": "function", "function": {"name": "get_time"}}
    assert check_tool_conversation(messages, [WEATHER]) == []
    assert check_tool_conversation(messages, [other]) == [
        "messages[1].tool_calls[0]: calls 'get_weather', which is not in the row's tools (get_time)"]


# ---- ShareGPT keeps its meaning; role `tool` is the tool-result role

def test_sharegpt_tool_speakers_stay_user_turns_but_role_tool_is_a_tool_turn():
    sharegpt = [{"from": "human", "value": "q"}, {"from": "tool", "value": "r"}, {"from": "gpt", "value": "a"}]
    assert [m["role"] for m in parse_messages(sharegpt)] == ["user", "user", "assistant"]
    assert [m["role"] for m in parse_messages(tool_chat())] == ["user", "assistant", "tool", "assistant"]


# ---- through the preflight: rows of a file

def test_the_samples_pass_the_preflight():
    tools = check_data(data_config(SAMPLES / "tools"))
    assert not tools.problems, tools.problems
    assert tools.format == "messages" and len(tools.train.rows) >= 20
    assert all(row["tools"] for row in tools.train.rows)
    assert sum(any(m.get("tool_calls") for m in row["messages"]) for row in tools.train.rows) >= 15
    reasoning = check_data(data_config(SAMPLES / "reasoning"))
    assert not reasoning.problems, reasoning.problems
    assert sum("reasoning_content" in row["messages"][-1] for row in reasoning.train.rows) >= 10


def test_a_bad_row_is_named_by_its_number_before_anything_loads(tmp_path):
    good = {"messages": tool_chat(), "tools": [WEATHER]}
    write_jsonl(tmp_path / "train.jsonl", [good, good, {"messages": tool_chat(arguments="Oslo"), "tools": [WEATHER]}])
    text = problems_text(check_data(data_config(tmp_path)))
    assert "row 3: messages[1].tool_calls[0]: the arguments are not JSON" in text, text
    assert "row 1" not in text and "row 2" not in text


def test_a_csv_cell_can_hold_the_tools_as_json(tmp_path):
    cells = [json.dumps(tool_chat()).replace('"', '""'), json.dumps([WEATHER]).replace('"', '""')]
    (tmp_path / "train.csv").write_text(f'messages,tools\n"{cells[0]}","{cells[1]}"\n')
    data = check_data(data_config(tmp_path))
    assert not data.problems, data.problems
    assert data.train.rows[0]["tools"] == [WEATHER]
    assert data.train.rows[0]["messages"][1]["tool_calls"][0]["function"]["arguments"] == {"city": "Oslo"}


def test_rows_without_tools_keep_their_old_shape():
    row = formats.normalise({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
                            formats.BY_NAME["messages"])
    assert row == {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
