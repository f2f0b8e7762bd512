"""sdpa for packed batches, one sample at a time.

A packed, padding-free batch is one row of several samples whose position ids restart at each. transformers gives
sdpa a block-diagonal (L x L) mask for it, and sdpa still computes every block of the row: on CPU that made a
packed token cost 28% more than a padded one (benchmarks/packing.py), eating most of what packing saves. With the
sample boundaries trl's collator passes (`cu_seq_lens_q`; launcher/trainers/packed_pairs.py passes the same for the
pairwise trainers), each sample runs through sdpa on its own with a causal
mask, as flash-attention's variable-length kernel does on GPUs: the same outputs, sum(len_i^2) work instead of L^2.
Anything else (unpacked batches, generation) goes to transformers' sdpa unchanged.
"""
from __future__ import annotations

NAME = "sdpa_packed"
_BOUNDARY_KWARGS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "seq_idx")


def sdpa_packed_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                        **kwargs):
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bounds = kwargs.get("cu_seq_lens_q")
    if bounds is None or query.shape[0] != 1 or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    rest = {k: v for k, v in kwargs.items() if k not in _BOUNDARY_KWARGS}
    cuts = bounds.tolist()
    outputs = [sdpa_attention_forward(module, query[:, :, start:end], key[:, :, start:end], value[:, :, start:end],
                                      None, dropout=dropout, scaling=scaling, is_causal=True, **rest)[0]
               for start, end in zip(cuts[:-1], cuts[1:]) if end > start]
    return torch.cat(outputs, dim=1), None  # (batch, tokens, heads, head_dim), as sdpa_attention_forward returns


def register() -> str:
    """Make `attn_implementation="sdpa_packed"` known to transformers (its masks are sdpa's), and return the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, sdpa_packed_forward)
    AttentionMaskInterface.register(NAME, AttentionMaskInterface._global_mapping["sdpa"])
    return NAME
