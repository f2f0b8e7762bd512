"""From the user's side: ShareGPT data and the list forms users type, through the real command line."""
import pytest

from tests.conftest import REPO, run_cli

SHAREGPT = REPO / "samples" / "sharegpt" / "train.json"
LORA = ["recipe=sft/chat_tiny", "peft=lora"]


def test_plan_reads_sharegpt_data_as_messages(tmp_path):
    result = run_cli("plan", "recipe=sft/chat_tiny", f"data.path={SHAREGPT}", "data.valid_split=null",
                     f"project_name={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"data       {SHAREGPT}: messages, 20 train rows" in result.stdout
    assert "ShareGPT rows: the `conversations` column is read as chat messages" in result.stdout


def test_prepare_shows_sharegpt_turns_as_user_and_assistant(tmp_path):
    result = run_cli("prepare", "--show", "1", "recipe=sft/chat_tiny", f"data.path={SHAREGPT}",
                     "data.valid_split=null", f"data.cache_dir={tmp_path / 'cache'}",
                     f"project_name={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Prepared messages rows for the sft trainer" in result.stdout
    assert ("<|im_start|>user\nWhat is the boiling point of water?<|im_end|>\n<|im_start|>assistant\n"
            "[[At sea level, water boils at 100 degrees Celsius, which is 212 degrees Fahrenheit.<|im_end|>]]"
            ) in result.stdout


@pytest.mark.parametrize("override", ["peft.target_modules=[q_proj,v_proj]", "peft.target_modules='q_proj,v_proj'"])
def test_plan_takes_target_modules_as_a_list_or_a_quoted_comma_string(tmp_path, override):
    result = run_cli("plan", "--show-config", *LORA, override, f"project_name={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "    target_modules:\n    - q_proj\n    - v_proj\n" in result.stdout


def test_plan_takes_target_modules_as_a_yaml_list_in_the_config_file(tmp_path):
    (tmp_path / "run.yaml").write_text("peft:\n  enabled: true\n  target_modules: [q_proj, v_proj]\n")
    result = run_cli("plan", "--show-config", "--config", "run.yaml", "recipe=sft/chat_tiny", f"project_name={tmp_path / 'run'}",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "    target_modules:\n    - q_proj\n    - v_proj\n" in result.stdout


def test_a_bare_comma_says_how_to_write_the_list_and_exits_2(tmp_path):
    result = run_cli("plan", *LORA, "peft.target_modules=q_proj,v_proj", cwd=tmp_path)
    assert result.returncode == 2
    assert "peft.target_modules=[q_proj,v_proj]" in result.stderr
    assert "\"peft.target_modules='q_proj,v_proj'\"" in result.stderr
    assert "Ambiguous" not in result.stderr


def test_explain_shows_the_list_forms(tmp_path):
    result = run_cli("explain", "peft.target_modules", cwd=tmp_path)
    assert result.returncode == 0
    assert "peft.target_modules=[q_proj,v_proj]" in result.stdout
