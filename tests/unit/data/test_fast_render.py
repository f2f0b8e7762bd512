"""The chat templates we ship, rendered by string building (launcher.data.fast_render): the same text and trained
spans as transformers' Jinja path on every conversation it takes, and the Jinja path for everything else — a
template that is not ours character for character, a renderer that disagrees with Jinja on a probe, a row with
tools, tool calls, reasoning or other keys. The encoder with it gives the ids and labels it gives without it."""
from __future__ import annotations

import random

import pytest

from launcher import models
from launcher.config.schema import RunConfig
from launcher.data import fast_render
from launcher.data.encode import SFTEncoder
from launcher.data.fast_render import fast_renderer, is_plain, plain_turns, probe_conversations
from launcher.data.load import check_data
from launcher.data.templates import ALPACA, CHATML, ZEPHYR
from launcher.embedded import build_tiny_llama, smollm2_folder
from tests.unit.helpers import SAMPLES

SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
SHIPPED = {"chatml": CHATML, "zephyr": ZEPHYR}
PIECES = ["word", " ", "\n", "  ", "猫", "🐈‍⬛", "ü", "{{ x }}", "{%", "<|im_end|>", "</s>", "'", '"', "\\", "\t", ".",
          "<think>", "</think>"]


def jinja(template: str, conversation: list[dict], special: dict = SPECIAL):
    from transformers.utils.chat_template_utils import render_jinja_template

    texts, spans = render_jinja_template(conversations=[conversation], chat_template=template,
                                         return_assistant_tokens_mask=True, **special)
    return texts[0], [tuple(s) for s in spans[0]]


