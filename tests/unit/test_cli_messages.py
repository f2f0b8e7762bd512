"""Messages that point the right way, from the user's side of the real console script: another tool's config
file is named as such, a name from elsewhere gets our key, a bad value is called a value, and each problem names
the layer (and line) to edit."""
import yaml

from tests.conftest import run_cli
from tests.unit.config.foreign_configs import AXOLOTL, LLAMA_FACTORY


def run(tmp_path, *args):
    out = run_cli(*args, cwd=tmp_path, timeout=120)
    return out.returncode, out.stdout, out.stderr


def problem_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("  - ")]


def test_an_axolotl_config_is_named_once_with_our_keys(tmp_path):
    (tmp_path / "it.yaml").write_text(yaml.safe_dump(AXOLOTL, sort_keys=False))
    code, _, stderr = run(tmp_path, "plan", "--config", "it.yaml")
    assert code == 2, stderr
    assert stderr.startswith("1 problem in the configuration:")
    (line,) = problem_lines(stderr)
    assert line.startswith("  - it.yaml: this looks like an axolotl config")
    assert "`lora_r` -> `peft.r`" in line and "`learning_rate` -> `training.lr`" in line
    assert "`sequence_len` -> `data.block_size`" in line and "`micro_batch_size` -> `training.batch_size`" in line
    assert "Nothing was started." in stderr


def test_a_llama_factory_config_is_named_once_with_our_keys(tmp_path):
    (tmp_path / "it.yaml").write_text(yaml.safe_dump(LLAMA_FACTORY, sort_keys=False))
    code, _, stderr = run(tmp_path, "plan", "--config", "it.yaml")
    assert code == 2, stderr
    (line,) = problem_lines(stderr)
    assert "this looks like a LLaMA-Factory config" in line and "`cutoff_len` -> `data.block_size`" in line


def test_explain_finds_a_key_by_autotrains_or_another_tools_name(tmp_path):
    code, stdout, stderr = run(tmp_path, "explain", "lora_r")
    assert code == 0, stderr
    assert stdout.startswith("peft.r  (a whole number")
    code, stdout, stderr = run(tmp_path, "explain", "learning_rate")
    assert code == 0, stderr
    assert stdout.startswith("training.lr  (") and "Other tools call it: learning_rate." in stdout


def test_another_tools_name_on_the_command_line_gets_our_key(tmp_path):
    code, _, stderr = run(tmp_path, "plan", "recipe=sft/chat_tiny", "training.learning_rate=1e-4",
                          "sequence_len=512")
    assert code == 2, stderr
    assert problem_lines(stderr) == [
        "  - [command line] training.learning_rate: unknown key. Did you mean 'training.lr'?",
        "  - [command line] sequence_len: unknown key. Did you mean 'data.block_size'?"]


def test_an_override_is_not_blamed_on_the_config_file(tmp_path):
    (tmp_path / "at.yaml").write_text("task: llm-sft\nbase_model: org/model\nparams:\n  lr: 1e-4\n")
    code, _, stderr = run(tmp_path, "plan", "--config", "at.yaml", "training.learning_rate=1e-4")
    assert code == 2, stderr
    assert "in at.yaml" not in stderr
    assert "  - [command line] training.learning_rate: unknown key. Did you mean 'training.lr'?" in stderr


def test_a_misspelt_autotrain_task_is_a_value_error_with_its_line(tmp_path):
    (tmp_path / "at.yaml").write_text("base_model: org/model\nproject_name: p\ntask: llm-stf\n")
    code, _, stderr = run(tmp_path, "plan", "--config", "at.yaml")
    assert code == 2, stderr
    (line,) = [line for line in problem_lines(stderr) if " task: " in line]
    assert line.startswith("  - [at.yaml line 3] task: unknown value 'llm-stf'. Allowed values: llm, llm-sft")
    assert line.endswith("Did you mean 'llm-sft'?")
