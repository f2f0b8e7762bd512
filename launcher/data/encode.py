"""One canonical row -> the token ids the model reads and the labels it learns (-100 = not trained).

This is the single place where a row is rendered and masked: the sft trainer trains on its output and
`tunelaunch prepare` prints it, so what `prepare` shows is what the model sees.

What is trained (trainer.train_on=completion, the default):
- chat messages (and Alpaca, and prompt/completion under a chat template): every assistant reply with the
  end-of-turn token that closes it. Our templates mark them with `{% generation %}`; a template without markers
  gets trl's training variant when trl knows it, else the assistant spans are found by rendering each prefix of
  the conversation (which needs a template that renders earlier turns the same whatever follows).
- prompt/completion without a template: the completion (and the eos token, with data.add_eos_token).
- text: every token (and the eos token, with data.add_eos_token).
With train_on=all every token is trained.

How (the same ids and labels as `tokenizer.apply_chat_template(..., return_assistant_tokens_mask=True)`, at the
speed of a bare batched tokenizer call): each conversation is rendered with transformers' own Jinja path
(`render_jinja_template`, which also returns the character spans of the `{% generation %}` blocks) or, for plain
conversations under the chatml and zephyr templates, by string building proven to render the same
(launcher.data.fast_render); all rendered texts of a batch are tokenised in ONE fast-tokenizer call, and the mask
of the whole batch is one numpy pass over its tokens' places in the text: with a byte-level tokenizer the running
length of the tokens' bytes (launcher.data.byte_offsets, checked against the text; the tokenizer then tracks no
offsets), otherwise the tokenizer's char -> token index (a few lookups a reply; every token's offsets only where
that cannot answer). transformers builds that mask with a Python loop over every token, which cost more than the
tokenisation itself (benchmarks/preprocessing.py).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from itertools import chain
from typing import Optional

import numpy as np

from launcher.data.byte_offsets import ByteTable
from launcher.data.fast_render import fast_renderer, is_plain, plain_turns
from launcher.data.formats import BY_NAME
from launcher.data.reasoning import untrained_reasoning
from launcher.data.templates import has_generation_markers

IGNORE = -100


class EncodeError(ValueError):
    """A row the tokenizer and template cannot turn into a training sample; the message says why and how to fix.
    `row`: the row's position in the batch `SFTEncoder.many` was given (None for a single row)."""

    def __init__(self, message: str, row: Optional[int] = None):
        super().__init__(message)
        self.row = row

    def __reduce__(self):  # picklable with its row, so an error inside a datasets.map worker reaches the caller
        return type(self), (str(self), self.row)


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]

    @property
    def trained(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


Spans = list[tuple[int, int]]


class SFTEncoder:
    """Encodes canonical rows of one format for the sft trainer; build once per run, call on a batch of rows
    (`many`, `arrays`) or on one. Picklable (the tokenizer and template strings), so datasets.map can run it in
    worker processes."""

    def __init__(self, tokenizer, fmt: str, chat_template: str, train_on: str = "completion",
                 add_eos_token: bool = True, train_on_reasoning: bool = True):
        self.tok = tokenizer
        self.fmt = fmt
        self.chat = chat_template != "none"
        self.template_name = chat_template
        self.train_on = train_on
        self.add_eos_token = add_eos_token
        self.train_on_reasoning = train_on_reasoning
        self.mask_template: Optional[str] = None
        """A template with generation markers used for the masks (the tokenizer's own, or trl's variant)."""
        self.mask_mode = "all" if train_on == "all" else "completion"
        if self.chat and train_on == "completion" and self._renders_messages():
            self.mask_template, self.mask_mode = self._masking_template()
        self.plain_renderer = self._plain_renderer()
        """Plain conversations rendered by string building (launcher.data.fast_render), where proven identical."""

    @classmethod
    def for_run(cls, cfg, tokenizer, fmt: str) -> "SFTEncoder":
        """The encoder of a run's rows of format `fmt`, as its configuration says (one place for every caller:
        the prepared data, the stream, `prepare --show`)."""
        from launcher.data.formats import effective_template

        return cls(tokenizer, fmt, effective_template(cfg, fmt), cfg.trainer.train_on, cfg.data.add_eos_token,
                   cfg.trainer.train_on_reasoning)

    def __call__(self, row: dict) -> Encoded:
        try:
            return self.many([row])[0]
        except EncodeError as err:
            raise EncodeError(str(err)) from None

    def many(self, rows: list[dict]) -> list[Encoded]:
        """Each row encoded, with the tokenizer called once for all of them."""
        return [Encoded(ids.tolist(), labels.tolist()) for ids, labels in self.arrays(rows)]

    def arrays(self, rows: list[dict]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(input_ids, labels) of each row as int64 arrays. A row that cannot be encoded raises EncodeError with
        its position in `rows` (`err.row`)."""
        samples = [BY_NAME[self.fmt].sft_sample(row, self.chat) for row in rows]
        out: list = [None] * len(samples)
        kinds = {"messages": [], "prompt": [], "text": []}
        for i, sample in enumerate(samples):
            kinds["messages" if "messages" in sample else "prompt" if "prompt" in sample else "text"].append(i)
        for kind, where in kinds.items():
            if where:
                encode = {"messages": self._messages, "prompt": self._prompt_completion, "text": self._text}[kind]
                for i, encoded in zip(where, encode([samples[i] for i in where], where)):
                    out[i] = encoded
        return out

    def _trained_char_spans(self, text: str, spans: Spans, messages: list[dict]) -> Spans:
        """The character spans of `text` (a rendered conversation) that are trained, from the spans the template
        marks as the assistant's (sorted, not overlapping). The place to leave parts of a reply out of the loss:
        with trainer.train_on_reasoning=false, the `<think>` blocks inside them."""
        if self.train_on_reasoning:
            return spans
        return untrained_reasoning(text, spans)

    # ---- the three row kinds, a batch at a time

    def _text(self, samples: list[dict], where: list[int]) -> list:
        ids = self.tok(text=[self._with_eos(s["text"]) for s in samples], return_attention_mask=False)["input_ids"]
        return [_same(i) for i in ids]

    def _prompt_completion(self, samples: list[dict], where: list[int]) -> list:
        texts = [self._with_eos(s["prompt"] + s["completion"]) for s in samples]
        all_ids = self.tok(text=texts, return_attention_mask=False)["input_ids"]
        if self.train_on == "all":
            return [_same(i) for i in all_ids]
        prompts = self.tok(text=[s["prompt"] for s in samples], return_attention_mask=False)["input_ids"]
        out = []
        for prompt_ids, ids in zip(prompts, all_ids):
            ids, prompt_ids = np.asarray(ids, dtype=np.int64), np.asarray(prompt_ids, dtype=np.int64)
            # The completion starts where the two tokenisations diverge (a merge across the boundary may move it).
            n = min(len(ids), len(prompt_ids))
            differ = np.flatnonzero(ids[:n] != prompt_ids[:n])
            start = int(differ[0]) if len(differ) else n
            labels = ids.copy()
            labels[:start] = IGNORE
            out.append((ids, labels))
        return out

    def _messages(self, samples: list[dict], where: list[int]) -> list:
        rendered = self._render_all(samples, where)
        texts = [text for text, _ in rendered]
        if self.mask_mode == "all":
            ids = self.tok(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]
            return [_same(i) for i in ids]
        if not getattr(self.tok, "is_fast", False):
            raise EncodeError("masking the assistant replies needs a fast tokenizer (character offsets); set "
                              "trainer.train_on=all or use a model with a tokenizer.json", where[0])
        # As apply_chat_template tokenises what it rendered: no special tokens added (the template wrote them).
        # A byte-level tokenizer gives each token's place from its bytes (launcher.data.byte_offsets: no offsets
        # tracked by the tokenizer); otherwise, and for a row whose bytes do not join up, the
        # marked spans are mapped to tokens through the tokenizer's own char -> token index (a few lookups a
        # reply), and the offsets of every token, which cost more than the rest of the mask, only where that
        # cannot answer.
        overlap = self.mask_mode == "markers"
        rule = _overlap_mask if overlap else _start_mask
        spans = [self._trained_char_spans(text, marked, s["messages"]) for (text, marked), s in zip(rendered, samples)]
        placed = self.byte_table.encode(texts) if self.byte_table is not None else None
        labels = placed.labels(texts, spans, rule, IGNORE) if placed is not None else [None] * len(texts)
        rest = [k for k, x in enumerate(labels) if x is None]
        enc = self.tok([texts[k] for k in rest], add_special_tokens=False, return_offsets_mapping=not overlap,
                       return_attention_mask=False) if rest else None
        again = {k: j for j, k in enumerate(rest)}
        for j, k in enumerate(rest):
            ids = np.asarray(enc["input_ids"][j], dtype=np.int64)
            mask = _span_mask(enc.encodings[j], spans[k], len(ids)) if overlap else None
            if mask is None:
                pairs = enc["offset_mapping"][j] if not overlap else enc.encodings[j].offsets
                # fromiter over the flattened pairs: half the time of np.asarray on a list of tuples
                offsets = np.fromiter(chain.from_iterable(pairs), dtype=np.int64, count=2 * len(ids)).reshape(-1, 2)
                mask = rule(offsets, spans[k])
            labels[k] = np.where(mask, ids, IGNORE)
        plain = self._plain_ids(samples, texts, where) if overlap and self.mask_template != self.tok.chat_template \
            else None
        out = []
        for k, row_labels in enumerate(labels):
            ids = np.asarray(placed.ids(k) if k not in again else enc["input_ids"][again[k]], dtype=np.int64)
            if plain is not None and plain[k] is not None and not np.array_equal(plain[k], ids):
                # trl's training variant renders the same text; the ids must be those of the saved template
                raise EncodeError("trl's training variant of the tokenizer's chat template renders this "
                                  "conversation differently from the template itself; set trainer.train_on=all "
                                  "or give a Jinja template with {% generation %} markers", where[k])
            if not (row_labels != IGNORE).any():
                raise EncodeError(f"the {self.template_name} template marks no assistant tokens in this "
                                  "conversation, so nothing would be trained", where[k])
            out.append((ids, row_labels))
        return out

    @functools.cached_property
    def byte_table(self) -> Optional[ByteTable]:
        """Token bytes of a byte-level tokenizer (launcher.data.byte_offsets), built when first needed; None for
        another tokenizer."""
        return ByteTable.for_tokenizer(self.tok)

    # ---- rendering

    def _render(self, template: str, messages: list[dict], tools, marks: bool = False,
                add_generation_prompt: bool = False) -> tuple[str, Spans]:
        """What apply_chat_template renders (the same transformers function, messages and template variables),
        and with `marks` the character spans of the `{% generation %}` blocks."""
        return self._render_many(template, [messages], tools, marks, add_generation_prompt)[0]

    def _render_many(self, template: str, conversations: list[list[dict]], tools, marks: bool,
                     add_generation_prompt: bool = False) -> list[tuple[str, Spans]]:
        from transformers.utils.chat_template_utils import render_jinja_template

        # apply_chat_template drops the keys whose value is None before rendering (a missing key, not "None")
        conversations = [[{k: v for k, v in m.items() if v is not None} for m in c] for c in conversations]
        texts, spans = render_jinja_template(conversations=conversations, tools=tools, chat_template=template,
                                             return_assistant_tokens_mask=marks,
                                             add_generation_prompt=add_generation_prompt,
                                             **self.tok.special_tokens_map)
        return [(text, [tuple(s) for s in spans[k]] if marks else []) for k, text in enumerate(texts)]

    def _render_all(self, samples: list[dict], where: list[int]) -> list[tuple[str, Spans]]:
        """Each conversation rendered for its mask. Plain conversations by string building where the template
        allows it (`plain_renderer`); the others without tools through one render_jinja_template call (its
        per-call set-up is a tenth of the rendering on short rows); a row with tools gets its own, as the template
        may pick another variant for them."""
        if self.mask_mode == "prefix":
            return [self._render_for_mask(s, where[k]) for k, s in enumerate(samples)]
        marks = self.mask_mode == "markers"
        out: list = [None] * len(samples)
        jinja, alone = [], []
        for k, sample in enumerate(samples):
            if sample.get("tools"):
                alone.append(k)
            elif self.plain_renderer is not None and is_plain(sample["messages"]):
                text, spans = self.plain_renderer.render(plain_turns(sample["messages"]))
                out[k] = (text, spans if marks else [])
            else:
                jinja.append(k)
        if jinja:
            template = self.mask_template if marks else self.tok.get_chat_template(None, None)
            rendered = self._render_many(template, [samples[k]["messages"] for k in jinja], None, marks)
            for k, one in zip(jinja, rendered):
                out[k] = one
        for k in alone:
            out[k] = self._render_for_mask(samples[k], where[k])
        return out

    def _render_for_mask(self, sample: dict, number: int) -> tuple[str, Spans]:
        messages, tools = sample["messages"], sample.get("tools")
        if self.mask_mode == "all":
            return self._render(self.tok.get_chat_template(None, tools), messages, tools)[0], []
        if self.mask_mode == "markers":
            return self._render(self.mask_template, messages, tools, marks=True)
        return self._prefix_spans(messages, tools, number)

    def _plain_ids(self, samples: list[dict], texts: list[str], where: list[int]) -> list:
        """With trl's training variant: the ids of the conversations as the saved template renders them, None
        where it renders the same text (the same ids, without tokenising twice)."""
        plain = [self._render(self.tok.get_chat_template(None, s.get("tools")), s["messages"], s.get("tools"))[0]
                 for s in samples]
        differ = [k for k, (p, t) in enumerate(zip(plain, texts)) if p != t]
        out: list = [None] * len(samples)
        if differ:
            ids = self.tok([plain[k] for k in differ], add_special_tokens=False,
                           return_attention_mask=False)["input_ids"]
            for k, i in zip(differ, ids):
                out[k] = np.asarray(i, dtype=np.int64)
        return out

    def _prefix_spans(self, messages: list[dict], tools, number: int) -> tuple[str, Spans]:
        """Assistant spans of a template without markers: the text each assistant turn adds to the conversation
        rendered up to the turn before it (with the generation prompt)."""
        template = self.tok.get_chat_template(None, tools)
        full = self._render(template, messages, tools)[0]
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self._render(template, messages[:i], tools, add_generation_prompt=True)[0] if i else ""
            upto = self._render(template, messages[:i + 1], tools)[0]
            if not upto.startswith(before) or not full.startswith(upto):
                raise EncodeError(
                    f"the {self.template_name} chat template renders earlier turns differently depending on what "
                    "follows, so the assistant replies cannot be located; use a template with {% generation %} "
                    "markers (chatml, zephyr, alpaca or a Jinja file) or set trainer.train_on=all", number)
            spans.append((len(before), len(upto)))
        return full, spans

    # ---- helpers

    def _with_eos(self, text: str) -> str:
        eos = self.tok.eos_token
        if self.add_eos_token and eos and not text.endswith(eos):
            return text + eos
        return text

    def _renders_messages(self) -> bool:
        return BY_NAME[self.fmt].chat

    def _plain_renderer(self):
        """The string-building renderer of the template the conversations are rendered with, or None (no chat
        rows, replies located by prefixes, a template string building does not reproduce)."""
        if not (self.chat and self._renders_messages()) or self.mask_mode == "prefix":
            return None
        template = self.mask_template if self.mask_mode == "markers" else self.tok.chat_template
        return fast_renderer(template if isinstance(template, str) else None, self.tok.special_tokens_map)

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


def _same(ids) -> tuple[np.ndarray, np.ndarray]:
    ids = np.asarray(ids, dtype=np.int64)
    return ids, ids.copy()


def _overlap_mask(offsets: np.ndarray, spans: Spans) -> np.ndarray:
    """Tokens overlapping a span, by transformers' rule for `{% generation %}` blocks (apply_chat_template: a token
    counts when it overlaps a span, so a token straddling a span's edge is trained), without its per-token loop:
    for each token, the first span ending after the token starts (never moving back, as the loop's cursor), and
    the token is in when it ends after that span starts."""
    mask = np.zeros(len(offsets), dtype=bool)
    if not spans or not len(offsets):
        return mask
    bounds = np.asarray(spans, dtype=np.int64)
    cursor = np.maximum.accumulate(np.searchsorted(bounds[:, 1], offsets[:, 0], side="right"))
    inside = cursor < len(bounds)
    mask[inside] = offsets[inside, 1] > bounds[cursor[inside], 0]
    return mask


def _span_mask(encoding, spans: Spans, n: int) -> Optional[np.ndarray]:
    """`_overlap_mask` from the tokenizer's char -> token index instead of every token's offsets; None where a
    span's edge falls outside every token or a span is empty (the caller then takes the offsets). Tokens come in
    text order (their start and end offsets never decrease), so the tokens overlapping [a, b) run from the first
    holding char a (char_to_token gives the first) to the last starting before b."""
    mask = np.zeros(n, dtype=bool)
    for a, b in spans:
        if b <= a:
            return None
        first, last = encoding.char_to_token(a), encoding.char_to_token(b - 1)
        if first is None or last is None:
            return None
        while last + 1 < n and encoding.token_to_chars(last + 1)[0] < b:  # more tokens of a char split in bytes
            last += 1
        mask[first:last + 1] = True
    return mask


def _start_mask(offsets: np.ndarray, spans: Spans) -> np.ndarray:
    """Tokens that start inside a span (the prefix-located replies: a token straddling the edge of a reply belongs
    to the text before it)."""
    mask = np.zeros(len(offsets), dtype=bool)
    if not spans or not len(offsets):
        return mask
    bounds = np.asarray(spans, dtype=np.int64)
    which = np.searchsorted(bounds[:, 0], offsets[:, 0], side="right") - 1
    inside = which >= 0
    mask[inside] = offsets[inside, 0] < bounds[which[inside], 1]
    return mask


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


# ---- preference rows: lengths only (the dpo/orpo/reward trainers tokenise through trl; these are the counts
# `prepare` and their logs report)

@dataclass
class PreferenceLengths:
    prompt: int
    chosen: int
    rejected: int


def preference_lengths(row: dict, tokenizer, chat: bool) -> PreferenceLengths:
    """Token lengths of a preference row's prompt and of each answer after it, rendered as trl renders them:
    with a chat template the prompt gets the generation prompt and each answer is what the assistant turn adds."""
    prompt = row.get("prompt")
    if chat:
        prompt_msgs = _as_messages(prompt, "user") if prompt is not None else []
        prompt_ids = (tokenizer.apply_chat_template(prompt_msgs, tokenize=True, return_dict=True,
                                                    add_generation_prompt=True)["input_ids"] if prompt_msgs else [])
        answers = []
        for key in ("chosen", "rejected"):
            conversation = prompt_msgs + _as_messages(row[key], "assistant")
            ids = tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=True)["input_ids"]
            answers.append(len(ids) - _common_prefix(list(prompt_ids), list(ids)))
        return PreferenceLengths(len(prompt_ids), *answers)
    prompt_len = len(tokenizer(text=prompt)["input_ids"]) if prompt is not None else 0
    chosen, rejected = (len(tokenizer(text=_plain(row[k]))["input_ids"]) for k in ("chosen", "rejected"))
    return PreferenceLengths(prompt_len, chosen, rejected)


def _as_messages(value, role: str) -> list[dict]:
    return value if isinstance(value, list) else [{"role": role, "content": value}]


def _plain(value) -> str:
    return value if isinstance(value, str) else "\n".join(m["content"] for m in value)


# ---- preference pairs: the dpo/orpo length limits (trl 1.16 only knows one max_length for the whole sequence)

def prompt_cap(cfg) -> int:
    """Longest prompt a dpo/orpo pair keeps: max_prompt_length, always leaving room for an answer token."""
    return min(cfg.data.max_prompt_length, cfg.data.block_size - 1)


def cut_preference_pair(prompt: list[int], answer: list[int], cfg, bos_id: Optional[int]) -> tuple[list[int], list[int]]:
    """A prompt and one answer (token ids) within the dpo/orpo limits. trl 1.16 only knows one max_length for
    the whole sequence, so the limits are ours: the prompt keeps its END (the question next to the answer; a
    leading bos stays), at most data.max_prompt_length tokens and always leaving room for an answer token; the
    answer keeps its START, at most data.max_completion_length (null: what block_size leaves after the prompt);
    together they never exceed block_size."""
    d = cfg.data
    keep = prompt_cap(cfg)
    if len(prompt) > keep:
        head = prompt[:1] if bos_id is not None and prompt[:1] == [bos_id] else []
        prompt = head + prompt[len(prompt) - (keep - len(head)):]
    room = d.block_size - len(prompt)
    return prompt, answer[:min(d.max_completion_length or room, room)]
