"""The dpo/orpo length limits (launcher/data/encode.py: prompt_cap, cut_preference_pair): the prompt keeps its end
(and a leading bos), the answer its start, together never longer than block_size; and the preference lengths
`prepare` reports."""
import pytest

from launcher.config.schema import RunConfig
from launcher.data.encode import cut_preference_pair, preference_lengths, prompt_cap

BOS = 1


def cfg_with(block_size=32, max_prompt_length=8, max_completion_length=None) -> RunConfig:
    cfg = RunConfig()
    cfg.trainer.name = "dpo"
    cfg.data.block_size, cfg.data.max_prompt_length = block_size, max_prompt_length
    cfg.data.max_completion_length = max_completion_length
    return cfg


def test_prompt_cap_leaves_room_for_an_answer_token():
    assert prompt_cap(cfg_with(block_size=32, max_prompt_length=8)) == 8
    assert prompt_cap(cfg_with(block_size=32, max_prompt_length=128)) == 31


def test_the_prompt_keeps_its_end_and_the_answer_its_start():
    prompt, answer = list(range(100, 120)), list(range(200, 230))
    kept_prompt, kept_answer = cut_preference_pair(prompt, answer, cfg_with(32, 8, 5), bos_id=None)
    assert kept_prompt == prompt[-8:]
    assert kept_answer == answer[:5]


def test_a_leading_bos_stays():
    prompt = [BOS] + list(range(100, 120))
    kept, _ = cut_preference_pair(prompt, [7], cfg_with(32, 8), bos_id=BOS)
    assert kept == [BOS] + prompt[-7:] and len(kept) == 8
    # without a bos at the front, none is invented
    kept, _ = cut_preference_pair(prompt[1:], [7], cfg_with(32, 8), bos_id=BOS)
    assert kept == prompt[-8:]


@pytest.mark.parametrize("completion_limit", [None, 4, 100])
def test_prompt_and_answer_never_exceed_block_size(completion_limit):
    cfg = cfg_with(block_size=16, max_prompt_length=128, max_completion_length=completion_limit)
    prompt, answer = list(range(50)), list(range(50, 100))
    kept_prompt, kept_answer = cut_preference_pair(prompt, answer, cfg, bos_id=None)
    assert len(kept_prompt) == 15  # the block minus one answer token
    assert len(kept_prompt) + len(kept_answer) == 16  # the answer gets what the prompt leaves (1 token)
    short_prompt, kept_answer = cut_preference_pair(prompt[:6], answer, cfg, bos_id=None)
    assert len(short_prompt) == 6 and len(kept_answer) == min(completion_limit or 10, 10)


def test_short_pairs_are_left_whole():
    prompt, answer = [5, 6, 7], [8, 9]
    assert cut_preference_pair(prompt, answer, cfg_with(32, 8, 4), bos_id=BOS) == (prompt, answer)


class _Tokenizer:
    """One id per whitespace-separated word; no chat template."""

    def __call__(self, text):
        return {"input_ids": list(range(len(text.split())))}


def test_preference_lengths_of_plain_text_rows():
    row = {"prompt": "how are you", "chosen": "fine thanks", "rejected": "no"}
    n = preference_lengths(row, _Tokenizer(), chat=False)
    assert (n.prompt, n.chosen, n.rejected) == (3, 2, 1)
    n = preference_lengths({"chosen": "a b", "rejected": "c"}, _Tokenizer(), chat=False)
    assert n.prompt == 0
