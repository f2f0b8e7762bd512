"""Rendering and loss masks on the embedded tiny tokenizer: golden strings and trained tokens for chatml, zephyr,
alpaca and the tokenizer's own template, and every sample format under every template it can take.

The golden token lists follow from the tiny tokenizer, which is trained on samples/*.jsonl: if those files
change, regenerate them (the rendered strings and the trained text do not depend on the tokenizer)."""
import csv
import json
from pathlib import Path

import pytest

from launcher import models
from launcher.config.schema import RunConfig
from launcher.data.encode import IGNORE, EncodeError, SFTEncoder
from launcher.data.formats import BY_NAME, effective_template
from launcher.data.load import check_data
from launcher.data.templates import (
    ALPACA, CHATML, ZEPHYR, get_template, has_generation_markers, infer_end_of_turn, render, stop_tokens,
)
from launcher.embedded import build_tiny_llama
from tests.unit.helpers import SAMPLES


CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Name a planet."},
    {"role": "assistant", "content": "Mars."},
    {"role": "user", "content": "Another?"},
    {"role": "assistant", "content": "Venus."},
]


@pytest.fixture(scope="module")
def tiny() -> str:
    return str(build_tiny_llama())


def config(tiny: str, template: str = "chatml", **data) -> RunConfig:
    cfg = RunConfig()
    cfg.model.name_or_path = tiny
    cfg.data.chat_template = template
    cfg.data.block_size = 512
    for key, value in data.items():
        setattr(cfg.data, key, value)
    return cfg


def tokenizer_for(tiny: str, template: str):
    return models.load_tokenizer(config(tiny, template))


def trained_tokens(tok, enc) -> list[str]:
    return [tok.convert_ids_to_tokens(i) for i, label in zip(enc.input_ids, enc.labels) if label != IGNORE]


def trained_spans(tok, enc) -> list[str]:
    spans, current = [], []
    for token, label in zip(enc.input_ids, enc.labels):
        if label != IGNORE:
            current.append(token)
        elif current:
            spans.append(tok.decode(current))
            current = []
    if current:
        spans.append(tok.decode(current))
    return spans


# ---- golden renderings

def test_chatml_golden(tiny):
    tok = tokenizer_for(tiny, "chatml")
    enc = SFTEncoder(tok, "messages", "chatml")({"messages": CONVERSATION})
    assert tok.decode(enc.input_ids) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nName a planet.<|im_end|>\n"
        "<|im_start|>assistant\nMars.<|im_end|>\n<|im_start|>user\nAnother?<|im_end|>\n"
        "<|im_start|>assistant\nVenus.<|im_end|>\n")
    assert trained_spans(tok, enc) == ["Mars.<|im_end|>", "Venus.<|im_end|>"]
    assert trained_tokens(tok, enc) == ["M", "ar", "s", ".", "<|im_end|>", "V", "en", "us", ".", "<|im_end|>"]
    # the labels are the ids themselves where trained (no shift at this stage: the model shifts)
    assert all(label in (IGNORE, token) for token, label in zip(enc.input_ids, enc.labels))


def test_zephyr_golden(tiny):
    tok = tokenizer_for(tiny, "zephyr")
    enc = SFTEncoder(tok, "messages", "zephyr")({"messages": CONVERSATION})
    assert tok.decode(enc.input_ids) == (
        "<|system|>\nBe brief.</s>\n<|user|>\nName a planet.</s>\n<|assistant|>\nMars.</s>\n"
        "<|user|>\nAnother?</s>\n<|assistant|>\nVenus.</s>\n")
    assert trained_spans(tok, enc) == ["Mars.</s>", "Venus.</s>"]
    assert trained_tokens(tok, enc) == ["M", "ar", "s", ".", "</s>", "V", "en", "us", ".", "</s>"]


def test_alpaca_golden_with_input(tiny):
    tok = tokenizer_for(tiny, "alpaca")
    row = {"instruction": "Name the capital of the given country.", "input": "Kenya", "output": "Nairobi."}
    enc = SFTEncoder(tok, "alpaca", "alpaca")(row)
    assert tok.decode(enc.input_ids) == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nName the capital of the given country.\n\n### Input:\nKenya\n\n### Response:\n"
        "Nairobi.</s>\n\n")
    assert trained_spans(tok, enc) == ["Nairobi.</s>"]
    assert trained_tokens(tok, enc) == ["N", "a", "i", "ro", "b", "i", ".", "</s>"]


