"""How chatml and zephyr render tool-calling chats (launcher/data/templates.py's docstring documents it): the
tools' schemas in the system turn, the calls inside the generation markers (trained), the tools' results
outside them (never trained); and which templates cannot render tools, refused before any model loads."""
import pytest

from launcher.data.formats import parse_messages
from launcher.data.templates import (ALPACA, BUILTIN, CHATML, ZEPHYR, check_tool_template, render, renders_tools,
                                     tool_support)

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather now",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CHAT = parse_messages([
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Oslo?"},
    {"role": "assistant", "content": "Checking.", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
        {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Bergen"}'}}]},
    {"role": "tool", "content": "4 C, rain"},
    {"role": "tool", "content": "6 C, rain"},
    {"role": "assistant", "content": "Cold and wet in both."},
])
TOOLS_BLOCK = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function "
    "signatures within <tools></tools> XML tags:\n<tools>\n"
    '{"type": "function", "function": {"name": "get_weather", "description": "Weather now", "parameters": '
    '{"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}\n</tools>\n\n'
    "For each function call, return a json object with function name and arguments within <tool_call></tool_call> "
    'XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')
CALLS = ('Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>\n'
         '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Bergen"}}\n</tool_call>')


def trained(text: str, spans) -> list[str]:
    return [text[a:b] for a, b in spans]


def test_chatml_golden_tool_chat():
    text, spans = render(CHATML, CHAT, tools=[WEATHER])
    assert text == (
        f"<|im_start|>system\nBe brief.\n\n{TOOLS_BLOCK}<|im_end|>\n"
        "<|im_start|>user\nWeather in Oslo?<|im_end|>\n"
        f"<|im_start|>assistant\n{CALLS}<|im_end|>\n"
        "<|im_start|>tool\n4 C, rain<|im_end|>\n<|im_start|>tool\n6 C, rain<|im_end|>\n"
        "<|im_start|>assistant\nCold and wet in both.<|im_end|>\n")
    # trained: exactly the assistant's calls and replies, each with its end-of-turn token; never a tool's result
    assert trained(text, spans) == [f"{CALLS}<|im_end|>", "Cold and wet in both.<|im_end|>"]


def test_zephyr_golden_tool_chat_without_a_system_turn():
    text, spans = render(ZEPHYR, CHAT[1:4] + [CHAT[5]], tools=[WEATHER], special={"eos_token": "</s>"})
    assert text == (
        f"<|system|>\n{TOOLS_BLOCK}</s>\n<|user|>\nWeather in Oslo?</s>\n<|assistant|>\n{CALLS}</s>\n"
        "<|tool|>\n4 C, rain</s>\n<|assistant|>\nCold and wet in both.</s>\n")
    assert trained(text, spans) == [f"{CALLS}</s>", "Cold and wet in both.</s>"]


def test_a_call_without_content_starts_the_reply():
    messages = parse_messages([{"role": "user", "content": "Oslo?"}, {"role": "assistant", "content": None,
                               "tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]}])
    text, spans = render(CHATML, messages)
    assert trained(text, spans) == [
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call><|im_end|>']


@pytest.mark.parametrize("jinja, plain_text", [
    (CHATML, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWeather in Oslo?<|im_end|>\n"
             "<|im_start|>assistant\nHi.<|im_end|>\n"),
    (ZEPHYR, "<|system|>\nBe brief.</s>\n<|user|>\nWeather in Oslo?</s>\n<|assistant|>\nHi.</s>\n"),
])
def test_without_tools_the_rendering_is_the_plain_one(jinja, plain_text):
    plain = CHAT[:2] + [{"role": "assistant", "content": "Hi."}]
    assert render(jinja, plain, special={"eos_token": "</s>"})[0] == plain_text


@pytest.mark.parametrize("jinja", [CHATML, ZEPHYR])
def test_the_generation_prompt_of_a_tool_chat_is_the_training_prefix(jinja):
    text, spans = render(jinja, CHAT, tools=[WEATHER])
    prompt, _ = render(jinja, CHAT[:5], tools=[WEATHER], add_generation_prompt=True)
    assert text.startswith(prompt) and len(prompt) == spans[-1][0]


# ---- which templates render tools

def test_chatml_and_zephyr_render_tools_alpaca_does_not():
    assert renders_tools(CHATML) and renders_tools(ZEPHYR)
    assert not renders_tools(ALPACA)
    assert tool_support(ALPACA) == "does not show the tools' schemas (it ignores `tools`)"
    assert [name for name, t in BUILTIN.items() if t.jinja and renders_tools(t.jinja)] == ["chatml", "zephyr"]


SCHEMAS_ONLY = ("{%- if tools %}{{ tools | tojson }}{% endif -%}"
                "{%- for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor -%}")
RESULTS_TRAINED = ("{%- if tools %}{{ tools | tojson }}{% endif -%}{%- for m in messages -%}"
                   "{%- if m['role'] in ('assistant', 'tool') -%}{% generation %}{{ m['content'] }}"
                   "{{ m.get('tool_calls') | tojson }}{% endgeneration %}{%- else -%}{{ m['content'] }}"
                   "{%- endif -%}{%- endfor -%}")
REFUSES_TOOL_TURNS = ("{%- for m in messages -%}{%- if m['role'] == 'tool' -%}"
                      "{{ raise_exception('Only user and assistant roles are supported') }}{%- endif -%}"
                      "{{ m['content'] }}{%- endfor -%}")


@pytest.mark.parametrize("jinja, says", [
    (SCHEMAS_ONLY, "does not show the assistant's tool calls (it ignores `tool_calls`)"),
    (RESULTS_TRAINED, "marks the tools' results as trained"),
    (REFUSES_TOOL_TURNS, "cannot render a tool call and its result (TemplateError: Only user and assistant roles"),
])
def test_a_template_that_cannot_render_tools_says_what_it_gets_wrong(jinja, says):
    problem = tool_support(jinja)
    assert problem is not None and problem.startswith(says), problem


def test_the_preflight_check_names_the_first_tool_row_and_the_fix():
    rows = [{"messages": CHAT[1:2] + [{"role": "assistant", "content": "x"}]}, {"messages": CHAT, "tools": [WEATHER]}]
    assert check_tool_template(CHATML, "chatml", rows, "train.jsonl") is None
    assert check_tool_template(ALPACA, "alpaca", rows[:1], "train.jsonl") is None  # no tool chat: nothing to say
    problem = check_tool_template(ALPACA, "alpaca", rows, "train.jsonl")
    assert problem == ("train.jsonl: row 2 is a tool-calling chat, but the alpaca template does not show the tools' "
                       "schemas (it ignores `tools`): use data.chat_template=chatml or zephyr (they render tools), "
                       "or a model whose own template does")
