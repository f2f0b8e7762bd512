"""Simple preference optimisation (SimPO) through trl's (experimental) CPOTrainer with its simpo loss: the reward
of an answer is trainer.beta times its mean token log-likelihood (length-normalised, no reference model), and the
loss asks the chosen answer's reward to beat the rejected one's by the margin trainer.simpo_gamma. With
trainer.cpo_alpha above 0 the SFT loss on the chosen answer is added (CPO-SimPO).

Data and length limits as for cpo, whose trainer this is (launcher/trainers/cpo.py; the table LOSSES there picks
the loss by the method's name).
"""
from __future__ import annotations

from pathlib import Path

from launcher.config.schema import RunConfig
from launcher.trainers import cpo


def train(cfg: RunConfig, run_dir: Path, resume_from: str | None) -> dict:
    return cpo.train(cfg, run_dir, resume_from)
