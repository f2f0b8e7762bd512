"""Token ids and each token's place in the text, for byte-level BPE tokenizers, without the tokenizer's offsets.

The loss mask of a chat sample needs to know which tokens fall inside the assistant's replies, so preparation used
the tokenizer's character offsets. Tracking them is work the tokenizer does for every token (`encode_batch`;
`encode_batch_fast` gives the same ids without them), and the tokenizers library has no cheaper way to get them
for a few tokens only; without them preparation is faster than a bare map of the tokenizer
(benchmarks/preprocessing.py). A byte-level BPE tokenizer (GPT-2,
Llama 3, Qwen, SmolLM2: no normalizer, every token a fixed byte string) does not need them: a token's bytes are
known from its id, so the tokens' byte ranges are the running sum of their byte lengths, found with one numpy
gather per batch.

Checked, not assumed, so the ranges are the tokenizer's own offsets:
- when the table is built, probe texts (spaces, newlines, multi-byte and special tokens) are encoded both ways,
  and any difference between the offsets the tokenizer gives and the byte ranges (in characters) turns the table
  off (a post-processor that trims offsets, a normalizer, a token whose bytes are not its text);
- for every row, the tokens' bytes, joined, must be the row's text byte for byte; a row where they are not (an
  added token that strips whitespace around it, a byte-fallback model) is encoded with offsets as before.
Span edges are characters of the text, so they fall between UTF-8 sequences, and a token overlaps a span in bytes
exactly when its character offsets overlap it (a token holding part of a character has that whole character as
its offsets): the masks are the same.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

Spans = list[tuple[int, int]]

PROBES = ["Hello world!\n", "  spaced  out  \n\n\nnewlines\t tab", "猫が好き 🐈‍⬛ — ü é", "don't  I'll 12345 3.14",
          "<|im_start|>user\nhi<|im_end|>\n<s></s><|endoftext|>"]


class ByteTable:
    """Each token id's bytes (one flat array, a start and a length per id) for a tokenizer whose tokens are byte
    strings; build with `for_tokenizer`, which returns None for any other tokenizer."""

    def __init__(self, backend, flat: np.ndarray, start: np.ndarray, length: np.ndarray):
        self.backend, self.flat, self.start, self.length = backend, flat, start, length

    @classmethod
    def for_tokenizer(cls, tokenizer) -> Optional["ByteTable"]:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None or not hasattr(backend, "encode_batch_fast") or backend.normalizer is not None:
            return None
        try:
            table = cls._from_vocabulary(backend)
        except (KeyError, ValueError):  # a token that is not a byte string (SentencePiece, WordPiece)
            return None
        return table if table is not None and table._matches_offsets() else None

    @classmethod
    def _from_vocabulary(cls, backend) -> Optional["ByteTable"]:
        from transformers.convert_slow_tokenizer import bytes_to_unicode

        byte_of = {char: byte for byte, char in bytes_to_unicode().items()}
        added = {token.content for token in backend.get_added_tokens_decoder().values()}
        vocab = backend.get_vocab(with_added_tokens=True)
        size = max(vocab.values()) + 1
        pieces: list[bytes] = [b""] * size
        for token, i in vocab.items():
            # an added token is matched in the raw text, so its bytes are its text; the others are byte-level
            pieces[i] = token.encode() if token in added else bytes(byte_of[c] for c in token)
        length = np.fromiter((len(p) for p in pieces), dtype=np.int64, count=size)
        start = np.zeros(size, dtype=np.int64)
        np.cumsum(length[:-1], out=start[1:])
        return cls(backend, np.frombuffer(b"".join(pieces), dtype=np.uint8), start, length)

    def _matches_offsets(self) -> bool:
        encodings = self.backend.encode_batch(PROBES, add_special_tokens=False)
        for text, encoding in zip(PROBES, encodings):
            placed = self.encode([text])
            if not placed.good[0] or not np.array_equal(placed.ids(0), encoding.ids):
                return False
            starts, ends = placed.starts, placed.ends
            chars = _char_of_byte(text)
            # the character offsets of a byte range: from its first byte's character to past its last byte's
            expected = [(int(chars[s]), int(chars[e - 1]) + 1) if e > s else None for s, e in zip(starts, ends)]
            if any(x is None or x != tuple(o) for x, o in zip(expected, encoding.offsets)):
                return False
        return True

    def encode(self, texts: list[str]) -> "Placement":
        """The texts tokenised in one call without offsets, with each token's bytes placed (see Placement)."""
        from itertools import chain

        encodings = self.backend.encode_batch_fast(texts, add_special_tokens=False)
        counts = np.fromiter((len(e) for e in encodings), dtype=np.int64, count=len(texts))
        every = np.fromiter(chain.from_iterable(e.ids for e in encodings), dtype=np.int64, count=int(counts.sum()))
        lengths = self.length[every]
        ends = np.cumsum(lengths)
        starts = ends - lengths
        first = np.zeros(len(texts) + 1, dtype=np.int64)
        np.cumsum(counts, out=first[1:])
        edges = np.concatenate(([0], ends))[first]  # each row's first byte, in the tokens' bytes, and the end
        raw = [t.encode() for t in texts]
        good = np.diff(edges) == np.fromiter((len(r) for r in raw), dtype=np.int64, count=len(raw))
        if len(every):
            # the tokens' bytes must be the text's, byte for byte (one gather over the batch; rows whose byte
            # counts differ are already out, and their bytes are compared as the others' are, harmlessly)
            text = np.frombuffer(b"".join(r if ok else bytes(int(e - b)) for r, ok, b, e
                                          in zip(raw, good, edges[:-1], edges[1:])), dtype=np.uint8)
            wrong = self.flat[np.repeat(self.start[every] - starts, lengths) + np.arange(ends[-1])] != text
            if wrong.any():
                good[np.searchsorted(edges, np.flatnonzero(wrong), side="right") - 1] = False
        return Placement(every, starts, ends, first, edges, good)


