"""The package's boundaries, read from its source (ast), so that the refactor's shape stays:

- the CLI reaches the distributed machinery through one door, `launcher.distributed.launch.prepare`;
- only launcher/distributed/ and launcher/config/ know backend names and ZeRO stages: everything else reads the
  backend table's rows or the resolved configuration (no `backend == "deepspeed"`, no `zero_stage`);
- the shipped launcher knows nothing of the test probe (tests/distributed puts it into the workers themselves);
- the configuration layer does not depend on the distributed layer;
- the CLI reaches Slurm through one door, `launcher.cluster.submit`, and Slurm's commands are named only under
  launcher/cluster/ (a scheduler is not a distributed backend);
- no import cycle anywhere in launcher/ (imports inside functions count: they only hide a cycle).

Each checker is also run on a small snippet that breaks its rule, so a checker that finds nothing is not mistaken
for a clean package."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

LAUNCHER = REPO / "launcher"
BACKEND_NAMES = {"deepspeed", "fsdp", "ddp"}
KNOWS_BACKENDS = ("distributed", "config")  # the folders of launcher/ allowed to name backends and ZeRO stages

# Violations found when this test was written, reported to the package's owner with a fix. Each must still be a
# violation (fixing one means removing it from here, or the test fails); nothing else may join them.
KNOWN: set = set()
KNOWN_CLI_IMPORTS: set = set()


def sources(folder: Path = LAUNCHER) -> dict[str, ast.Module]:
    return {str(p.relative_to(REPO)): ast.parse(p.read_text(), str(p)) for p in sorted(folder.rglob("*.py"))}


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def imports(tree: ast.AST, module: str = "") -> list[str]:
    """Every imported name as a dotted path (`from a.b import c` -> a.b.c), relative imports resolved."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = module.split(".")[:-node.level]
                base = ".".join(parent + ([base] if base else []))
            out += [f"{base}.{alias.name}" for alias in node.names]
    return out


def backend_comparisons(tree: ast.AST) -> list[str]:
    """Comparisons (==, !=, in, match cases) of a value with a backend name."""
    found = []
    for node in ast.walk(tree):
        operands = []
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
        elif isinstance(node, ast.MatchValue):
            operands = [node.value]
        for operand in operands:
            for c in ast.walk(operand):
                if isinstance(c, ast.Constant) and c.value in BACKEND_NAMES:
                    found.append(f"line {node.lineno}: compares with '{c.value}'")
    return found


def zero_stage_mentions(tree: ast.AST) -> list[str]:
    docstrings = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if ((isinstance(node, ast.Attribute) and node.attr == "zero_stage")
                or (isinstance(node, ast.Name) and node.id == "zero_stage")
                or (isinstance(node, ast.keyword) and node.arg == "zero_stage")
                or (isinstance(node, ast.Constant) and isinstance(node.value, str) and "zero_stage" in node.value
                    and id(node) not in docstrings)):
            found.append(f"line {node.lineno}: zero_stage")
    return found


def probe_uses(tree: ast.AST, module: str = "") -> list[str]:
    """Imports of a probe module, or string constants naming TUNELAUNCH_PROBE* variables (docstrings aside)."""
    docstrings = _docstrings(tree)
    found = [f"imports {name}" for name in imports(tree, module) if "probe" in name.lower()]
    for node in ast.walk(tree):
        if (isinstance(node, ast.Constant) and isinstance(node.value, str) and "TUNELAUNCH_PROBE" in node.value
                and id(node) not in docstrings):
            found.append(f"line {node.lineno}: {node.value!r}")
    return found


def _module(path: str) -> str:
    return path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


# ---- the checkers can fail

def test_the_checkers_find_what_they_look_for():
    bad = ast.parse(
        'import launcher.distributed.memory\n'
        'from launcher.distributed import launch\n'
        'from ..distributed.launch import node_command\n'
        'import tunelaunch_probe\n'
        'if cfg.distributed.backend == "deepspeed": pass\n'
        'ok = backend in ("fsdp", "none")\n'
        'match b:\n    case "ddp": pass\n'
        'stage = d.zero_stage\n'
        'x = dict(zero_stage=3)\n'
        'env = os.environ.get("TUNELAUNCH_PROBE_DIR")\n')
    assert imports(bad, "launcher.config.validate") == [
        "launcher.distributed.memory", "launcher.distributed.launch", "launcher.distributed.launch.node_command",
        "tunelaunch_probe"]
    assert len(backend_comparisons(bad)) == 3
    assert len(zero_stage_mentions(bad)) == 2
    assert len(probe_uses(bad)) == 2
    clean = ast.parse('"""zero_stage, TUNELAUNCH_PROBE_DIR and deepspeed in a docstring are fine."""\n'
                      'PACKAGES = ("torch", "deepspeed")\nrow = BACKENDS[cfg.distributed.backend]\n')
    assert backend_comparisons(clean) == zero_stage_mentions(clean) == probe_uses(clean) == []


