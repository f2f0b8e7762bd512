"""The model card (`README.md` in the run folder): what was trained and how to load and prompt it."""
from __future__ import annotations

from pathlib import Path

from launcher.config.schema import RunConfig
from launcher.data.mixture import describe as describe_data

CARD = """---
base_model: {base}
library_name: {library}
tags: [tunelaunch, {trainer}{peft_tag}]
---
# {name}

Fine-tuned from `{base}` with the **{trainer}** trainer of tunelaunch ({kind} weights).

| | |
|---|---|
| data | `{data}` ({format}, {rows} training rows) |
| chat template | `{template}` (saved with the tokenizer) |
| steps | {steps}, mean training loss {loss:.4f} |
| precision | {precision} |

## Use it

```python
{load}
tokenizer = AutoTokenizer.from_pretrained("{path}")
messages = [{{"role": "user", "content": "Hello!"}}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
out = model.generate(**inputs, max_new_tokens=64)
print(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```

Prompt it with the same chat template it was trained with (it ships in `tokenizer_config.json`);
generation stops at the template's end-of-turn token.
The configuration is in `config.yaml` (ours) and `training_params.json` (AutoTrain's parameter names).
"""


def write(folder: Path, cfg: RunConfig, metrics: dict) -> None:
    adapter = metrics.get("saved") == "adapter"
    load = ("from peft import AutoPeftModelForCausalLM\nfrom transformers import AutoTokenizer\n"
            f'model = AutoPeftModelForCausalLM.from_pretrained("{folder}")' if adapter else
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
            f'model = AutoModelForCausalLM.from_pretrained("{folder}")')
    (folder / "README.md").write_text(CARD.format(
        base=cfg.model.name_or_path, library="peft" if adapter else "transformers",
        trainer=cfg.trainer.name, peft_tag=", lora" if cfg.peft.enabled else "", name=Path(cfg.project_name).name,
        kind=metrics.get("saved", "full"), data=describe_data(cfg), format=metrics.get("data_format", "?"),
        rows=metrics.get("train_rows", "?"), template=cfg.data.chat_template, steps=metrics.get("global_step"),
        loss=metrics.get("train_loss", float("nan")), precision=cfg.precision.mixed_precision, load=load,
        path=folder))
