"""Packed rows on CUDA go through torch's variable-length flash attention (launcher/attention.py): which kernel is
chosen where, and that the varlen call computes what per-sample sdpa does. No GPU here: varlen_attn is replaced by a
reference built from per-sample sdpa that checks it is called the way each torch release's varlen_attn wants."""
import functools
from types import SimpleNamespace

import pytest
import torch

from launcher import attention
from launcher.hardware import Hardware
from tests.unit.helpers import CPU, plan
from tests.unit.test_attention import models  # noqa: F401  (the tiny Llama under sdpa and under ours)

A100 = Hardware(gpus=1, gpu_name="A100", gpu_memory_gib=80, bf16=True)  # flash-attn not installed
HAS_VARLEN = attention._varlen_attn() is not None
varlen_forward = attention.varlen_forward  # the real one, for tests that count its calls


# ---- which kernel

@pytest.mark.skipif(not HAS_VARLEN, reason="this torch has no torch.nn.attention.varlen")
def test_varlen_is_chosen_on_cuda_alone():
    assert attention.packed_kernel("cuda") == attention.VARLEN
    assert attention.packed_kernel("cuda", torch.bfloat16, 0.0, 128, (9, 0)) == attention.VARLEN
    assert attention.packed_kernel("cpu") == attention.PER_SAMPLE
    assert attention.packed_kernel("cpu", torch.bfloat16) == attention.PER_SAMPLE


def test_a_torch_without_varlen_keeps_per_sample_sdpa_on_cuda():
    bare = SimpleNamespace(nn=SimpleNamespace(attention=SimpleNamespace()), float16=torch.float16,
                           bfloat16=torch.bfloat16)
    assert attention.packed_kernel("cuda", torch_module=bare) == attention.PER_SAMPLE
    bare.nn.attention.varlen = SimpleNamespace(varlen_attn=reference_2_11)
    assert attention.packed_kernel("cuda", torch_module=bare) == attention.VARLEN


@pytest.mark.skipif(not HAS_VARLEN, reason="this torch has no torch.nn.attention.varlen")
@pytest.mark.parametrize("dtype, dropout, head_dim, capability", [
    (torch.float32, 0.0, 64, (9, 0)), (torch.bfloat16, 0.1, 64, (9, 0)), (torch.float16, 0.0, 512, (9, 0)),
    (torch.float16, 0.0, 60, (9, 0)), (torch.float16, 0.0, 64, (7, 5))])
def test_what_flash_attention_cannot_take_stays_on_per_sample_sdpa(dtype, dropout, head_dim, capability):
    assert attention.packed_kernel("cuda", torch.float16, 0.0, 64, (8, 0)) == attention.VARLEN  # Ampere, fp16
    assert attention.packed_kernel("cuda", dtype, dropout, head_dim, capability) == attention.PER_SAMPLE


# ---- what the varlen path computes

def reference(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, causal, scale=None, enable_gqa=False):
    """varlen_attn's semantics from per-sample sdpa, after checking the layout and boundaries it is given."""
    tokens = int(cu_seq_q[-1])
    assert query.dim() == key.dim() == value.dim() == 3, "varlen takes (tokens, heads, head_dim)"
    assert query.shape[0] == key.shape[0] == value.shape[0] == tokens, "tokens first, as varlen takes them"
    assert cu_seq_q.dtype == cu_seq_k.dtype == torch.int32
    assert isinstance(max_q, int) and isinstance(max_k, int) and max_q == max_k == int(cu_seq_q.diff().max())
    assert enable_gqa or key.shape[1] == query.shape[1], "without enable_gqa varlen wants as many key heads as query"
    cuts = cu_seq_q.tolist()
    out = [torch.nn.functional.scaled_dot_product_attention(
        *(t[start:end].transpose(0, 1) for t in (query, key, value)), is_causal=causal, scale=scale,
        enable_gqa=enable_gqa).transpose(0, 1) for start, end in zip(cuts[:-1], cuts[1:])]
    return torch.cat(out)


