"""The template contract (launcher/generate.py): the token ids `generate` feeds a trained run are exactly the ids
the run's training samples held before their first trained token, for chat, Alpaca and prompt/completion data.

Each case saves a run folder as training does (the tokenizer with the template installed, the model, config.yaml)
and loads it back through `generate.from_run`, so the template's round trip through the saved tokenizer is part
of what is checked."""
import json
import shutil

import pytest

from launcher import generate, models
from launcher.config.schema import RunConfig
from launcher.data.encode import IGNORE, SFTEncoder
from launcher.data.load import check_data
from launcher.embedded import build_tiny_llama
from launcher.hardware import Hardware
from launcher.resolve import resolve
from launcher.run_dir import write_config
from tests.unit.helpers import SAMPLES


@pytest.fixture(scope="module")
def tiny() -> str:
    return str(build_tiny_llama())


def saved_run(tiny, tmp_path, sample: str, template: str, bos: bool = False):
    """(the checked data, the training samples' encoder, the run folder as generate loads it). bos: the
    tokenizer puts its bos token before every text, as Llama's do (the tiny one does not)."""
    cfg = RunConfig()
    cfg.model.name_or_path = tiny
    cfg.data.path = str(SAMPLES / sample)
    cfg.data.chat_template = template
    cfg.data.valid_split = None
    cfg.data.block_size = 512
    data = check_data(cfg)
    assert not data.problems, data.problems
    assert resolve(cfg, Hardware(), data.format).problems == []  # as the plan does (Alpaca under none -> alpaca)
    tokenizer = models.load_tokenizer(cfg)
    if bos:
        from tokenizers.processors import TemplateProcessing

        tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
            single=f"{tokenizer.bos_token} $A", special_tokens=[(tokenizer.bos_token, tokenizer.bos_token_id)])
        assert tokenizer("x")["input_ids"][0] == tokenizer.bos_token_id
    run = tmp_path / "run"
    run.mkdir()
    tokenizer.save_pretrained(run)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(f"{tiny}/{name}", run / name)
    write_config(run, cfg)
    encoder = SFTEncoder(tokenizer, data.format, cfg.data.chat_template)
    return data, encoder, generate.from_run(run)


def prompt_prefix(encoded) -> list[int]:
    first = next(i for i, label in enumerate(encoded.labels) if label != IGNORE)
    return encoded.input_ids[:first]


@pytest.mark.parametrize("template", ["chatml", "zephyr", "tokenizer", "alpaca"])
def test_chat_rows(tiny, tmp_path, template):
    data, encode, gen = saved_run(tiny, tmp_path, "chat", template)
    for row in data.train.rows:
        messages = row["messages"]
        first_reply = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
        assert gen.prompt_ids(messages=messages[:first_reply]) == prompt_prefix(encode(row)), messages


@pytest.mark.parametrize("template", ["none", "chatml"])
def test_alpaca_rows_with_and_without_input(tiny, tmp_path, template):
    data, encode, gen = saved_run(tiny, tmp_path, "alpaca", template)
    inputs = {bool(row["input"]) for row in data.train.rows}
    assert inputs == {True, False}  # the sample holds both kinds
    for row in data.train.rows:
        ids = gen.prompt_ids(text=row["instruction"], input_text=row["input"] or None)
        assert ids == prompt_prefix(encode(row)), row


@pytest.mark.parametrize("template,bos", [("none", False), ("none", True), ("chatml", False), ("zephyr", False)])
def test_prompt_completion_rows(tiny, tmp_path, template, bos):
    data, encode, gen = saved_run(tiny, tmp_path, "prompt_completion", template, bos)
    if bos:
        assert gen.tokenizer("x")["input_ids"][0] == gen.tokenizer.bos_token_id  # it survived the save
    assert gen.chat == (template != "none")
    for row in data.train.rows:
        assert gen.prompt_ids(text=row["prompt"]) == prompt_prefix(encode(row)), row


