"""launcher.data.byte_offsets: the tokens' byte ranges stand in for the tokenizer's offsets only where they are the
same, and the encoder's ids and labels do not change when it uses them (or falls back for a row)."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
from tokenizers import AddedToken, Tokenizer, decoders, models as tok_models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from launcher.data.byte_offsets import ByteTable, byte_spans
from launcher.data.encode import IGNORE, SFTEncoder
from launcher.data.templates import CHATML
from launcher.embedded import build_tiny_llama, smollm2_folder

ALPHABET = ["a", "b", " ", "  ", "\n", "\t", "é", "猫", "🐈‍⬛", "—", "'s", "12", ".", "<|im_end|>", "<|im_start|>"]


def tokenizer(name: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(build_tiny_llama() if name == "tiny" else smollm2_folder()))


@pytest.fixture(scope="module", params=["tiny", "smollm2"])
def tok(request):
    return tokenizer(request.param)


def random_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 40))) for _ in range(n)]


def char_offsets(text: str, starts, ends) -> list[tuple[int, int]]:
    """Byte ranges of `text` as character ranges: from the first byte's character to past the last byte's."""
    char_of = np.repeat(np.arange(len(text)), [len(c.encode()) for c in text])
    return [(int(char_of[s]), int(char_of[e - 1]) + 1) for s, e in zip(starts, ends)]


def test_byte_ranges_are_the_tokenizers_offsets_on_random_text(tok):
    table = ByteTable.for_tokenizer(tok)
    assert table is not None
    texts = random_texts(300, seed=1)
    placed = table.encode(texts)
    theirs = tok.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
    assert placed.good.all()
    for k, (text, encoding) in enumerate(zip(texts, theirs)):
        assert placed.ids(k).tolist() == encoding.ids
        row = slice(placed.first[k], placed.first[k + 1])
        starts, ends = placed.starts[row] - placed.edges[k], placed.ends[row] - placed.edges[k]
        assert char_offsets(text, starts, ends) == [tuple(o) for o in encoding.offsets], text


def test_character_spans_become_the_same_text_in_bytes():
    text = "héllo 🐈‍⬛ wörld"
    spans = [(1, 5), (6, 10), (11, 16)]
    raw = text.encode()
    assert [raw[a:b].decode() for a, b in byte_spans(text, spans)] == [text[a:b] for a, b in spans]
    assert byte_spans("plain ascii", [(0, 5)]) == [(0, 5)]


def _byte_level(post_processor=None) -> PreTrainedTokenizerFast:
    """A small byte-level BPE tokenizer (every byte a token, no merges), with `post_processor`."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    backend = Tokenizer(tok_models.BPE({c: i for i, c in enumerate(sorted(alphabet))}, []))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    if post_processor is not None:
        backend.post_processor = post_processor
    backend.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>")


def test_a_byte_level_tokenizer_is_accepted_and_one_whose_offsets_are_trimmed_is_not():
    assert ByteTable.for_tokenizer(_byte_level()) is not None
    # the same ids, but offsets without a token's leading space: byte ranges are not its offsets
    trimmed = _byte_level(processors.ByteLevel(trim_offsets=True))
    assert ByteTable.for_tokenizer(trimmed) is None


def test_a_tokenizer_whose_tokens_are_not_byte_strings_is_not_accepted():
    backend = Tokenizer(tok_models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    assert ByteTable.for_tokenizer(PreTrainedTokenizerFast(tokenizer_object=backend)) is None


CONVERSATIONS = [
    [{"role": "user", "content": "Say <x> twice"}, {"role": "assistant", "content": "<x>   <x> done 🐈‍⬛"}],
    [{"role": "user", "content": "plain"}, {"role": "assistant", "content": "  also plain  "}],
    [{"role": "user", "content": "猫"}, {"role": "assistant", "content": "<x>\n"}],
]


def test_rows_whose_bytes_do_not_join_up_fall_back_to_offsets_with_the_same_labels(tmp_path):
    """An added token that swallows the spaces after it: its bytes are not the text it matched, so its rows are
    encoded with the tokenizer's offsets; the labels are transformers' own in every row."""
    tok = tokenizer("tiny")
    tok.chat_template = CHATML  # as the loader sets it for data.chat_template=chatml
    tok.add_tokens([AddedToken("<x>", rstrip=True, normalized=False)])
    encoder = SFTEncoder(tok, "messages", "chatml")
    texts = [encoder.plain_renderer.render(c)[0] for c in CONVERSATIONS]
    assert encoder.byte_table.encode(texts).good.tolist() == [False, True, False]
    got = encoder.many([{"messages": c} for c in CONVERSATIONS])
    theirs = tok.apply_chat_template(CONVERSATIONS, tokenize=True, return_dict=True,
                                     return_assistant_tokens_mask=True)
    for enc, ids, mask in zip(got, theirs["input_ids"], theirs["assistant_masks"]):
        assert enc.input_ids == list(ids)
        assert enc.labels == [t if m else IGNORE for t, m in zip(ids, mask)]


def test_the_encoder_takes_the_byte_path_for_chat_rows(monkeypatch):
    """The speed of preparation rests on it: chat rows under chatml are tokenised without offsets (the
    tokenizer's own call, which tracks them, is not made)."""
    tok = tokenizer("smollm2")
    tok.chat_template = CHATML
    encoder = SFTEncoder(tok, "messages", "chatml")
    called = []
    monkeypatch.setattr(type(tok), "__call__", lambda self, *a, **k: called.append(a) or pytest.fail("offsets"))
    rows = [{"messages": c} for c in CONVERSATIONS[1:2] * 3 + [[{"role": "user", "content": json.dumps({"a": 1})},
                                                               {"role": "assistant", "content": "ok"}]]]
    got = encoder.many(rows)
    assert not called and all(e.trained for e in got)
