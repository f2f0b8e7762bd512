"""The benchmarks' chat data, generated: deterministic (seeded) rows in the `messages` format tunelaunch reads, with
a long-tailed reply length like real instruction data (log-normal: median ~120 words, a few replies at the
1,500-word cap, a few of only 3 words).

Words come from a fixed vocabulary of short, common English words, which BPE tokenizers of English models
(SmolLM2's included) keep as one token each, so a reply of n words is about n + n/12 tokens (a full stop closes
every sentence of ~12 words).

    python benchmarks/dataset.py --rows 2000 --out /tmp/chat.jsonl [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

VOCAB = """the of and to in is that it for was on are as with his they at be this from have or by one had not but
what all were when we there can an your which their said if do will each about how up out them then she many some
so these would other into has more her two like him see time could no make than first been its who now people my
made over did down only way find use may water long little very after words called just where most know get
through back much go good new write our me man too any day same right look think also around another came come
work three word must because does part even place well such here take why things help put years different away
again off went old number great tell men say small every found still between name should home big give air line
set own under read last never us left end along while might next sound below saw something thought both few those
always looked show large often together asked house world going want school important until form food keep
children feet land side without boy once animals life enough took sometimes four head above kind began almost
live page got earth need far hand high year mother light parts country father let night following picture being
study second eyes soon times story boys since white days ever paper hard near sentence better best across during
today others sure means knew its try told young miles sun ways thing whole hear example heard several change
answer room sea against top turned learn point city play toward five using himself usually""".split()

SYSTEM_PROMPTS = ["You are a helpful assistant.", "You are a concise assistant. Answer briefly.",
                  "You are a patient teacher who explains step by step."]
MEDIAN_REPLY_WORDS = 120
SIGMA = 1.1  # log-normal spread: ~5% of replies above 740 words, ~1% at the 1,500-word cap
MIN_REPLY_WORDS, MAX_REPLY_WORDS = 3, 1500


def _words(rng: random.Random, n: int) -> str:
    out, sentence = [], 0
    for i in range(n):
        word = rng.choice(VOCAB)
        out.append(word.capitalize() if sentence == 0 else word)
        sentence += 1
        if sentence >= 12 or i == n - 1:
            out[-1] += "."
            sentence = 0
    return " ".join(out)


def reply_words(rng: random.Random) -> int:
    n = int(round(rng.lognormvariate(math.log(MEDIAN_REPLY_WORDS), SIGMA)))
    return max(MIN_REPLY_WORDS, min(MAX_REPLY_WORDS, n))


def rows(n: int, seed: int = 0) -> list[dict]:
    """n chat rows: an optional system prompt (every other row or so), a user question of 6-40 words, and an
    assistant reply of log-normal length. The same (n, seed) always gives the same rows, and the first k rows of
    a longer list are the rows of a shorter one."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        messages = []
        if rng.random() < 0.5:
            messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
        question = _words(rng, rng.randint(6, 40)).rstrip(".") + "?"
        messages.append({"role": "user", "content": question})
        messages.append({"role": "assistant", "content": _words(rng, reply_words(rng))})
        out.append({"messages": messages})
    return out


def write(n: int, out: Path, seed: int = 0) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows(n, seed)), encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True, help="a .jsonl file")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = write(args.rows, args.out, args.seed)
    lengths = sorted(len(r["messages"][-1]["content"].split()) for r in rows(args.rows, args.seed))
    pct = lambda q: lengths[min(len(lengths) - 1, int(q * len(lengths)))]  # noqa: E731
    print(f"{path}: {args.rows} rows; reply words min {lengths[0]}, median {pct(0.5)}, p90 {pct(0.9)}, "
          f"p99 {pct(0.99)}, max {lengths[-1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