def test_the_contract_can_fail(tiny, tmp_path):
    """A run prompted with another template than it was trained with does not match its samples."""
    data, encode, gen = saved_run(tiny, tmp_path, "chat", "chatml")
    from launcher.data.templates import ZEPHYR

    gen.tokenizer.chat_template = ZEPHYR
    row = data.train.rows[0]
    assert gen.prompt_ids(messages=row["messages"][:1]) != prompt_prefix(encode(row))


def test_generate_stops_at_the_end_of_turn_of_the_saved_template(tiny, tmp_path):
    _, _, gen = saved_run(tiny, tmp_path, "chat", "chatml")
    assert gen.tokenizer.convert_tokens_to_ids("<|im_end|>") in gen.stop_ids
    config = json.loads((tmp_path / "run" / "tokenizer_config.json").read_text())
    assert "<|im_end|>" in json.dumps(config) or (tmp_path / "run" / "chat_template.jinja").is_file()


# ---- tool-calling chats: the prompt holds the tools and the earlier calls and results as training rendered them

def tool_turns(row) -> list[int]:
    """Where each assistant turn of a tool-calling row starts (the prompts `generate` is given for it)."""
    return [i for i, m in enumerate(row["messages"]) if m["role"] == "assistant"]


@pytest.mark.parametrize("template", ["chatml", "zephyr"])
def test_tool_chat_prompts_are_the_training_rendering_up_to_each_assistant_turn(tiny, tmp_path, template):
    from launcher.data.templates import render

    data, _, gen = saved_run(tiny, tmp_path, "tools", template)
    tok = gen.tokenizer
    special = {"bos_token": tok.bos_token, "eos_token": tok.eos_token}
    checked = 0
    for row in data.train.rows:
        text, spans = render(tok.chat_template, row["messages"], special=special, tools=row["tools"])
        full = tok(text, add_special_tokens=False)["input_ids"]
        for turn, (start, _) in zip(tool_turns(row), spans):
            prompt = gen.prompt_ids(messages=row["messages"][:turn], tools=row["tools"])
            assert tok.decode(prompt) == text[:start]
            assert prompt == full[:len(prompt)], (row["messages"][:turn], text[:start])
            checked += row["messages"][turn - 1]["role"] == "tool"
    assert checked >= 15  # prompts that end with a tool's result, which the model reads to answer


def test_tool_chat_prompt_is_the_encoded_samples_prefix(tiny, tmp_path):
    """Through the encoder the trainer uses: the tools column must reach the template in training too."""
    data, encode, gen = saved_run(tiny, tmp_path, "tools", "chatml")
    for row in data.train.rows[:6]:
        first = tool_turns(row)[0]
        assert gen.prompt_ids(messages=row["messages"][:first], tools=row["tools"]) == prompt_prefix(encode(row))


def test_a_prompt_without_the_training_tools_does_not_match(tiny, tmp_path):
    data, _, gen = saved_run(tiny, tmp_path, "tools", "chatml")
    row = data.train.rows[0]
    with_tools = gen.prompt_ids(messages=row["messages"][:1], tools=row["tools"])
    assert gen.prompt_ids(messages=row["messages"][:1]) != with_tools
    assert "get_weather" in gen.tokenizer.decode(with_tools)


@pytest.mark.parametrize("template", ["chatml", "zephyr"])
def test_every_tool_row_trains_exactly_the_assistants_calls_and_replies(tiny, tmp_path, template):
    from launcher.data.templates import render

    data, encode, gen = saved_run(tiny, tmp_path, "tools", template)
    tok = gen.tokenizer
    special = {"bos_token": tok.bos_token, "eos_token": tok.eos_token}
    for row in data.train.rows:
        text, spans = render(tok.chat_template, row["messages"], special=special, tools=row["tools"])
        encoded = encode(row)
        runs, current = [], []
        for token, label in zip(encoded.input_ids, encoded.labels):
            if label != IGNORE:
                current.append(token)
            elif current:
                runs, current = runs + [current], []
        runs += [current] if current else []
        assert [tok.decode(r) for r in runs] == [text[a:b] for a, b in spans]
        shown = tok.decode([t for t, label in zip(encoded.input_ids, encoded.labels) if label == IGNORE])
        for result in (m["content"] for m in row["messages"] if m["role"] == "tool"):
            assert f"tool\n{result}" in shown or f"tool|>\n{result}" in shown  # the result's turn: not trained


