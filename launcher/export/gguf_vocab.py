"""The tokenizer of a GGUF: token list and types, merges, special token ids, add-bos/eos flags, chat template.

Written the way llama.cpp's convert_hf_to_gguf.py writes a Llama model's (`_set_vocab_gpt2` over `get_vocab_base`
for byte-level BPE, `_set_vocab_llama_hf` for SentencePiece-style BPE), with the gguf package's own readers:
gguf.LlamaHfVocab for the token list of a SentencePiece-style tokenizer, gguf.SpecialVocab for merges, special ids
and the chat template. Two things are taken from the loaded tokenizer instead of its files, because a run's
tokenizer is the truth the model was trained with: the special token ids, and whether encoding adds bos/eos (the
converter parses the post-processor's template, which transformers 5 no longer writes). The chat template is the
run's, with its training-only `{% generation %}` tags made plain blocks (serving_template).

One difference remains that no metadata can express: for a SentencePiece-style tokenizer llama.cpp puts a space
before text that follows a special token (SentencePiece's legacy behaviour), where transformers' LlamaTokenizer
does not, so a chat prompt built from added tokens (<|im_start|>...) tokenises a little differently in llama.cpp.
Plain text tokenises the same; byte-level BPE tokenizers (SmolLM2, Llama 3, ours) are not affected.
"""
from __future__ import annotations

import re
from pathlib import Path

import gguf

from launcher.export.gguf_plan import TokenizerPlan

# llama.cpp marks added tokens that look special as control tokens even when the tokenizer does not flag them
# (convert_hf_to_gguf.py `does_token_look_special`); the same rule keeps <|im_end|>-style tokens whole.
_LOOKS_SPECIAL = (("<|", "|>"), ("<｜", "｜>"))


# `{% generation %}...{% endgeneration %}` only marks the tokens a run trained on (transformers' assistant masks);
# it renders nothing, and template engines outside transformers (llama.cpp's, Ollama's) do not know the tag. In
# the GGUF it becomes a block that always renders, keeping any whitespace control.
_GENERATION_TAG = re.compile(r"{%(-?)\s*(end)?generation\s*(-?)%}")


def serving_template(template: str) -> str:
    """The chat template as a GGUF carries it: the run's, rendering the same text, without training-only tags."""
    return _GENERATION_TAG.sub(lambda m: "{%" + m[1] + (" endif " if m[2] else " if true ") + m[3] + "%}", template)


def _looks_special(token: str) -> bool:
    return token == "<pad>" or any(token.startswith(a) and token.endswith(b) for a, b in _LOOKS_SPECIAL)


def _byte_level_tokens(tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    """convert_hf_to_gguf.py `get_vocab_base`: every id below the model's vocab_size, added tokens as control
    (special) or user-defined, holes as [PADn]."""
    reverse = {i: token for token, i in tokenizer.get_vocab().items()}
    added = tokenizer.get_added_vocab()
    decoder = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        token = reverse.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        if token in added:
            if not decoder[i].normalized:  # llama.cpp expects added tokens as they read after normalisation
                token = tokenizer.decode(tokenizer.encode(token, add_special_tokens=False))
            types.append(gguf.TokenType.CONTROL if decoder[i].special or _looks_special(token)
                         else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
        tokens.append(token)
    return tokens, types


def _adds(tokenizer, token_id: int | None, position: int) -> bool:
    """Whether encoding a plain text puts this special token at `position` (0: first, -1: last)."""
    if token_id is None:
        return False
    with_specials = tokenizer("hello", add_special_tokens=True)["input_ids"]
    without = tokenizer("hello", add_special_tokens=False)["input_ids"]
    return len(with_specials) > len(without) and with_specials[position] == token_id


def add_vocab(writer: gguf.GGUFWriter, plan: TokenizerPlan, tokenizer, tokenizer_dir: Path, vocab_size: int,
              end_of_turn: list[int]) -> None:
    """Write the tokenizer saved in `tokenizer_dir` (loaded as `tokenizer`) into `writer`.

    end_of_turn: the ids generation stops at besides eos (the run's generation_config.json, e.g. <|im_end|> of a
    ChatML template); the first is written as llama.cpp's end-of-turn token."""
    writer.add_tokenizer_model(plan.model)
    writer.add_tokenizer_pre(plan.pre)
    if plan.model == "gpt2":
        tokens, types = _byte_level_tokens(tokenizer, vocab_size)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
    else:
        tokens, _, types = map(list, zip(*gguf.LlamaHfVocab(tokenizer_dir).all_tokens()))
        for i in range(len(tokens), vocab_size):  # embedding rows past the tokenizer (a padded vocabulary)
            tokens.append(f"[PAD{i}]".encode())
            types.append(gguf.TokenType.UNUSED)
        writer.add_token_list(tokens)
        # LlamaHfVocab gives every token the score -1000 (a placeholder, its own comment says), but llama.cpp's
        # SentencePiece tokenizer merges by score, best first. A fast tokenizer converted from SentencePiece keeps
        # the pieces in score order, so -id is that order.
        writer.add_token_scores([-float(i) for i in range(len(tokens))])
        writer.add_token_types(types)

    # merges for both kinds: llama.cpp reads them for byte-level BPE, transformers' GGUF loader for either (it
    # would otherwise rebuild them from the scores)
    special = gguf.SpecialVocab(tokenizer_dir, load_merges=True, n_vocab=len(tokens))
    # the loaded tokenizer's ids and behaviour win over what SpecialVocab parsed from the files (see above)
    for kind in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{kind}_token_id")
        if token_id is not None:
            special.special_token_ids[kind] = token_id
    special.add_special_token["bos"] = _adds(tokenizer, tokenizer.bos_token_id, 0)
    special.add_special_token["eos"] = _adds(tokenizer, tokenizer.eos_token_id, -1)
    if tokenizer.chat_template:  # a template set on the tokenizer object (the run's) wins over the files'
        special.chat_template = tokenizer.chat_template
    if isinstance(special.chat_template, str):
        special.chat_template = serving_template(special.chat_template)
    extra_stop = [i for i in end_of_turn if i != tokenizer.eos_token_id]
    if extra_stop:
        special.special_token_ids["eot"] = extra_stop[0]
    special.add_to_gguf(writer, quiet=True)
