"""The layout the README's Architecture section describes: a library that never imports the
application, no import cycles, and ``import nemon`` free of plotting and progress bars."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "nemon"


def internal_imports(path: Path) -> set[str]:
    """Modules of the package that ``path`` imports, as dotted names below ``nemon``."""
    here = path.relative_to(PACKAGE.parent).with_suffix("").parts  # ('nemon', 'app', 'cli')
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            base = here[: len(here) - node.level]
            target = ".".join(base + ((node.module,) if node.module else ()))
            names = [f"{target}.{a.name}" for a in node.names] if not node.module else [target]
            found.update(
                n for n in names if (PACKAGE.parent / (n.replace(".", "/") + ".py")).exists()
            )
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("nemon"):
            found.add(node.module)
    return found


def graph() -> dict[str, set[str]]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = internal_imports(path)
    return modules


def test_the_library_never_imports_the_application():
    for module, imports in graph().items():
        if not module.startswith("nemon.app") and module != "nemon.__main__":
            assert not {i for i in imports if i.startswith("nemon.app")}, module


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for nxt in edges.get(node, ()):
            assert state.get(nxt) != 1, f"import cycle: {' -> '.join([*path, nxt])}"
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in edges:
        if node not in state:
            visit(node, [node])


@pytest.mark.slow
def test_import_nemon_loads_no_plotting_and_no_progress_bars():
    code = (
        "import sys, torch; before = 'tqdm' in sys.modules; import nemon; "
        "print('matplotlib' in sys.modules, 'tqdm' in sys.modules and not before, "
        "any(m.startswith('nemon.app') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "False"]


def test_certificates_read_no_solver_state_from_layers():
    """Bounds and certificates take each solve's error bound from what the solve returned
    (``layer.solve(u)``, ``Classifier.solve(u)``), never from ``layer.solver_stats``."""
    for name in ("certificates.py", "intervals.py", "explicit.py", "lipschitz.py", "models.py"):
        assert "solver_stats" not in (PACKAGE / name).read_text(), name


def test_run_files_only_where_runs_md_lists_them():
    """Results and the commands that resume a run are committed; a run's checkpoint only while
    the run is unfinished, in ``benchmarks/runs/NAME/`` (only main carries over between
    sessions), and each such folder is described in benchmarks/RUNS.md."""
    root = PACKAGE.parents[1]
    listed = subprocess.run(
        ["git", "ls-files"], cwd=root, capture_output=True, text=True, check=False
    )
    if listed.returncode != 0:  # not a git checkout (an sdist): nothing to check
        return
    runs = [p for p in listed.stdout.splitlines() if p.endswith((".pt", ".pth", ".ckpt"))]
    stray = [p for p in runs if not p.startswith("benchmarks/runs/")]
    assert not stray, f"run checkpoints outside benchmarks/runs/: {stray[:5]}"
    described = (root / "benchmarks" / "RUNS.md").read_text()
    for name in {p.split("/")[2] for p in runs}:
        assert f"benchmarks/runs/{name}/" in described, f"{name} is not described in RUNS.md"