# ---- --tools files and --show-reasoning (generate and chat)

def test_a_tools_file_takes_what_a_tools_column_takes(tmp_path):
    from launcher.prompt_inputs import PromptInputError, read_tools_file

    tools = json.loads((SAMPLES / "tools" / "train.json").read_text())[0]["tools"]
    path = tmp_path / "tools.json"
    path.write_text(json.dumps(tools))
    assert read_tools_file(path) == tools
    path.write_text('[{"description": "no name"}]')
    with pytest.raises(PromptInputError) as err:
        read_tools_file(path)
    assert str(err.value).startswith(f"--tools {path}: tools[0]: expected a function's JSON schema")


def test_chat_refuses_tools_the_template_cannot_render_before_the_weights_load(tiny, tmp_path, capsys):
    from launcher.chat import main

    path = tmp_path / "tools.json"
    path.write_text(json.dumps(json.loads((SAMPLES / "tools" / "train.json").read_text())[0]["tools"]))
    assert main(tiny, template="alpaca", tools_file=str(path)) == 2
    err = capsys.readouterr().err
    assert "--tools: it holds tools or tool turns, but the chat template does not show the tools' schemas" in err


def echoed(tokenizer, chunks: list[str], hide: bool) -> str:
    import io

    from launcher.chat import Echo

    out = io.StringIO()
    echo = Echo(tokenizer, out, hide_reasoning=hide)
    for i, chunk in enumerate(chunks):
        echo.on_finalized_text(chunk, stream_end=i == len(chunks) - 1)
    return out.getvalue()


@pytest.mark.parametrize("chunks, hidden, shown", [
    (["<thi", "nk>\nstep", " one\n</th", "ink>\n\nThe ", "answer."], "The answer.\n",
     "<think>\nstep one\n</think>\n\nThe answer.\n"),
    (["The", " answer."], "The answer.\n", "The answer.\n"),
    (["<", "b>bold</b>"], "<b>bold</b>\n", "<b>bold</b>\n"),
    (["<think>\nno end in sight"], "\n", "<think>\nno end in sight\n"),
])
def test_chat_streams_the_reply_without_its_reasoning_unless_asked(tiny, chunks, hidden, shown):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    assert echoed(tokenizer, chunks, hide=True) == hidden
    assert echoed(tokenizer, chunks, hide=False) == shown


def test_the_command_line_refuses_tools_it_cannot_prompt_with_before_loading(tiny, tmp_path):
    from tests.conftest import run_cli

    tools = str(SAMPLES / "tools" / "weather.json")
    done = run_cli("generate", tiny, "--template", "alpaca", "--prompt", "Weather in Oslo?", "--tools", tools,
                   "--show-reasoning", cwd=tmp_path, check=2)
    assert "the chat template does not show the tools' schemas" in done.stderr
    done = run_cli("generate", tiny, "--template", "none", "--prompt", "Weather in Oslo?", "--tools", tools,
                   cwd=tmp_path, check=2)
    assert f"--tools {tools}: {tiny} was trained without a chat template" in done.stderr
    (tmp_path / "bad.json").write_text('{"not": "a list"}')
    done = run_cli("chat", tiny, "--tools", str(tmp_path / "bad.json"), cwd=tmp_path, check=2)
    assert f"--tools {tmp_path / 'bad.json'}" in done.stderr
