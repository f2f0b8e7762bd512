"""Generated corpora for the streaming tests: chat rows with an `id` column, written as JSON Lines, fast."""
from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = ("river stone lantern orbit maple cinder harbor velvet quartz meadow signal copper thistle glacier "
         "ember violet falcon prairie tundra beacon").split()


def chat_row(i: int, rng: random.Random) -> dict:
    def words(lo: int, hi: int) -> str:
        return " ".join(rng.choices(WORDS, k=rng.randint(lo, hi)))

    return {"id": i, "messages": [{"role": "user", "content": f"question {i}: {words(3, 12)}"},
                                  {"role": "assistant", "content": f"answer {i}: {words(4, 30)}"}]}


def write_chat_corpus(folder: Path, rows: int, seed: int = 0, valid_rows: int = 0) -> Path:
    """folder/train.jsonl with `rows` distinct chat rows (ids 0..rows-1), and valid.jsonl when valid_rows."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for name, ids in (("train", range(rows)), ("valid", range(rows, rows + valid_rows))):
        if len(ids):
            (folder / f"{name}.jsonl").write_text("".join(json.dumps(chat_row(i, rng)) + "\n" for i in ids))
    return folder


def write_large_corpus(file: Path, megabytes: int, seed: int = 0) -> int:
    """A chat JSONL of at least `megabytes` MB (a block of 4000 distinct rows written over and over: fast, and
    the head a run reads is ordinary data); returns its size in bytes."""
    rng = random.Random(seed)
    block = "".join(json.dumps(chat_row(i, rng)) + "\n" for i in range(4000)).encode()
    file.parent.mkdir(parents=True, exist_ok=True)
    with file.open("wb") as fh:
        for _ in range(megabytes * 2**20 // len(block) + 1):
            fh.write(block)
    return file.stat().st_size
