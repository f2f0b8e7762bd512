"""sdpa one packed sample at a time (launcher/attention.py) gives what sdpa with the block-diagonal mask gives."""
import pytest
import torch
from transformers import AutoModelForCausalLM

from launcher import attention
from launcher.embedded import build_tiny_llama


@pytest.fixture(scope="module")
def models():
    folder = build_tiny_llama()
    name = attention.register()
    return (AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa").eval(),
            AutoModelForCausalLM.from_pretrained(folder, attn_implementation=name).eval())


def packed_batch(lengths, vocab):
    torch.manual_seed(0)
    ids = torch.randint(5, vocab, (1, sum(lengths)))
    position_ids = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return {"input_ids": ids, "position_ids": position_ids, "cu_seq_lens_q": cu, "cu_seq_lens_k": cu,
            "max_length_q": max(lengths), "max_length_k": max(lengths)}


def test_packed_samples_give_sdpas_logits_and_each_its_own_alone(models):
    sdpa, packed = models
    lengths = [7, 12, 3, 9]
    batch = packed_batch(lengths, sdpa.config.vocab_size)
    with torch.no_grad():
        theirs = sdpa(**batch, use_cache=False).logits
        ours = packed(**batch, use_cache=False).logits
        alone = sdpa(input_ids=batch["input_ids"][:, 7:19], use_cache=False).logits  # the second sample alone
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours[:, 7:19], alone, atol=1e-5, rtol=1e-4)


def test_without_boundaries_it_is_sdpa(models):
    sdpa, packed = models
    ids = torch.randint(5, sdpa.config.vocab_size, (2, 10))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    with torch.no_grad():
        torch.testing.assert_close(packed(input_ids=ids, attention_mask=mask).logits,
                                   sdpa(input_ids=ids, attention_mask=mask).logits)