# ---- the package

def test_the_cli_reaches_distributed_only_through_its_entry_point():
    """launcher.distributed.launch is the one entry point (prepare, run, submit, the dry-run scripts)."""
    tree = sources()["launcher/cli.py"]
    reached = {name for name in imports(tree, "launcher.cli") if name.startswith("launcher.distributed")}
    allowed = {"launcher.distributed.launch", "launcher.distributed.launch.prepare"}
    assert reached - allowed - KNOWN_CLI_IMPORTS == set(), sorted(reached)
    assert KNOWN_CLI_IMPORTS <= reached, f"fixed, remove from KNOWN_CLI_IMPORTS: {KNOWN_CLI_IMPORTS - reached}"


def test_only_distributed_and_config_know_backend_names_and_zero_stages():
    found = set()
    report = []
    for path, tree in sources().items():
        if path.split("/")[1] in KNOWS_BACKENDS:
            continue
        for what, hits in (("backend name", backend_comparisons(tree)), ("zero_stage", zero_stage_mentions(tree))):
            if hits:
                found.add((path, "zero_stage" if what == "zero_stage" else "backend name"))
                report += [f"{path} {hit}" for hit in hits]
    assert found - KNOWN == set(), "\n".join(report)
    assert KNOWN <= found, f"fixed, remove from KNOWN: {KNOWN - found}"


def test_the_launcher_knows_nothing_of_the_test_probe():
    assert not (LAUNCHER / "distributed" / "probe.py").exists()
    report = [f"{path}: {use}" for path, tree in sources().items() for use in probe_uses(tree, _module(path))]
    assert report == []


def test_the_cli_reaches_slurm_only_through_its_door():
    tree = sources()["launcher/cli.py"]
    reached = {name.rsplit(".", 1)[0] if name.count(".") > 2 else name
               for name in imports(tree, "launcher.cli") if name.startswith("launcher.cluster")}
    assert reached <= {"launcher.cluster.submit"}, sorted(reached)


SLURM_COMMANDS = {"sbatch", "srun", "scontrol", "squeue", "sacct", "scancel", "sinfo", "salloc"}


def slurm_command_uses(tree: ast.AST) -> list[str]:
    """String constants that are exactly a Slurm command (a list item of a subprocess call), docstrings aside."""
    docstrings = _docstrings(tree)
    return [f"line {node.lineno}: {node.value!r}" for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
            and node.value in SLURM_COMMANDS]


def test_slurm_commands_are_run_only_under_cluster():
    report = [f"{path}: {use}" for path, tree in sources().items() if not path.startswith("launcher/cluster/")
              for use in slurm_command_uses(tree)]
    assert report == []
    assert slurm_command_uses(ast.parse('subprocess.run(["scontrol", "requeue", job])\n'))
    assert not (LAUNCHER / "distributed" / "slurm.py").exists()


def import_graph(trees: dict[str, ast.Module]) -> dict[str, set[str]]:
    """module -> the launcher modules it imports (anywhere in its body), each name resolved to a module."""
    modules = {_module(path): tree for path, tree in trees.items()}

    def owner(name: str) -> str:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for module, tree in modules.items():
        targets = {owner(name) for name in imports(tree, module) if name.startswith("launcher")}
        graph[module] = {t for t in targets if t and t != module and t != "launcher"}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_one():
    trees = {"launcher/a.py": ast.parse("def f():\n    from launcher import b\n"),
             "launcher/b.py": ast.parse("from launcher.c import x\n"),
             "launcher/c.py": ast.parse("import launcher.a\n"),
             "launcher/d.py": ast.parse("from launcher import a\n")}
    assert cycles(import_graph(trees)) == [["launcher.a", "launcher.b", "launcher.c"]]


def test_launcher_has_no_import_cycle():
    found = cycles(import_graph(sources()))
    assert found == [], "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_config_does_not_import_distributed():
    report = [f"{path}: {name}" for path, tree in sources(LAUNCHER / "config").items()
              for name in imports(tree, _module(path)) if name.startswith("launcher.distributed")]
    assert report == []


@pytest.mark.parametrize("path", ["launcher/config/schema.py", "launcher/methods.py"])
def test_the_tables_import_nothing_heavy(path):
    """The schema and the methods table are read by every command: no torch, transformers, trl at import."""
    tree = ast.parse((REPO / path).read_text())
    top = [name for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))
           for name in imports(ast.Module(body=[node], type_ignores=[]), _module(path))]
    assert not [n for n in top if n.split(".")[0] in ("torch", "transformers", "trl", "peft", "accelerate")]