class Placement:
    """A batch of texts tokenised with each token's bytes placed: `every` holds the ids of all rows one after the
    other (row k's are every[first[k]:first[k + 1]]), and `starts`/`ends` each token's bytes in the rows' bytes
    laid end to end (row k's begin at edges[k]). `good[k]`: row k's tokens are its text byte for byte, so their
    ranges are its offsets; a row that is not good is encoded again with the tokenizer's offsets."""

    def __init__(self, every, starts, ends, first, edges, good):
        self.every, self.starts, self.ends, self.first, self.edges, self.good = every, starts, ends, first, edges, good

    def ids(self, k: int) -> np.ndarray:
        return self.every[self.first[k]:self.first[k + 1]]

    def labels(self, texts: list[str], spans: list[Spans], rule, ignore: int) -> list[Optional[np.ndarray]]:
        """Each good row's labels: its ids where `rule(offsets, spans)` (the encoder's mask rule, on every token's
        byte range at once) marks them, else `ignore`; None for the rows that are not good. `spans[k]`: row k's
        trained character spans."""
        placed = [(self.edges[k] + a, self.edges[k] + b) for k, text in enumerate(texts) if self.good[k]
                  for a, b in byte_spans(text, spans[k])]
        mask = rule(np.stack((self.starts, self.ends), axis=1), placed)
        labels = np.where(mask, self.every, ignore)
        return [labels[self.first[k]:self.first[k + 1]] if self.good[k] else None for k in range(len(texts))]


def byte_spans(text: str, spans: Spans) -> Spans:
    """Character spans of `text` as byte spans of its UTF-8 encoding."""
    if text.isascii():
        return spans
    return [(len(text[:a].encode()), len(text[:b].encode())) for a, b in spans]


def _char_of_byte(text: str) -> np.ndarray:
    """For each byte of `text` in UTF-8, the index of the character it belongs to."""
    return np.repeat(np.arange(len(text)), [len(c.encode()) for c in text])
