"""A weighted mixture of three sources in three formats (chat JSONL, Alpaca CSV, prompt/completion parquet), through
the real command line: it trains, `prepare --show` prints the realised shares, and a bad column is named by source."""
import json
import re

import pytest
import yaml

from tests.conftest import REPO, run_cli
from tests.unit.data.test_mixture import write_sources

from .conftest import losses


def config_file(tmp_path, paths, **data) -> str:
    doc = {"model": {"name_or_path": "${embedded:tiny}"},
           "data": {"chat_template": "chatml", "mixture": "interleave", **data,
                    "datasets": [{"path": str(p), "weight": w, "name": p.stem} for p, w in zip(paths, (0.5, 0.3, 0.2))]}}
    path = tmp_path / "mix.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path)


def test_the_sample_mixture_recipe_trains_and_records_each_source(tmp_path):
    run = tmp_path / "mix-run"
    run_cli("train", "recipe=sft/mixture_tiny", f"project_name={run}", "training.max_steps=6", cwd=tmp_path, check=0)
    assert len(losses(run)) >= 3
    manifest = json.loads((run / "manifest.json").read_text())
    sources = manifest["data_sources"]
    assert [(s["name"], s["weight"]) for s in sources] == [("chat", 0.5), ("alpaca", 0.3), ("qa", 0.2)]
    assert [sorted(s["files"]) for s in sources] == [
        [str(REPO / "samples/chat/train.jsonl"), str(REPO / "samples/chat/valid.jsonl")],
        [str(REPO / "samples/mixture/alpaca.csv")], [str(REPO / "samples/mixture/prompt_completion.parquet")]]
    assert all(len(h) == 64 for s in sources for h in s["files"].values())
    assert manifest["metrics"]["data_format"] == "messages"
    assert "mixture (interleave) of 3 sources" in (run / "README.md").read_text()


def test_prepare_show_prints_the_realised_shares_within_two_points(tmp_path):
    config = config_file(tmp_path, write_sources(tmp_path, (1000, 600, 400)))
    result = run_cli("prepare", "--config", config, f"project_name={tmp_path / 'run'}", "--show", "3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "mixture (interleave, first_exhausted) of 3 sources as messages rows" in out
    for index, name, fmt, weight, rows in ((0, "chat", "messages", 50.0, 1000), (1, "alpaca", "alpaca", 30.0, 600),
                                           (2, "qa", "prompt_completion", 20.0, 400)):
        line = re.search(rf"data.datasets\[{index}\] \({name}\) +{fmt} +([\d.]+)% +(\d+) +(\d+) +([\d.]+)% +(\d+) +"
                         rf"(\d+) +([\d.]+)%", out)
        assert line, out[:3000]
        w, before, after, share, tokens_before, tokens_after, _ = line.groups()
        assert float(w) == weight and int(before) == rows and 0 < int(after) <= rows
        assert abs(float(share) - weight) <= 2.0, line.group(0)
        assert 0 < int(tokens_after) <= int(tokens_before)
    labelled = re.findall(r"-- sample \d+: \d+ tokens, \d+ trained, from data.datasets\[(\d)\]", out)
    assert len(labelled) == 3


def config_with_a_bad_column(tmp_path) -> tuple[str, list]:
    """The three-source config file with a column mapping in source 1 (alpaca) naming a column it lacks; and the
    sources' paths."""
    paths = write_sources(tmp_path, (5, 5, 5))
    config = config_file(tmp_path, paths)
    doc = yaml.safe_load(open(config))
    doc["data"]["datasets"][1]["column_mapping"] = {"text_column": "response"}
    (tmp_path / "mix.yaml").write_text(yaml.safe_dump(doc))
    return config, paths


def test_a_bad_column_in_the_second_source_stops_plan_naming_source_and_file(tmp_path):
    config, paths = config_with_a_bad_column(tmp_path)
    result = run_cli("plan", "--config", config, f"project_name={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 2
    assert (f"data.datasets[1].column_mapping: data.datasets[1] (alpaca): {paths[1]}: "
            "data.datasets[1].column_mapping.text_column=response names a column the file does not have") in result.stderr
    assert "Nothing was started" in result.stderr


@pytest.mark.parametrize("form", ["yaml", "override"])
def test_the_sources_can_be_given_in_a_file_or_on_the_command_line(tmp_path, form):
    paths = write_sources(tmp_path, (8, 8, 8))
    if form == "yaml":
        args = ["--config", config_file(tmp_path, paths)]
    else:
        listed = ", ".join(f"{{path: {p}, weight: {w}, name: {p.stem}}}" for p, w in zip(paths, (0.5, 0.3, 0.2)))
        args = ["model.name_or_path=${embedded:tiny}", "data.chat_template=chatml", "data.mixture=interleave",
                f"data.datasets=[{listed}]"]
    result = run_cli("plan", *args, f"project_name={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mixture (interleave) of 3 sources: chat 0.5, alpaca 0.3, qa 0.2: messages" in result.stdout
