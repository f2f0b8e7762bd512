"""`tunelaunch prepare`: the plan's checks, then the data exactly as the model will see it.

It loads the tokenizer only (no model weights), tokenises with the trainer's own code (`launcher.data.encode`,
`launcher.data.processed`), writes the processed dataset into the cache that training then reuses, and prints
rendered samples with the trained tokens marked, the length histogram, truncation counts and packing efficiency.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field

from launcher.config.errors import EXIT_CONFIG, ConfigError
from launcher.config.schema import RunConfig
from launcher.data.formats import BY_NAME, effective_template
from launcher.methods import METHODS

OPEN, CLOSE = "[[", "]]"


def main(config: str | None, overrides: list[str], show: int = 2, color: bool | None = None) -> int:
    from launcher import models
    from launcher.data.encode import EncodeError
    from launcher.data.files import DataFileError
    from launcher.data.load import fill_hub_rows
    from launcher.planning import make_plan

    try:
        plan = make_plan(config, list(overrides))
        fill_hub_rows(plan.cfg, plan.data)
    except ConfigError as err:
        print(err.report(), file=sys.stderr)
        return EXIT_CONFIG
    except DataFileError as err:
        print(f"data problem:\n{err}", file=sys.stderr)
        return EXIT_CONFIG
    cfg = plan.cfg
    if color is None:
        color = sys.stdout.isatty() and _has_rich()
    tokenizer = models.load_tokenizer(cfg)
    fmt = BY_NAME.get(plan.data.format or "")
    try:
        if METHODS[cfg.trainer.name].pairs:
            text = preference_report(cfg, tokenizer, plan.data, show)
        elif fmt is not None and fmt.unpaired:
            text = unpaired_report(cfg, tokenizer, plan.data, show)
        elif cfg.trainer.name == "sft":
            from launcher.data.processed import prepare_sft

            prepared = prepare_sft(cfg, tokenizer, plan.data)
            text = sft_report(cfg, tokenizer, plan.data, prepared, show, color)
        else:
            print(f"prepare covers the sft, preference and kto trainers, not {cfg.trainer.name}", file=sys.stderr)
            return EXIT_CONFIG
    except EncodeError as err:
        print(f"data problem: {err}", file=sys.stderr)
        return EXIT_CONFIG
    if cfg.data.streaming:  # (the stream may not fit in memory: plan read its head only)
        head = len(plan.data.train.rows) if plan.data.train else 0
        print(f"data.streaming: this covers the first {head} training rows, the ones plan checked; training reads, "
              "tokenises and packs the stream as it goes (nothing is prepared up front)")
    if isinstance(text, list):  # rich segments for a terminal
        from rich.console import Console

        console = Console(highlight=False, soft_wrap=True, markup=False, emoji=False)  # data is not markup
        for part in text:
            console.print(part)
    else:
        print(text)
    return 0


# ---- sft

def sft_report(cfg: RunConfig, tokenizer, data, prepared, show: int, color: bool = False):
    from launcher.data.mixture import describe

    train = prepared.stats["train"]
    head = [f"Prepared {data.format} rows for the sft trainer: {describe(cfg)}, template "
            f"{effective_template(cfg, data.format)}; loss on {BY_NAME[data.format].trained_part(cfg)}",
            f"  cache: {prepared.folder or 'not written'} "
            f"({'reused: nothing was tokenised' if prepared.reused else 'tokenised now'})"]
    parts: list = ["\n".join(head)]
    if data.mixture is not None:
        parts.append("\n".join(mixture_report(cfg, data.mixture, tokenizer)))
    samples = prepared.samples["train"]
    # (a sample is its row's encoding unless rows without a trained token were dropped: then the source is unknown)
    origins = data.train.origins if data.train.origins and not train.dropped else []
    n = min(show, len(samples))
    if n:
        legend = "trained tokens in green" if color else f"trained tokens in {OPEN}...{CLOSE}"
        parts.append(f"\n== {n} of {len(samples)} training samples as the model sees them ({legend})")
        for i in range(n):
            ids, labels = samples[i]["input_ids"], samples[i]["labels"]
            trained = sum(1 for x in labels[1:] if x != -100)  # the first token is never predicted
            source = f", from {data.mixture.sources[origins[i]].label}" if i < len(origins) else ""
            parts.append(f"-- sample {i + 1}: {len(ids)} tokens, {trained} trained{source}")
            parts.append(marked_text(tokenizer, ids, labels, color))
    parts.append("\n== lengths of the training samples (tokens, before truncation)")
    parts.append("\n".join(histogram(train.lengths, train.limit)))
    parts.append("\n== truncation, packing and efficiency")
    parts.append("\n".join("  " + line for line in prepared.summary()))
    if color:
        return parts
    return "\n".join(str(p) for p in parts)


def mixture_report(cfg: RunConfig, mixture, tokenizer=None) -> list[str]:
    """data.datasets: per source its training rows before and after weighting, the realised share of the rows
    against the weight, and (sft, with a tokenizer) the same in tokens, as the sft encoder counts them."""
    from launcher.data.mixture import summary_lines

    shares, picked = mixture.shares(), mixture.picked_rows()
    total = max(1, len(mixture.picks))
    out = [f"\n== {summary_lines(mixture)[0]} (seed {cfg.training.seed})",
           f"  {'source':44s} {'format':17s} {'weight':>7s} {'rows':>6s} {'in mix':>7s} {'share':>6s}"
           + (f" {'tokens':>8s} {'in mix':>8s} {'share':>6s}" if tokenizer is not None else "")]
    tokens = _source_tokens(cfg, mixture, tokenizer) if tokenizer is not None else None
    mixed_tokens = [sum(t[r] for k2, r in mixture.picks if k2 == k) for k, t in enumerate(tokens)] if tokens else []
    all_tokens = max(1, sum(mixed_tokens))
    for k, s in enumerate(mixture.sources):
        line = (f"  {s.label[:44]:44s} {s.check.format:17s} {100 * shares[k]:6.1f}% {len(s.rows):6d} {picked[k]:7d} "
                f"{100 * picked[k] / total:5.1f}%")
        if tokens:
            line += f" {sum(tokens[k]):8d} {mixed_tokens[k]:8d} {100 * mixed_tokens[k] / all_tokens:5.1f}%"
        out.append(line)
    out.append("  (rows, tokens: the source's training rows; in mix: what the mixture takes of them; share: of the "
               "mixture's training " + ("rows and tokens" if tokens else "rows") + "; validation rows are not weighted)")
    if mixture.strategy == "concat":
        out.append("  (concat: every row of every source once; the weights are not used)")
    return out


def _source_tokens(cfg: RunConfig, mixture, tokenizer) -> list[list[int]] | None:
    """Tokens of each source's training rows, one count per row (sft only: the other trainers tokenise in trl)."""
    if cfg.trainer.name != "sft":
        return None
    from launcher.data.encode import SFTEncoder

    encoder = SFTEncoder(tokenizer, mixture.format, effective_template(cfg, mixture.format), cfg.trainer.train_on,
                         cfg.data.add_eos_token)
    return [[len(e.input_ids) for e in encoder.many(s.rows)] for s in mixture.sources]


