"""The lean SFT step gives trl's loss and trl's token metrics, and computes the metrics only on the steps that log."""
import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig
from trl import SFTTrainer as TrlSFTTrainer

from launcher.embedded import build_tiny_llama
from launcher.trainers.sft_step import SFTTrainer


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    folder = build_tiny_llama()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():  # peaked predictions, so that entropy and accuracy differ from position to position
        model.lm_head.weight.mul_(30)
    torch.manual_seed(0)
    rows = []
    for n in (9, 14, 6, 11):  # random prompt tokens (masked), then the model's own greedy answer and one random token
        prompt = torch.randint(5, len(tokenizer), (1, n))
        ids = model.generate(prompt, max_new_tokens=4, do_sample=False, min_new_tokens=4)[0].tolist()
        ids.append(int(torch.randint(5, len(tokenizer), ())))
        rows.append({"input_ids": ids, "labels": [-100] * n + ids[n:]})
    args = SFTConfig(output_dir=str(tmp_path_factory.mktemp("out")), report_to=[], per_device_train_batch_size=4,
                     padding_free=True, max_length=None, dataset_kwargs={"skip_prepare_dataset": True}, logging_steps=5,
                     logging_first_step=False, bf16=False, use_cpu=True)
    return SFTTrainer(model=model, args=args,
                      train_dataset=Dataset.from_list(rows), processing_class=tokenizer)


def batch(trainer):
    return trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))


def test_loss_and_metrics_equal_trls_fused_head(trainer):
    model = trainer.model.train()
    assert trainer._lean_step(model)  # CPU: the lean path is taken
    inputs = batch(trainer)
    assert "position_ids" in inputs and (inputs["labels"] == -100).any()

    trainer._metrics["train"].clear()
    with torch.no_grad():
        theirs = TrlSFTTrainer.compute_loss(trainer, model, dict(inputs), num_items_in_batch=None)
    trl_metrics = {k: list(v) for k, v in trainer._metrics["train"].items()}

    trainer._metrics["train"].clear()
    trainer.state.global_step = 4  # the step in progress is the 5th: a logging step
    with torch.no_grad():
        ours = trainer.compute_loss(model, dict(inputs))
    our_metrics = {k: list(v) for k, v in trainer._metrics["train"].items()}

    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)
    for key in ("entropy", "mean_token_accuracy"):
        assert our_metrics[key] == pytest.approx(trl_metrics[key], rel=1e-4), key
    assert 0.5 < our_metrics["mean_token_accuracy"][0] < 1  # the greedy answers are right, the random ends not


def test_metrics_are_skipped_on_steps_that_do_not_log(trainer):
    model = trainer.model.train()
    inputs = batch(trainer)
    trainer._metrics["train"].clear()
    trainer.state.global_step = 5  # the 6th step: no log
    with torch.no_grad():
        trainer.compute_loss(model, dict(inputs))
    assert "entropy" not in trainer._metrics["train"] and "mean_token_accuracy" not in trainer._metrics["train"]
    assert trainer._metrics["train"]["num_tokens"][0] > 0  # counted every step


def test_trls_step_is_kept_where_its_fused_kernel_runs(trainer, monkeypatch):
    import launcher.trainers.sft_step as step

    monkeypatch.setattr(step, "fused_kernel_available", lambda device: True)
    called = []
    monkeypatch.setattr(TrlSFTTrainer, "compute_loss", lambda self, *a, **k: called.append(1) or torch.tensor(0.0))
    trainer.compute_loss(trainer.model, batch(trainer))
    assert called == [1]