def reference_2_10(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
    """torch 2.10's signature: is_causal, no scale (1/sqrt(head_dim))."""
    return reference(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal)


def reference_2_11(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                   window_size=(-1, -1)):
    """torch 2.11's signature: causal is window_size == (-1, 0) (a tuple: a list compares unequal), no enable_gqa."""
    return reference(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, window_size == (-1, 0), scale)


def reference_2_12(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                   window_size=(-1, -1), enable_gqa=False, seqused_k=None, block_table=None, num_splits=None):
    """torch 2.12's signature and later: enable_gqa takes fewer key heads as they are."""
    if query.shape[1] != key.shape[1]:
        assert enable_gqa and key.shape[1] < query.shape[1]
    return reference(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, window_size == (-1, 0), scale, enable_gqa)


def packed_heads(lengths, heads=4, kv_heads=2, head_dim=8):
    """Random query/key/value of one packed row as transformers hands them over: (1, heads, tokens, head_dim)."""
    torch.manual_seed(0)
    tokens = sum(lengths)
    q, k, v = (torch.randn(1, h, tokens, head_dim) for h in (heads, kv_heads, kv_heads))
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return q, k, v, cu


@pytest.mark.parametrize("varlen", [reference_2_10, reference_2_11, reference_2_12])
@pytest.mark.parametrize("scaling", [None, 0.3])
def test_one_varlen_call_gives_per_sample_sdpa(monkeypatch, varlen, scaling):
    calls = []

    @functools.wraps(varlen)  # its signature too: the wrapper reads which parameters this release takes
    def counting(*args, **kwargs):
        calls.append(1)
        return varlen(*args, **kwargs)

    monkeypatch.setattr(attention, "_varlen_attn", lambda torch_module=None: counting)
    q, k, v, cu = packed_heads([5, 1, 7])
    ours, none = attention.varlen_forward(q, k, v, cu.long(), cu.long(), 7, torch.tensor(7), scaling)
    theirs, _ = attention.per_sample_forward(SimpleNamespace(num_key_value_groups=2), q, k, v, cu, scaling=scaling)
    assert none is None and len(calls) == 1
    assert ours.shape == theirs.shape == (1, 13, 4, 8)  # (batch, tokens, heads, head_dim)
    torch.testing.assert_close(ours, theirs)


def test_the_model_attends_a_packed_row_with_one_varlen_call_per_layer(models, monkeypatch):
    """The whole route through a model (GQA: 4 query heads, 2 key heads) when the kernel chosen is varlen."""
    sdpa, packed = models
    calls = []
    monkeypatch.setattr(attention, "packed_kernel", lambda *a, **k: attention.VARLEN)
    monkeypatch.setattr(attention, "_varlen_attn", lambda torch_module=None: reference_2_11)
    monkeypatch.setattr(attention, "varlen_forward", lambda *a: calls.append(1) or varlen_forward(*a))
    lengths = [7, 12, 3, 9]
    ids = torch.randint(5, sdpa.config.vocab_size, (1, sum(lengths)))
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    batch = {"input_ids": ids, "position_ids": torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0),
             "cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": 12, "max_length_k": 12}
    with torch.no_grad():
        theirs, ours = sdpa(**batch, use_cache=False).logits, packed(**batch, use_cache=False).logits
    assert len(calls) == sdpa.config.num_hidden_layers
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


# ---- the plan says which

def packing_note(tmp_path, hw):
    return next(n for n in plan(tmp_path, "data.packing=true", hw=hw).notes if n.startswith("data: packing:"))


def test_the_plan_names_torchs_varlen_on_a_gpu_without_flash_attn(tmp_path):
    note = packing_note(tmp_path, A100)
    assert "torch's variable-length flash attention (torch.nn.attention.varlen; flash-attn is not installed)" in note
    assert "the whole row in one call" in note


def test_the_plan_names_per_sample_sdpa_on_cpu(tmp_path):
    note = packing_note(tmp_path, CPU)
    assert note.count("sdpa runs each sample on its own") == 1 and "on CUDA: torch's variable-length" in note
