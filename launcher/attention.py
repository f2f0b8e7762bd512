"""sdpa for packed batches, one sample at a time.

A packed, padding-free batch is one row of several samples whose position ids restart at each. transformers gives
sdpa a block-diagonal (L x L) mask for it, and sdpa still computes every block of the row: on CPU that made a
packed token cost 28% more than a padded one (benchmarks/packing.py), eating most of what packing saves. With the
sample boundaries trl's collator passes (`cu_seq_lens_q`; launcher/trainers/packed_pairs.py passes the same for the
pairwise trainers), each sample is attended on its own with a causal mask, as flash-attention's variable-length
kernel does: the same outputs, sum(len_i^2) work instead of L^2. On CUDA that is torch's own variable-length flash
attention (`torch.nn.attention.varlen.varlen_attn`), one call over the whole row, so a GPU without the flash-attn
package still gets a variable-length kernel; elsewhere (CPU, a torch without it, fp32 compute, attention dropout)
sdpa runs once per sample. Anything else (unpacked batches, generation) goes to transformers' sdpa unchanged.
"""
from __future__ import annotations

import functools

NAME = "sdpa_packed"
VARLEN = "varlen_attn"
PER_SAMPLE = "sdpa per sample"
_BOUNDARY_KWARGS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "seq_idx")


def packed_kernel(device_type: str, dtype=None, dropout: float = 0.0, head_dim: int | None = None,
                  capability: tuple[int, int] | None = None, torch_module=None) -> str:
    """Which kernel attends a packed row: VARLEN or PER_SAMPLE.

    varlen_attn is flash attention: CUDA GPUs from Ampere (compute capability 8.0) on, half-precision inputs, head
    dims up to 256 in multiples of 8, and no dropout; torch has it from 2.10 on. Whatever it cannot take keeps the
    per-sample sdpa path, which is exact everywhere. `dtype`: the dtype the attention computes in (autocast's, when
    on); None skips that check, as `head_dim` and `capability` None skip theirs. A pure function of its arguments, so
    that the choice is testable without a GPU.
    """
    if device_type != "cuda" or dropout > 0 or _varlen_attn(torch_module) is None:
        return PER_SAMPLE
    torch = torch_module or _torch()
    if dtype is not None and dtype not in (torch.float16, torch.bfloat16):
        return PER_SAMPLE
    if head_dim is not None and (head_dim > 256 or head_dim % 8):
        return PER_SAMPLE
    if capability is not None and tuple(capability) < (8, 0):  # a T4 or V100: torch's flash kernels refuse them
        return PER_SAMPLE
    return VARLEN


def _torch():
    import torch

    return torch


def _varlen_attn(torch_module=None):
    """torch.nn.attention.varlen.varlen_attn, or None where this torch lacks it (before 2.10)."""
    if torch_module is None:
        import importlib

        try:  # a submodule: not an attribute of torch.nn.attention until imported
            importlib.import_module("torch.nn.attention.varlen")
        except ImportError:
            return None
        torch_module = _torch()
    varlen = getattr(getattr(getattr(torch_module, "nn", None), "attention", None), "varlen", None)
    return getattr(varlen, "varlen_attn", None)


@functools.lru_cache(maxsize=None)
def _keywords(function) -> frozenset:
    """The parameters `function` takes: varlen_attn's changed between torch releases (2.10: is_causal; 2.11:
    window_size in its place, and scale; 2.12: enable_gqa)."""
    import inspect

    return frozenset(inspect.signature(function).parameters)


