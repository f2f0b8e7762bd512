"""Problems and their report (launcher/config/errors.py): one exit code, the user's own key names, did-you-mean."""
from launcher.config.errors import EXIT_CONFIG, ConfigError, Problem, did_you_mean, name_keys


def test_exit_code_of_a_refused_configuration():
    assert EXIT_CONFIG == 2


def test_did_you_mean():
    assert did_you_mean("dpp", ["sft", "dpo", "orpo"]) == " Did you mean 'dpo'?"
    assert did_you_mean("zzz", ["sft", "dpo"]) == ""
    assert did_you_mean("lrr", ["lr", "epochs"], prefix="training.") == " Did you mean 'training.lr'?"
    assert did_you_mean(3, [1, 2, 3]) == " Did you mean '3'?"  # options need not be strings
    assert did_you_mean("abcd", ["abxy"], cutoff=0.4) and not did_you_mean("abcd", ["abxy"], cutoff=0.9)


def test_keys_are_named_as_the_user_wrote_them():
    origin = {"data.block_size": "params.block_size", "model.max_length": "params.model_max_length",
              "training.lr": "training.lr"}
    named = name_keys(Problem("data.block_size / model.max_length / training.seed", "m"), origin)
    assert named.key == ("data.block_size (params.block_size) / model.max_length (params.model_max_length) / "
                         "training.seed")
    assert name_keys(Problem("training.lr", "m"), origin).key == "training.lr"  # the same name is not repeated


def test_the_report_counts_names_the_file_and_says_nothing_started():
    err = ConfigError([Problem("a", "one"), Problem("data.block_size", "two")], "at.yaml",
                      {"data.block_size": "params.block_size"})
    lines = err.report().splitlines()
    assert lines == ["2 problems in the configuration in at.yaml:", "  - a: one",
                     "  - data.block_size (params.block_size): two", "Nothing was started."]
    assert ConfigError([Problem("a", "b")]).report().startswith("1 problem in the configuration:")
