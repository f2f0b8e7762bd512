"""The model card (`README.md` in the run folder): what was trained, how it scored, and how to load and prompt it."""
from __future__ import annotations

from pathlib import Path

from launcher import atomic
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
{evaluation}
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


# lm-eval's direction of a metric, as its own results table marks it
DIRECTION = {True: " ↑", False: " ↓", None: ""}


def evaluation_section(record: dict) -> str:
    """The card's Evaluation section from launcher.manifest.eval_record: one row per score with the task's
    version, few-shot count and samples (a score means something only with them), under the harness version."""
    if not record:
        return ""
    tasks = record["tasks"]
    harness = sorted({str(t["lm_eval_version"]) for t in tasks.values() if t.get("lm_eval_version")})
    rows = []
    for name, value in record["scores"].items():
        task, metric = name.split("/", 1)
        info = tasks.get(task, {})
        samples = info.get("samples")
        if samples is not None and info.get("samples_in_task") not in (None, samples):
            samples = f"{samples} of {info['samples_in_task']}"
        arrow = DIRECTION.get(record["higher_is_better"].get(name), "")
        rows.append(f"| {task} | {_cell(info.get('version'))} | {_cell(info.get('num_fewshot'))} | {_cell(samples)} "
                    f"| {metric}{arrow} | {value:.4f} |")
    return (f"\n## Evaluation\n\nScored with lm-evaluation-harness {', '.join(harness) or '(version unknown)'} "
            f"(`tunelaunch eval`; each task's full output is in `eval/<task>.json`).\n\n"
            "| task | version | shots | samples | metric | value |\n|---|---|---|---|---|---|\n"
            + "\n".join(rows) + "\n")


def _cell(value) -> str:
    return "-" if value is None else str(value)


def write(folder: Path, cfg: RunConfig, metrics: dict, evaluation: dict | None = None) -> None:
    """The card of a finished run; `evaluation` (launcher.manifest.eval_record) adds its scores, as
    record_scores does once the run is scored."""
    adapter = metrics.get("saved") == "adapter"
    load = ("from peft import AutoPeftModelForCausalLM\nfrom transformers import AutoTokenizer\n"
            f'model = AutoPeftModelForCausalLM.from_pretrained("{folder}")' if adapter else
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
            f'model = AutoModelForCausalLM.from_pretrained("{folder}")')
    atomic.write_text(folder / "README.md", CARD.format(
        base=cfg.model.name_or_path, library="peft" if adapter else "transformers",
        trainer=cfg.trainer.name, peft_tag=", lora" if cfg.peft.enabled else "", name=Path(cfg.project_name).name,
        kind=metrics.get("saved", "full"), data=describe_data(cfg), format=metrics.get("data_format", "?"),
        rows=metrics.get("train_rows", "?"), template=cfg.data.chat_template, steps=metrics.get("global_step"),
        loss=metrics.get("train_loss", float("nan")), precision=cfg.precision.mixed_precision, load=load,
        path=folder, evaluation=evaluation_section(evaluation or {})))


def record_scores(run_dir: Path) -> None:
    """Refresh a finished run's model card (its Evaluation section) and manifest.json ("eval") from its
    eval/*.json; `tunelaunch eval` calls it after writing them. A folder without config.yaml and manifest.json (a
    plain model folder, or a run that has not finished) has neither to refresh: nothing is written."""
    from launcher import manifest
    from launcher.run_dir import read_config

    run_dir = Path(run_dir).resolve()  # the card names the folder to load, as the worker wrote it
    if not (run_dir / "config.yaml").is_file():
        return
    record = manifest.eval_record(run_dir)
    metrics = manifest.record_eval(run_dir, record)
    if metrics is not None:
        write(run_dir, read_config(run_dir), metrics, evaluation=record)