def random_conversations(n: int, seed: int = 0) -> list[list[dict]]:
    """Plain conversations of 0-7 turns in any order of roles, text glued from pieces a template could treat
    specially (whitespace at the edges, template syntax, control tokens, multi-byte characters)."""
    rng = random.Random(seed)
    return [[{"role": rng.choice(["system", "user", "assistant"]),
              "content": "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 6)))}
             for _ in range(rng.randint(0, 7))] for _ in range(n)]


@pytest.mark.parametrize("name", SHIPPED)
def test_string_building_renders_what_jinja_renders(name):
    renderer = fast_renderer(SHIPPED[name], SPECIAL)
    assert renderer is not None
    conversations = probe_conversations() + random_conversations(300)
    assert sum(1 for c in conversations for m in c if m["role"] == "assistant") > 300
    for conversation in conversations:
        assert renderer.render(conversation) == jinja(SHIPPED[name], conversation), conversation


def test_only_our_templates_character_for_character_are_built_by_hand():
    assert fast_renderer(ALPACA, SPECIAL) is None  # ours, but another shape: Jinja
    assert fast_renderer(CHATML + " ", SPECIAL) is None  # renders the same, but is not the text we ship
    assert fast_renderer(None, SPECIAL) is None
    assert fast_renderer(ZEPHYR, {"bos_token": "<s>"}) is None  # zephyr closes turns with the eos token: none here


def test_a_renderer_that_disagrees_with_jinja_on_a_probe_is_not_used(monkeypatch):
    # chatml's text mapped to zephyr's string building: the probes tell them apart, so Jinja renders chatml
    monkeypatch.setitem(fast_render.SHIPPED, CHATML, fast_render.SHIPPED[ZEPHYR])
    assert fast_renderer(CHATML, SPECIAL) is None
    # a renderer that differs only in the spans (the close left untrained) is refused too
    spanless = _SpanlessChatml("<|im_start|>", "\n", "<|im_end|>")
    monkeypatch.setitem(fast_render.SHIPPED, CHATML, lambda special: spanless)
    assert fast_renderer(CHATML, SPECIAL) is None


class _SpanlessChatml(fast_render.TurnTemplate):
    def render(self, messages):
        text, spans = super().render(messages)
        return text, [(a, b - len(self.close)) for a, b in spans]


@pytest.mark.parametrize("message, plain", [
    ({"role": "user", "content": "hi"}, True),
    ({"role": "assistant", "content": "", "name": None, "tool_calls": None}, True),  # None keys are dropped
    ({"role": "assistant", "content": "ok", "reasoning_content": "thinking"}, False),
    ({"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "f"}}]}, False),
    ({"role": "tool", "content": "42"}, False),
    ({"role": "user", "content": "hi", "name": "ann"}, False),
    ({"role": "user", "content": ["a", "list"]}, False),
    ({"role": "user"}, False),
])
def test_which_turns_are_plain(message, plain):
    assert is_plain([{"role": "system", "content": "s"}, message]) is plain
    if plain:
        assert plain_turns([message]) == [{"role": message["role"], "content": message["content"]}]


@pytest.fixture(scope="module")
def tokenizers() -> dict:
    out = {}
    for name, folder in (("tiny", build_tiny_llama()), ("smollm2", smollm2_folder())):
        cfg = RunConfig()
        cfg.model.name_or_path = str(folder)
        out[name] = cfg
    return out


def chat_rows(sample: str) -> list[dict]:
    cfg = RunConfig()
    cfg.data.path, cfg.data.valid_split, cfg.data.chat_template = str(SAMPLES / sample), None, "chatml"
    data = check_data(cfg)
    assert not data.problems, data.problems
    return list(data.train.rows)


@pytest.mark.parametrize("tokenizer", ["tiny", "smollm2"])
@pytest.mark.parametrize("template", ["chatml", "zephyr"])
@pytest.mark.parametrize("train_on", ["completion", "all"])
def test_the_encoder_gives_the_same_ids_and_labels_with_and_without_it(tokenizers, tokenizer, template, train_on):
    cfg = tokenizers[tokenizer]
    cfg.data.chat_template = template
    tok = models.load_tokenizer(cfg)
    # plain chats, tool-calling chats and reasoning traces in one batch: each row takes its own path
    rows = chat_rows("chat") + chat_rows("tools") + chat_rows("reasoning") + \
        [{"messages": c} for c in random_conversations(60, seed=1) if any(m["role"] == "assistant" for m in c)]
    fast = SFTEncoder(tok, "messages", template, train_on=train_on)
    slow = SFTEncoder(tok, "messages", template, train_on=train_on)
    slow.plain_renderer = None
    assert fast.plain_renderer is not None
    assert sum(is_plain(r["messages"]) and not r.get("tools") for r in rows) < len(rows)  # both paths are taken
    for (ids, labels), (want_ids, want_labels) in zip(fast.arrays(rows), slow.arrays(rows), strict=True):
        assert ids.tolist() == want_ids.tolist() and labels.tolist() == want_labels.tolist()


def test_templates_without_string_building_keep_jinja(tokenizers):
    cfg = tokenizers["tiny"]
    cfg.data.chat_template = "alpaca"
    assert SFTEncoder(models.load_tokenizer(cfg), "messages", "alpaca").plain_renderer is None
    cfg.data.chat_template = "chatml"
    tok = models.load_tokenizer(cfg)
    assert SFTEncoder(tok, "text", "none").plain_renderer is None
    assert SFTEncoder(tok, "messages", "chatml").plain_renderer is not None


@pytest.mark.parametrize("name", SHIPPED)
def test_the_preflight_renders_plain_rows_as_jinja_does_and_the_rest_through_jinja(name, monkeypatch):
    from launcher.data import templates

    conversations = probe_conversations() + random_conversations(100, seed=1)
    for special in ({}, SPECIAL):  # the preflight's placeholders, and a tokenizer's special tokens
        for conversation in conversations:
            assert (fast_render.render_if_plain(SHIPPED[name], conversation, special)
                    == templates.render(SHIPPED[name], conversation, special=special)), conversation
    tool_turns = [{"role": "user", "content": "hi"}, {"role": "tool", "content": "42"}]
    assert fast_render.render_if_plain(SHIPPED[name], tool_turns) is None
    assert fast_render.render_if_plain(SHIPPED[name], conversations[0], tools=[{"type": "function"}]) is None
    assert fast_render.render_if_plain(ALPACA, conversations[0]) is None
    assert fast_render.render_if_plain(SHIPPED[name], conversations[0], {"eos_token": ["not", "hashable"]}) is None

    # check_data takes it for its first rows: with Jinja's renderer made to fail, plain chatml rows still pass
    def no_jinja(*args, **kwargs):
        raise AssertionError("rendered through Jinja")

    monkeypatch.setattr(templates, "render", no_jinja)
    monkeypatch.setattr("launcher.data.load.render", no_jinja)
    cfg = RunConfig()
    cfg.trainer.name, cfg.data.chat_template = "sft", name
    cfg.data.path, cfg.data.train_split, cfg.data.valid_split = str(SAMPLES / "chat"), "train", None
    checked = check_data(cfg)
    assert checked.format == "messages" and not checked.problems and len(checked.train.rows) > 10
