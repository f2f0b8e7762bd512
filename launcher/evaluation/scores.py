"""Reading a run's scores back: `<run>/eval/<task>.json` holds lm-evaluation-harness's own output for one task
(what `simple_evaluate` returns, less the per-sample logs), written by `tunelaunch eval` or by `eval.tasks` at the
end of training. `runs`, the model card and the manifest read them through here, so they name a score alike."""
from __future__ import annotations

import json
from pathlib import Path

EVAL_FOLDER = "eval"


def result_files(run_dir: Path) -> list[Path]:
    return sorted((Path(run_dir) / EVAL_FOLDER).glob("*.json"))


def score_name(task: str, metric_key: str) -> str | None:
    """lm-eval keys a metric `<metric>,<filter>` (`acc,none`, `exact_match,strict-match`); ours is
    `<task>/<metric>` with the filter kept only when it is not `none`; standard errors and aliases are not scores."""
    if "," not in metric_key:
        return None
    metric, filter_name = metric_key.split(",", 1)
    if metric.endswith("_stderr"):
        return None
    return f"{task}/{metric}" if filter_name == "none" else f"{task}/{metric}[{filter_name}]"


def read_scores(run_dir: Path) -> dict[str, float]:
    """Every score of the run, `{"arc_easy/acc": 0.42, ...}`, in task order; {} when it was never evaluated.
    A file that is not lm-eval's output is skipped (a half-written one never exists: they are written atomically)."""
    scores: dict[str, float] = {}
    for path in result_files(run_dir):
        try:
            results = json.loads(path.read_text()).get("results", {})
        except (OSError, ValueError, AttributeError):
            continue
        for task, metrics in results.items():
            for key, value in metrics.items():
                name = score_name(task, key)
                if name is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
                    scores[name] = float(value)
    return scores