def marked_text(tokenizer, ids: list[int], labels: list[int], color: bool = False):
    """The decoded sample with its trained spans in [[...]] (or green, as a rich Text, for a terminal)."""
    runs: list[tuple[bool, list[int]]] = []
    for token, label in zip(ids, labels):
        trained = label != -100
        if runs and runs[-1][0] == trained:
            runs[-1][1].append(token)
        else:
            runs.append((trained, [token]))
    pieces = [(trained, tokenizer.decode(group, skip_special_tokens=False, clean_up_tokenization_spaces=False))
              for trained, group in runs]
    if color:
        from rich.text import Text

        text = Text()
        for trained, piece in pieces:
            text.append(piece, style="bold green" if trained else "dim")
        return text
    return "".join(f"{OPEN}{piece}{CLOSE}" if trained else piece for trained, piece in pieces)


def histogram(lengths: list[int], limit: int = 0, bins: int = 8, width: int = 40) -> list[str]:
    """Text histogram of token lengths; the bin over the limit (if any) counts the samples that get truncated."""
    if not lengths:
        return ["  (no samples)"]
    top = max(lengths)
    upper = min(top, limit) if limit else top
    low = min(min(lengths), upper)
    step = _nice(math.ceil((upper - low + 1) / bins) or 1)
    edges = list(range(low // step * step, upper + 1, step))
    counts = [0] * len(edges)
    over = 0
    for n in lengths:
        if limit and n > limit:
            over += 1
        else:
            counts[min((n - edges[0]) // step, len(edges) - 1)] += 1
    biggest = max(counts + [over]) or 1
    lines = [f"  {lo:6d}-{min(lo + step - 1, upper):<6d} {'#' * round(width * c / biggest):<{width}} {c}"
             for lo, c in zip(edges, counts)]
    if limit:
        lines.append(f"  {'> ' + str(limit):>13s} {'#' * round(width * over / biggest):<{width}} {over}"
                     f"  (truncated to {limit})")
    lines.append(f"  min {min(lengths)}, median {sorted(lengths)[len(lengths) // 2]}, max {top}, "
                 f"{len(lengths)} samples")
    return lines


def _nice(step: int) -> int:
    magnitude = 10 ** (len(str(step)) - 1)
    for m in (1, 2, 5, 10):
        if step <= m * magnitude:
            return m * magnitude
    return step


# ---- preference trainers: lengths and truncation counts (their tokenisation is trl's)

@dataclass
class PreferenceStats:
    rows: int = 0
    prompt_truncated: int = 0
    chosen_truncated: int = 0
    rejected_truncated: int = 0
    prompt_lengths: list = field(default_factory=list)
    answer_lengths: list = field(default_factory=list)
    sequence_lengths: list = field(default_factory=list)
    """Per row, the token lengths of the sequences the trainer runs (prompt + answer each, as cut)."""


def preference_stats(cfg: RunConfig, tokenizer, rows: list, fmt: str) -> PreferenceStats:
    """How many prompts and answers the trainers cut: dpo/orpo by `launcher.data.encode.cut_preference_pair` (the
    prompt to max_prompt_length, each answer to max_completion_length or what block_size leaves), reward by
    block_size (no prompt)."""
    from launcher.data.encode import cut_preference_pair, preference_lengths

    chat = effective_template(cfg, fmt) != "none"
    prompted = "prompt" in BY_NAME[fmt].columns  # (reward pairs have no prompt: each text is scored whole)
    st = PreferenceStats(rows=len(rows))
    for row in rows:
        n = preference_lengths(row, tokenizer, chat)
        st.prompt_lengths.append(n.prompt)
        st.answer_lengths += [n.chosen, n.rejected]
        if cfg.trainer.name == "reward":  # each text whole (prompt + answer); trl drops the pairs over block_size
            pair = (n.prompt + n.chosen, n.prompt + n.rejected)
            if max(pair) <= cfg.data.block_size:
                st.sequence_lengths.append(pair)
        if not prompted:  # reward pairs: each text whole, up to block_size
            st.chosen_truncated += n.chosen > cfg.data.block_size
            st.rejected_truncated += n.rejected > cfg.data.block_size
            continue
        kept = []
        for answer, attr in ((n.chosen, "chosen_truncated"), (n.rejected, "rejected_truncated")):
            prompt_kept, answer_kept = cut_preference_pair(list(range(n.prompt)), list(range(answer)), cfg, None)
            setattr(st, attr, getattr(st, attr) + (len(answer_kept) < answer))
            kept.append(len(prompt_kept) + len(answer_kept))
        if cfg.trainer.name != "reward":
            st.sequence_lengths.append(tuple(kept))
        st.prompt_truncated += len(cut_preference_pair(list(range(n.prompt)), [], cfg, None)[0]) < n.prompt
    return st


def preference_report(cfg: RunConfig, tokenizer, data, show: int) -> str:
    from launcher.data.encode import prompt_cap
    from launcher.data.mixture import describe

    d = cfg.data
    name = effective_template(cfg, data.format)
    out = [f"Prepared {data.format} rows for the {cfg.trainer.name} trainer: {describe(cfg)}, template {name} "
           f"(trl tokenises them when training; these are the lengths it will see)"]
    if data.mixture is not None:
        out += mixture_report(cfg, data.mixture)
    rows = data.train.rows
    if rows[:show]:
        out.append(f"\n== {min(show, len(rows))} of {len(rows)} rows, each answer in {OPEN}...{CLOSE}")
    for i, row in enumerate(rows[:show]):
        out.append(f"-- row {i + 1}{_from_source(data, i)}")
        if name != "none":
            for label, conversation in zip(("chosen", "rejected"), BY_NAME[data.format].conversations(row)):
                prompt = conversation[:-1]
                head = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False) if prompt else ""
                full = tokenizer.apply_chat_template(conversation, tokenize=False)
                if full.startswith(head):
                    full = f"{head}{OPEN}{full[len(head):]}{CLOSE}"
                out.append(f"[{label}] {full}")
        else:
            prompt = row.get("prompt", "")
            out += [f"[{k}] {prompt}{OPEN}{row[k]}{CLOSE}" for k in ("chosen", "rejected")]
    for split_name, split in (("train", data.train), ("valid", data.valid)):
        if split is None:
            continue
        st = preference_stats(cfg, tokenizer, split.rows, data.format)
        out.append(f"\n== {split_name}: {st.rows} rows")
        if "prompt" in BY_NAME[data.format].columns:  # (reward pairs: no prompt, each text whole)
            keep = prompt_cap(cfg)
            out.append(f"  prompts cut to their last {keep} tokens (max_prompt_length): {st.prompt_truncated}")
            out += histogram(st.prompt_lengths, keep)
            limit = (f"max_completion_length {d.max_completion_length}" if d.max_completion_length
                     else f"what block_size {d.block_size} leaves after the prompt")
            out.append(f"  answers cut to {limit}: chosen {st.chosen_truncated}, rejected {st.rejected_truncated}")
            out += histogram(st.answer_lengths)
        else:
            out.append(f"  texts cut to block_size {d.block_size}: chosen {st.chosen_truncated}, rejected "
                       f"{st.rejected_truncated}")
            out += histogram(st.answer_lengths, d.block_size)
        if split_name == "train":
            out += packed_rows_report(cfg, st.sequence_lengths, ("chosen", "rejected"), show)
    return "\n".join(out)


def packed_rows_report(cfg: RunConfig, lengths: list, names: tuple[str, ...], show: int) -> list[str]:
    """The padded and packed layouts of the pairwise trainers' batches (launcher/trainers/packed_pairs.py): with
    data.packing the first `show` batches' best-fit rows, each sequence with its boundaries in the batch's one
    padding-free row, and the computed tokens padded vs packed over the epoch; without, what packing would save.
    Batches are counted in file order (training shuffles them: an estimate of the same size)."""
    from launcher.trainers import packed_pairs

    batch = cfg.training.batch_size
    capacity = packed_pairs.capacity(cfg)
    eff = packed_pairs.packing_efficiency(lengths, batch, capacity)
    if not cfg.data.packing:
        return [f"\n== packing: off; data.packing=true would compute {eff.packed_tokens} tokens per epoch instead "
                f"of {eff.padded_tokens} (padded batches of {batch}: real/computed {eff.padded_efficiency:.3f})"]
    out = [f"\n== packing (data.packing=true): batches of {batch} examples, their sequences best-fit into rows of "
           f"{capacity} tokens (an example's sequences in one row), position ids restarting at each sequence, "
           "no padding"]
    for b, start in enumerate(range(0, min(show * batch, len(lengths)), batch)):
        rows = packed_pairs.layout(lengths[start:start + batch], capacity)
        out.append(f"-- batch {b + 1}: {sum(len(r) for r in rows)} sequences in {len(rows)} row(s), "
                   f"boundaries (cu_seq_lens) {[0] + [seg[3] for r in rows for seg in r]}")
        for i, row in enumerate(rows):
            segments = ", ".join(f"[{a}, {e}) example {start + ex + 1} {names[seq]}" for ex, seq, a, e in row)
            out.append(f"   row {i + 1}: {row[-1][3] - row[0][2]} of {capacity} tokens: {segments}")
    out.append(f"  computed tokens per epoch: padded {eff.padded_tokens} (real/computed "
               f"{eff.padded_efficiency:.3f}), packed {eff.packed_tokens} (real/computed "
               f"{eff.packed_efficiency:.3f}): {eff.ceiling:.2f}x fewer, in {eff.rows} best-fit rows")
    return out


# ---- unpaired rows (kto): the label and the trained completion of each, tokenised as trl does, then cut

@dataclass
class UnpairedSample:
    label: bool
    prompt_ids: list
    completion_ids: list
    prompt_length: int
    """Before the cut (data.max_prompt_length)."""
    completion_length: int


def unpaired_sample(row: dict, fmt: str, cfg: RunConfig, tokenizer, conversational: bool) -> UnpairedSample:
    """One unpaired row as KTOTrainer tokenises it (conversations through the chat template with the generation
    prompt, plain text with the eos token appended to the completion; the completion starts where the prompt
    and the whole diverge), then cut to the limits as launcher.trainers.kto cuts it."""
    from trl.data_utils import common_prefix_length

    from launcher.data.encode import cut_preference_pair

    row = BY_NAME[fmt].trl_row(row, conversational)
    if conversational:
        prompt = tokenizer.apply_chat_template(row["prompt"], tokenize=True, return_dict=True,
                                               add_generation_prompt=True)["input_ids"]
        whole = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=True,
                                              return_dict=True)["input_ids"]
    else:
        eos = tokenizer.eos_token or ""
        completion = row["completion"] if row["completion"].endswith(eos) else row["completion"] + eos
        prompt = tokenizer(text=row["prompt"])["input_ids"]
        whole = tokenizer(text=row["prompt"] + completion)["input_ids"]
    start = common_prefix_length(list(prompt), list(whole))
    prompt_ids, completion_ids = list(whole[:start]), list(whole[start:])
    kept_prompt, kept_completion = cut_preference_pair(prompt_ids, completion_ids, cfg, tokenizer.bos_token_id)
    return UnpairedSample(row["label"], kept_prompt, kept_completion, len(prompt_ids), len(completion_ids))


def unpaired_report(cfg: RunConfig, tokenizer, data, show: int) -> str:
    from launcher.data.encode import prompt_cap
    from launcher.data.formats import is_conversational, label_counts
    from launcher.data.mixture import describe

    d = cfg.data
    splits = [(name, s) for name, s in (("train", data.train), ("valid", data.valid)) if s is not None]
    conversational = is_conversational(cfg, [s for _, s in splits])
    name = effective_template(cfg, data.format) if conversational else "none"
    out = [f"Prepared {data.format} rows for the {cfg.trainer.name} trainer: {describe(cfg)}, template {name} "
           f"(trl tokenises them when training, as here); each completion's reward is raised when labelled true "
           f"(desirable, weight {cfg.trainer.desirable_weight}) and lowered when false (undesirable, weight "
           f"{cfg.trainer.undesirable_weight})"]
    if data.mixture is not None:
        out += mixture_report(cfg, data.mixture)
    rows = data.train.rows
    if rows[:show]:
        out.append(f"\n== {min(show, len(rows))} of {len(rows)} rows as the model sees them, the trained completion "
                   f"in {OPEN}...{CLOSE}")
    for i, row in enumerate(rows[:show]):
        sample = unpaired_sample(row, data.format, cfg, tokenizer, conversational)
        kind = "true (desirable)" if sample.label else "false (undesirable)"
        out.append(f"-- row {i + 1}{_from_source(data, i)}: label {kind}, {len(sample.prompt_ids)} prompt tokens, "
                   f"{len(sample.completion_ids)} trained")
        out.append(f"{_decode(tokenizer, sample.prompt_ids)}{OPEN}{_decode(tokenizer, sample.completion_ids)}{CLOSE}")
    keep = prompt_cap(cfg)
    for split_name, split in splits:
        samples = [unpaired_sample(r, data.format, cfg, tokenizer, conversational) for r in split.rows]
        desirable, undesirable = label_counts(split.rows)
        out.append(f"\n== {split_name}: {len(samples)} rows, {desirable} desirable (true), {undesirable} undesirable "
                   "(false)")
        cut = sum(len(s.prompt_ids) < s.prompt_length for s in samples)
        out.append(f"  prompts cut to their last {keep} tokens (max_prompt_length): {cut}")
        out += histogram([s.prompt_length for s in samples], keep)
        limit = (f"max_completion_length {d.max_completion_length}" if d.max_completion_length
                 else f"what block_size {d.block_size} leaves after the prompt")
        cut = sum(len(s.completion_ids) < s.completion_length for s in samples)
        out.append(f"  completions cut to {limit}: {cut}")
        out += histogram([s.completion_length for s in samples])
        if split_name == "train":  # the KL sequences (other rows' completions) get a padding-free row of their own
            lengths = [(len(s.prompt_ids) + len(s.completion_ids),) for s in samples]
            out += packed_rows_report(cfg, lengths, ("prompt+completion",), show)
    return "\n".join(out)


def _from_source(data, i: int) -> str:
    """`, from data.datasets[k] (name)` for row i of a mixture's training split."""
    origins = data.train.origins
    return f", from {data.mixture.sources[origins[i]].label}" if i < len(origins) else ""


def _decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _has_rich() -> bool:
    import importlib.util

    return importlib.util.find_spec("rich") is not None
