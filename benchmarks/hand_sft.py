"""The SFT a user writes by hand with TRL (the baseline of benchmarks/trl_by_hand.py): start it as tunelaunch starts
its worker, `accelerate launch --config_file FILE benchmarks/hand_sft.py --model M --data rows.jsonl ...`."""
import argparse

from datasets import load_dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

p = argparse.ArgumentParser()
for name, kind in (("--model", str), ("--data", str), ("--out", str), ("--chat-template", str), ("--max-length", int),
                   ("--batch", int), ("--steps", int), ("--lr", float), ("--seed", int), ("--logging-steps", int)):
    p.add_argument(name, type=kind, required=True)
p.add_argument("--lora", action="store_true")
a = p.parse_args()

tokenizer = AutoTokenizer.from_pretrained(a.model)
tokenizer.chat_template = open(a.chat_template).read()  # marks the assistant turns: trained on them only
model = AutoModelForCausalLM.from_pretrained(a.model, dtype="float32", attn_implementation="sdpa")
lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
args = SFTConfig(output_dir=a.out, max_length=a.max_length, per_device_train_batch_size=a.batch,
                 gradient_accumulation_steps=1, max_steps=a.steps, learning_rate=a.lr, lr_scheduler_type="constant",
                 warmup_steps=0, logging_steps=a.logging_steps, seed=a.seed, bf16=False, gradient_checkpointing=False,
                 assistant_only_loss=True, save_strategy="no", report_to="none")
trainer = SFTTrainer(model=model, args=args, train_dataset=load_dataset("json", data_files=a.data, split="train"),
                     processing_class=tokenizer, peft_config=lora if a.lora else None)
trainer.train()
trainer.save_model(a.out)