def varlen_forward(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, scaling=None):
    """One varlen_attn call over a packed row, each sample attending causally to itself alone.

    query/key/value arrive as transformers' attention functions get them, (1, heads, tokens, head_dim) with fewer key
    heads under grouped-query attention; varlen_attn takes (tokens, heads, head_dim). The result is what
    transformers' attention functions return: (1, tokens, heads, head_dim), None.
    """
    import torch

    varlen_attn = _varlen_attn()
    takes = _keywords(varlen_attn)
    # varlen_attn is a custom op that autocast does not cast, and flash attention takes half precision only: cast as
    # autocast casts sdpa's inputs
    if torch.is_autocast_enabled(query.device.type):
        dtype = torch.get_autocast_dtype(query.device.type)
        query, key, value = query.to(dtype), key.to(dtype), value.to(dtype)
    query, key, value = (t[0].transpose(0, 1) for t in (query, key, value))
    options = {}
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        if "enable_gqa" in takes:
            options["enable_gqa"] = True
        else:  # torch <= 2.11 wants as many key heads as query heads; query head h reads key head h // groups
            key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    # causal: window_size (-1, 0) from 2.11 on, which must be a tuple (varlen_attn compares it to (-1, 0))
    if "window_size" in takes:
        options["window_size"] = (-1, 0)
    else:
        options["is_causal"] = True
    if scaling is not None and "scale" not in takes:  # it scales by 1/sqrt(head_dim): fold the ratio into q
        query = query * (scaling * query.shape[-1] ** 0.5)
    elif scaling is not None:
        options["scale"] = scaling
    cu_seq_q = cu_seq_q.to(device=query.device, dtype=torch.int32)
    cu_seq_k = cu_seq_q if cu_seq_k is None else cu_seq_k.to(device=query.device, dtype=torch.int32)
    longest = int(cu_seq_q.diff().max()) if max_q is None else int(max_q)
    output = varlen_attn(query, key, value, cu_seq_q, cu_seq_k, longest,
                         longest if max_k is None else int(max_k), **options)
    return output.unsqueeze(0), None


def per_sample_forward(module, query, key, value, cuts, dropout=0.0, scaling=None, **kwargs):
    """transformers' sdpa on each sample of a packed row in turn, causal within it: exact on any device."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cuts = cuts.tolist()
    outputs = [sdpa_attention_forward(module, query[:, :, start:end], key[:, :, start:end], value[:, :, start:end],
                                      None, dropout=dropout, scaling=scaling, is_causal=True, **kwargs)[0]
               for start, end in zip(cuts[:-1], cuts[1:]) if end > start]
    return torch.cat(outputs, dim=1), None  # (batch, tokens, heads, head_dim), as sdpa_attention_forward returns


def sdpa_packed_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                        **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bounds = kwargs.get("cu_seq_lens_q")
    if bounds is None or query.shape[0] != 1 or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    rest = {k: v for k, v in kwargs.items() if k not in _BOUNDARY_KWARGS}
    if rest.get("position_bias") is None and key.shape[-1] == value.shape[-1] and packed_kernel(
            query.device.type, _compute_dtype(query), dropout, query.shape[-1], _capability(query.device)) == VARLEN:
        return varlen_forward(query, key, value, bounds, kwargs.get("cu_seq_lens_k"), kwargs.get("max_length_q"),
                              kwargs.get("max_length_k"), scaling)
    return per_sample_forward(module, query, key, value, bounds, dropout=dropout, scaling=scaling, **rest)


def _compute_dtype(query):
    """The dtype attention computes in: autocast's where it is on (an fp32 master-weight run's queries are fp32
    until sdpa or varlen_forward casts them), the query's otherwise."""
    import torch

    if query.device.type == "cuda" and torch.is_autocast_enabled("cuda"):
        return torch.get_autocast_dtype("cuda")
    return query.dtype


@functools.lru_cache(maxsize=None)
def _capability(device):
    """The CUDA compute capability of `device`, None off CUDA and on ROCm (whose numbering is not NVIDIA's)."""
    import torch

    if device.type != "cuda" or torch.version.hip:
        return None
    return torch.cuda.get_device_capability(device)


def register() -> str:
    """Make `attn_implementation="sdpa_packed"` known to transformers (its masks are sdpa's), and return the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, sdpa_packed_forward)
    AttentionMaskInterface.register(NAME, AttentionMaskInterface._global_mapping["sdpa"])
    return NAME
