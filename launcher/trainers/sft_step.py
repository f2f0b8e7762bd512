"""trl's SFTTrainer with a step that costs what the forward and backward cost, where trl's fused LM head has no
kernel.

trl 1.16 computes the SFT loss through a fused LM head that also yields per-token entropy and top-1 accuracy, every
micro-batch. With Triton (CUDA/XPU) that is one kernel and nearly free; elsewhere (CPU) it runs as a tiled torch
fallback that scores every position (prompt and padding included) and recomputes the logits in backward: a third
of each step on a 135M model (benchmarks/step_overhead.py). Here the loss is the model's own (same per-token mean
over `num_items_in_batch`), and entropy / token accuracy are computed from its logits only on the steps that log
them (and at evaluation), over the positions that carry a label. Everything trl does that this path does not
handle (Triton devices, label smoothing, custom loss functions, DFT, MoE aux loss, sequence parallelism) goes to
trl's own `compute_loss`.
"""
from __future__ import annotations

import torch
from transformers import Trainer
from transformers.utils import is_triton_available
from trl import SFTTrainer as TrlSFTTrainer

IGNORE = -100


def fused_kernel_available(device: torch.device) -> bool:
    """Whether trl's fused LM head runs as a Triton kernel on this device (its own test, trl.kernels)."""
    return is_triton_available() and device.type in ("cuda", "xpu")


class SFTTrainer(TrlSFTTrainer):
    def _lean_step(self, model) -> bool:
        pc = getattr(self.accelerator, "parallelism_config", None)
        return not (fused_kernel_available(self.args.device) or self.compute_loss_func is not None
                    or self.label_smoother is not None or self.args.loss_type != "nll" or self.aux_loss_enabled
                    or (pc is not None and pc.sp_enabled))

    def _logs_this_step(self) -> bool:
        """Whether the optimizer step in progress ends with a log (the rule of transformers' DefaultFlowCallback);
        every rank answers the same, so the metrics' gathers stay collective."""
        step, args = self.state.global_step + 1, self.args
        if args.logging_first_step and step == 1:
            return True
        return args.logging_strategy == "steps" and args.logging_steps > 0 and step % args.logging_steps == 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not self._lean_step(model):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        mode = "train" if self.model.training else "eval"
        inputs["use_cache"] = False
        loss, outputs = Trainer.compute_loss(self, model, inputs, return_outputs=True,
                                             num_items_in_batch=num_items_in_batch)
        if mode == "eval" or self._logs_this_step():
            self._token_metrics(mode, outputs.logits.detach(), inputs["labels"])
        if mode == "train":
            self._count_tokens(inputs)
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        return (loss, outputs) if return_outputs else loss

    @torch.no_grad()
    def _token_metrics(self, mode: str, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Mean entropy and top-1 accuracy of the next-token predictions at the labelled positions (trl's
        `entropy` and `mean_token_accuracy`)."""
        targets = labels[:, 1:]
        mask = targets != IGNORE
        scored = logits[:, :-1][mask].float()
        log_probs = torch.log_softmax(scored, dim=-1)
        entropy = -(log_probs.exp() * log_probs).sum(-1)
        correct = scored.argmax(-1) == targets[mask]
        gather = self.accelerator.gather_for_metrics
        num_valid = gather(mask.sum()).sum()
        entropy_sum = gather(entropy.sum()).sum()
        num_correct = gather(correct.sum()).sum()
        valid = num_valid.item()
        self._metrics[mode]["entropy"].append((entropy_sum / num_valid).item() if valid else 0.0)
        self._metrics[mode]["mean_token_accuracy"].append((num_correct / num_valid).item() if valid else 0.0)

    def _count_tokens(self, inputs) -> None:
        """Tokens seen, counted as trl counts them (padding-free batches have position ids, no attention mask)."""
        if "attention_mask" in inputs:
            local = inputs["attention_mask"].sum()
        else:
            ids = inputs["position_ids"]
            local = torch.tensor(ids.size(1), device=ids.device)
        self._total_train_tokens += self.accelerator.gather_for_metrics(local).sum().item() // self._tp_size