def test_alpaca_golden_without_input(tiny):
    tok = tokenizer_for(tiny, "alpaca")
    enc = SFTEncoder(tok, "alpaca", "alpaca")({"instruction": "Name a planet.", "input": "", "output": "Mars."})
    assert tok.decode(enc.input_ids) == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nName a planet.\n\n### Response:\nMars.</s>\n\n")
    assert trained_tokens(tok, enc) == ["M", "ar", "s", ".", "</s>"]


def test_alpaca_inference_prompt_is_the_training_prefix(tiny):
    """Prompting with a bare user message renders exactly the text the model was trained on before its answer."""
    tok = tokenizer_for(tiny, "alpaca")
    for instruction, input_text in (("Name a planet.", ""), ("Translate.", "Bonjour")):
        row = {"instruction": instruction, "input": input_text, "output": "X."}
        enc = SFTEncoder(tok, "alpaca", "alpaca")(row)
        user = instruction if not input_text else f"{instruction}\n\n### Input:\n{input_text}"
        prompt = tok.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True,
                                         tokenize=True, return_dict=True)["input_ids"]
        first_trained = next(i for i, label in enumerate(enc.labels) if label != IGNORE)
        assert list(prompt) == enc.input_ids[:first_trained]


def test_tokenizer_template_of_the_tiny_model_has_markers(tiny):
    tok = tokenizer_for(tiny, "tokenizer")
    assert has_generation_markers(tok.chat_template)
    enc = SFTEncoder(tok, "messages", "tokenizer")({"messages": CONVERSATION})
    assert trained_spans(tok, enc) == ["Mars.<|im_end|>", "Venus.<|im_end|>"]


def test_train_on_all_trains_every_token(tiny):
    tok = tokenizer_for(tiny, "chatml")
    enc = SFTEncoder(tok, "messages", "chatml", train_on="all")({"messages": CONVERSATION})
    assert enc.labels == enc.input_ids


@pytest.mark.parametrize("add_eos", [True, False])
def test_text_rows_honour_add_eos_token(tiny, add_eos):
    tok = tokenizer_for(tiny, "none")
    enc = SFTEncoder(tok, "text", "none", add_eos_token=add_eos)({"text": "The cat sat."})
    assert tok.decode(enc.input_ids) == "The cat sat." + ("</s>" if add_eos else "")
    assert enc.labels == enc.input_ids


def test_prompt_completion_without_template_trains_the_completion_and_eos(tiny):
    tok = tokenizer_for(tiny, "none")
    enc = SFTEncoder(tok, "prompt_completion", "none")({"prompt": "Question: 2+2?\nAnswer:", "completion": " 4."})
    assert tok.decode(enc.input_ids) == "Question: 2+2?\nAnswer: 4.</s>"
    assert trained_spans(tok, enc) == [" 4.</s>"]


def test_prompt_completion_under_a_chat_template_is_a_user_and_assistant_turn(tiny):
    tok = tokenizer_for(tiny, "chatml")
    enc = SFTEncoder(tok, "prompt_completion", "chatml")({"prompt": "2+2?", "completion": "4."})
    assert tok.decode(enc.input_ids) == "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4.<|im_end|>\n"
    assert trained_spans(tok, enc) == ["4.<|im_end|>"]


# ---- Jinja files

