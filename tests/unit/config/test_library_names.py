"""Names read from the libraries' source equal the imported enums, and reading them imports nothing heavy."""
import subprocess
import sys

import pytest

from launcher.config.library_names import enum_values


@pytest.mark.parametrize("module, cls", [("transformers.training_args", "OptimizerNames"),
                                         ("transformers.trainer_utils", "SchedulerType")])
def test_source_values_equal_the_imported_enum(module, cls):
    import importlib

    imported = tuple(m.value for m in getattr(importlib.import_module(module), cls))
    assert enum_values(module, cls) == imported and len(imported) > 5


def test_reading_names_imports_neither_transformers_nor_torch():
    code = ("import sys; from launcher.config.library_names import enum_values; "
            "assert 'adamw_torch' in enum_values('transformers.training_args', 'OptimizerNames'); "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_values_the_source_does_not_spell_out_are_found_by_importing(tmp_path, monkeypatch):
    pkg = tmp_path / "fakelib"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "names.py").write_text("import enum\nclass Kinds(str, enum.Enum):\n"
                                  "    A = 'a'.upper()\n    B = 'b' * 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert enum_values("fakelib.names", "Kinds") == ("A", "bb")
