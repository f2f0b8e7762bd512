"""benchmarks/packing.py's DPO section (padding-free packing of a pairwise trainer) in its --quick mode, as a user
runs it: the measurement must make sense (assertions on tokens and losses, never on times)."""
from __future__ import annotations

import math

import pytest

from .test_quick_modes import run_quick


@pytest.mark.slow
def test_packing_quick_dpo_section(tmp_path):
    m = run_quick("packing.py", tmp_path, "--skip-epochs")
    computed, real = m["dpo_computed_tokens"], m["dpo_real_tokens"]
    # the same batches in both runs (trl's real-token count agrees), and the packed one computes only those
    assert real["padded"] == real["packed"] == computed["packed"] > 0
    assert computed["padded"] > computed["packed"]
    assert math.isclose(m["dpo_ceiling"], computed["padded"] / computed["packed"])
    losses = m["dpo_losses"]
    assert m["finite"] and len(losses["padded"]) == len(losses["packed"]) > 1
    assert m["dpo_loss_gap"] < 1e-3  # same batches, same steps: packing changes what is computed, not the loss
    assert m["dpo_speedup"] > 0