SMOL_LIKE = (  # a model-style template without generation markers, with a default system turn
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are helpful.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def test_jinja_file_with_markers_gives_masks_and_its_end_of_turn(tiny, tmp_path):
    path = tmp_path / "mine.jinja"
    path.write_text(CHATML)
    template = get_template(str(path))
    assert template.end_of_turn == "<|im_end|>"
    tok = tokenizer_for(tiny, str(path))
    assert tok.convert_tokens_to_ids("<|im_end|>") in stop_tokens(tok, str(path))
    enc = SFTEncoder(tok, "messages", str(path))({"messages": CONVERSATION})
    assert trained_spans(tok, enc) == ["Mars.<|im_end|>", "Venus.<|im_end|>"]


def test_jinja_file_without_markers_locates_replies_by_prefix(tiny, tmp_path):
    path = tmp_path / "smol.jinja"
    path.write_text(SMOL_LIKE)
    tok = tokenizer_for(tiny, str(path))
    enc = SFTEncoder(tok, "messages", str(path))({"messages": CONVERSATION[1:]})
    assert tok.decode(enc.input_ids).startswith("<|im_start|>system\nYou are helpful.<|im_end|>\n")
    # what each assistant turn adds: the reply, its end-of-turn token and the newline the template puts after it
    assert trained_spans(tok, enc) == ["Mars.<|im_end|>\n", "Venus.<|im_end|>\n"]


def test_template_that_renders_turns_differently_is_refused_at_encoding(tiny, tmp_path):
    path = tmp_path / "moody.jinja"  # the last user turn is rendered differently from earlier ones
    path.write_text("{% for m in messages %}{% if loop.last %}LAST {% endif %}{{ m['role'] }}: {{ m['content'] }}\n"
                    "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}")
    tok = tokenizer_for(tiny, str(path))
    with pytest.raises(EncodeError, match="renders earlier turns differently"):
        SFTEncoder(tok, "messages", str(path))({"messages": CONVERSATION})


def test_end_of_turn_inference():
    assert infer_end_of_turn(CHATML) == "<|im_end|>"
    assert infer_end_of_turn(ZEPHYR) is None and infer_end_of_turn(ALPACA) is None  # the tokenizer's eos
    assert infer_end_of_turn(SMOL_LIKE) is None  # no markers: nothing to read
    text, spans = render(CHATML, CONVERSATION[1:3])
    assert [text[a:b] for a, b in spans] == ["Mars.<|im_end|>"]


@pytest.mark.parametrize("template", ["chatml", "zephyr", "alpaca", "tokenizer"])
def test_every_trained_reply_ends_with_a_token_generation_stops_at(tiny, template):
    tok = tokenizer_for(tiny, template)
    stops = set(stop_tokens(tok, template))
    enc = SFTEncoder(tok, "messages", template)({"messages": CONVERSATION})
    ends = [i for i in range(len(enc.labels)) if enc.labels[i] != IGNORE
            and (i + 1 == len(enc.labels) or enc.labels[i + 1] == IGNORE)]
    assert len(ends) == 2
    assert all(enc.input_ids[i] in stops for i in ends)


# ---- every sample format under every template it can take

CASES = [
    ("text", "none"), ("text", "chatml"),
    ("chat", "chatml"), ("chat", "zephyr"), ("chat", "tokenizer"), ("chat", "alpaca"), ("chat", "file"),
    ("chat_csv", "chatml"), ("chat_csv", "zephyr"),
    ("prompt_completion", "none"), ("prompt_completion", "chatml"), ("prompt_completion", "zephyr"),
    ("alpaca", "none"), ("alpaca", "alpaca"), ("alpaca", "chatml"),
]


@pytest.mark.parametrize("sample,template", CASES)
def test_sample_formats_encode_under_each_template(tiny, tmp_path, sample, template):
    if template == "file":
        template = str(tmp_path / "zephyr.jinja")
        Path(template).write_text(ZEPHYR)
    cfg = config(tiny, template, path=str(SAMPLES / sample), valid_split=None)
    data = check_data(cfg)
    assert not data.problems, data.problems
    name = effective_template(cfg, data.format)
    tok = tokenizer_for(tiny, name)
    encoder = SFTEncoder(tok, data.format, name)
    stops = set(stop_tokens(tok, name))
    for row in data.train.rows:
        enc = encoder(row)
        assert enc.trained > 1
        if data.format == "text":
            assert enc.labels == enc.input_ids
            continue
        spans = trained_spans(tok, enc)
        replies = ([m["content"] for m in BY_NAME[data.format].conversations(row)[0] if m["role"] == "assistant"]
                   if name != "none" else [row["completion"]])
        assert len(spans) == len(replies)
        for span, reply in zip(spans, replies):
            assert span.startswith(reply), (span, reply)
        last = max(i for i, label in enumerate(enc.labels) if label != IGNORE)
        assert enc.input_ids[last] in stops  # the model learns to stop where generation stops


def test_multi_turn_system_rows_of_the_chat_sample_train_every_reply(tiny):
    cfg = config(tiny, "chatml", path=str(SAMPLES / "chat"), valid_split=None)
    rows = check_data(cfg).train.rows
    multi = [r for r in rows if sum(m["role"] == "assistant" for m in r["messages"]) > 1
             and r["messages"][0]["role"] == "system"]
    assert multi, "samples/chat should hold a multi-turn conversation with a system turn"
    tok = tokenizer_for(tiny, "chatml")
    enc = SFTEncoder(tok, "messages", "chatml")(multi[0])
    system = multi[0]["messages"][0]["content"]
    assert system in tok.decode(enc.input_ids)
    assert all(system not in span for span in trained_spans(tok, enc))
    assert len(trained_spans(tok, enc)) == sum(m["role"] == "assistant" for m in multi[0]["messages"])


def test_the_chat_csv_sample_holds_stringified_lists():
    with (SAMPLES / "chat_csv" / "train.csv").open(newline="") as fh:
        cell = next(csv.DictReader(fh))["messages"]
    assert isinstance(cell, str) and json.loads(cell)[0]["role"] == "user"


# ---- reasoning traces: rendered inside the reply's generation block; train_on_reasoning=false leaves each
# `<think>` block (and the whitespace after it) untrained, the reply and its end-of-turn token trained

from launcher.data.reasoning import shown_reply, split_reasoning, untrained_reasoning  # noqa: E402

REASONING_CHAT = [{"role": "user", "content": "What is 6 x 7?"},
                  {"role": "assistant", "content": "42.", "reasoning_content": "\n6 x 7 = 42.\n"}]


@pytest.mark.parametrize("jinja, end", [(CHATML, "<|im_end|>"), (ZEPHYR, "</s>")])
def test_reasoning_content_is_rendered_as_a_think_block_inside_the_trained_reply(jinja, end):
    text, spans = render(jinja, REASONING_CHAT)
    assert [text[a:b] for a, b in spans] == [f"<think>\n6 x 7 = 42.\n</think>\n\n42.{end}"]
    assert [text[a:b] for a, b in untrained_reasoning(text, spans)] == [f"42.{end}"]
    prompt, _ = render(jinja, REASONING_CHAT[:1], add_generation_prompt=True)
    assert prompt == text[:spans[0][0]]  # the trace is the model's to write: generate's prompt stops before it


def test_a_think_span_written_in_the_reply_trains_as_the_rendered_trace_does():
    written = [REASONING_CHAT[0], {"role": "assistant", "content": "<think>\n6 x 7 = 42.\n</think>\n\n42."}]
    assert render(CHATML, written) == render(CHATML, REASONING_CHAT)


def marked_spans(marked: str) -> tuple[str, list[tuple[int, int]]]:
    """A text whose trained spans are written in [...], as (the text, the spans)."""
    text, spans = "", []
    for piece in marked.split("["):
        if "]" in piece:
            inside, _, after = piece.partition("]")
            spans.append((len(text), len(text) + len(inside)))
            text += inside + after
        else:
            text += piece
    return text, spans


@pytest.mark.parametrize("marked, kept", [
    ("[<think>a</think>\n\nreply<e>]", ["reply<e>"]),
    ("u: <think>x</think> q\nA: [<think>a</think> r1 <think>b</think>\nr2<e>]", ["r1 ", "r2<e>"]),
    ("A: [pre <think>a</think>post<e>]", ["pre ", "post<e>"]),
    ("A: [<think>cut off, never closed<e>]", ["<think>cut off, never closed<e>"]),
    ("A: [no trace<e>]", ["no trace<e>"]),
    ("A: [<think>only</think>  ]", []),
    ("[<think>a</think>x<e>]B: [<think>b</think>y<e>]", ["x<e>", "y<e>"]),
    ("A: <think>[a</think>x<e>]", ["a</think>x<e>"]),  # a block that starts before the span is not in it
])
def test_untrained_reasoning_cuts_each_block_and_the_whitespace_after_it(marked, kept):
    text, spans = marked_spans(marked)
    assert [text[a:b] for a, b in untrained_reasoning(text, spans)] == kept


@pytest.mark.parametrize("generated, parts", [
    ("<think>\nstep one\n</think>\n\nThe answer.", ("step one", "The answer.")),
    ("step one\n</think>\n\nThe answer.", ("step one", "The answer.")),  # the template's prompt opened the block
    ("<think>\nstill thinking when the tokens ran out", ("still thinking when the tokens ran out", "")),
    ("  Just the answer. ", ("", "Just the answer.")),
])
def test_split_reasoning(generated, parts):
    assert split_reasoning(generated) == parts


def test_generate_hides_the_reasoning_unless_asked():
    generated = "<think>\nstep one\n</think>\n\nThe answer."
    assert shown_reply(generated, show_reasoning=False) == "The answer."
    assert shown_reply(generated, show_reasoning=True) == "<think>\nstep one\n</think>\n\nThe answer."
    assert shown_reply("The answer.", show_reasoning=True) == "The answer."
