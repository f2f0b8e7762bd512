"""References to user functions: package.module:function and path/to/file.py:function, and what each failure says."""
import pytest

from launcher.rl.references import BadReference, is_reference, resolve


def write(path, text):
    path.write_text(text)
    return path


def test_a_module_reference_resolves_to_its_function():
    import os.path

    assert resolve("os.path:join") is os.path.join


def test_a_module_in_the_working_folder_is_importable(tmp_path, monkeypatch):
    write(tmp_path / "my_scores_mod.py", "def score(completions, **kwargs):\n    return [1.0] * len(completions)\n")
    monkeypatch.chdir(tmp_path)
    assert resolve("my_scores_mod:score")(completions=["a", "b"]) == [1.0, 1.0]


def test_a_file_reference_relative_to_the_working_folder(tmp_path, monkeypatch):
    write(tmp_path / "rewards.py", "def brevity(completions, **kwargs):\n    return [0.5 for _ in completions]\n")
    monkeypatch.chdir(tmp_path)
    function = resolve("rewards.py:brevity")
    assert function.__name__ == "brevity" and function(completions=["x"]) == [0.5]


def test_a_file_reference_in_a_subfolder_and_a_class_method(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "scores.py", "class Judge:\n    @staticmethod\n    def rate(completions, **kw):\n"
                                          "        return [2.0]\n")
    monkeypatch.chdir(tmp_path)
    assert resolve("sub/scores.py:Judge.rate")(completions=["x"]) == [2.0]


def test_a_missing_module_says_not_found():
    with pytest.raises(BadReference, match=r"module 'no_such_module_xyz' not found"):
        resolve("no_such_module_xyz:f")


def test_a_module_whose_own_import_fails_names_that_import(tmp_path, monkeypatch):
    write(tmp_path / "broken_mod_abc.py", "import no_such_dependency_xyz\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BadReference) as err:
        resolve("broken_mod_abc:f")
    assert str(err.value) == ("importing broken_mod_abc failed: ModuleNotFoundError: "
                              "No module named 'no_such_dependency_xyz'")


def test_a_missing_file_says_file_not_found(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BadReference) as err:
        resolve("nope.py:f")
    assert str(err.value) == f"nope.py: file not found ({tmp_path.resolve() / 'nope.py'})"
    assert isinstance(err.value, ValueError)


def test_a_file_that_fails_to_run_says_why(tmp_path, monkeypatch):
    write(tmp_path / "bad.py", "def f(:\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BadReference, match=r"^running bad.py failed: SyntaxError"):
        resolve("bad.py:f")


def test_a_missing_attribute_suggests_the_closest_function(tmp_path, monkeypatch):
    write(tmp_path / "r.py", "def brevity(completions, **kwargs):\n    return []\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BadReference) as err:
        resolve("r.py:brevty")
    assert str(err.value) == "r.py has no attribute 'brevty'. Did you mean 'brevity'?"


def test_a_value_that_is_not_callable_is_refused(tmp_path, monkeypatch):
    write(tmp_path / "r.py", "THRESHOLD = 0.5\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BadReference) as err:
        resolve("r.py:THRESHOLD")
    assert str(err.value) == "r.py:THRESHOLD is a float, not a function"


def test_a_reference_without_a_function_is_refused():
    with pytest.raises(BadReference, match="is not a reference: write package.module:function or"):
        resolve("my_rewards.py:")


def test_what_counts_as_a_reference():
    assert [is_reference(e) for e in ("format", "a.b:f", "x.py:f", "run:runs/rm")] == [False, True, True, False]


def test_two_files_of_the_same_name_do_not_collide(tmp_path, monkeypatch):
    for sub, value in (("a", 1.0), ("b", 2.0)):
        (tmp_path / sub).mkdir()
        write(tmp_path / sub / "rewards.py", f"def f(**kw):\n    return [{value}]\n")
    monkeypatch.chdir(tmp_path)
    assert resolve("a/rewards.py:f")() == [1.0] and resolve("b/rewards.py:f")() == [2.0]
