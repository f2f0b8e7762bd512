"""NEFTune (training.neftune_noise_alpha) reaches the sft trainer's arguments and the Trainer hooks the input
embeddings with it when training starts: the sft trainer built in-process, one step."""
import transformers.trainer

from launcher.trainers import sft
from tests.unit.helpers import plan


def test_neftune_alpha_reaches_the_trainer_and_hooks_the_embeddings(tmp_path, monkeypatch):
    p = plan(tmp_path, "peft=lora", "training.neftune_noise_alpha=5", "training.max_steps=1",
             "data.valid_split=null")
    hooked, built = [], {}
    activate = transformers.trainer.activate_neftune

    def spy(model, alpha, accelerator=None):
        handle = activate(model, alpha, accelerator)
        embeddings = accelerator.unwrap_model(model).get_input_embeddings()
        hooked.append((alpha, embeddings.neftune_noise_alpha, len(embeddings._forward_hooks)))
        return handle

    def train_only(trainer, cfg, run_dir, tokenizer, resume_from, data, **metrics):
        built["trainer"] = trainer
        trainer.train()
        return {}

    monkeypatch.setattr(transformers.trainer, "activate_neftune", spy)
    monkeypatch.setattr(sft, "train_and_save", train_only)
    sft.train(p.cfg, p.run_dir, None)
    assert built["trainer"].args.neftune_noise_alpha == 5.0
    assert hooked == [(5.0, 5.0, 1)]
    embeddings = built["trainer"].model.get_input_embeddings()
    assert not embeddings._forward_hooks  # removed when training ends: evaluation and generation see no noise
