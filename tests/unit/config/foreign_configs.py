"""An axolotl and a LLaMA-Factory config as their documentation writes them: files users bring to `--config`."""

AXOLOTL = {"base_model": "NousResearch/Llama-2-7b-hf", "load_in_4bit": True, "adapter": "qlora",
           "datasets": [{"path": "mhenrichsen/alpaca_2k_test", "type": "alpaca"}], "sequence_len": 4096,
           "lora_r": 32, "lora_alpha": 16, "lora_dropout": 0.05, "lora_target_modules": ["q_proj"],
           "micro_batch_size": 2, "gradient_accumulation_steps": 4, "num_epochs": 4, "learning_rate": 2e-4,
           "output_dir": "./out"}
LLAMA_FACTORY = {"model_name_or_path": "meta-llama/Meta-Llama-3-8B-Instruct", "stage": "sft", "do_train": True,
                 "finetuning_type": "lora", "lora_rank": 8, "lora_target": "all", "dataset": "alpaca_en_demo",
                 "template": "llama3", "cutoff_len": 2048, "output_dir": "saves/x",
                 "per_device_train_batch_size": 1, "gradient_accumulation_steps": 8, "learning_rate": 1e-4,
                 "num_train_epochs": 3.0}
