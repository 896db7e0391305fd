"""The project's layout, checked: each home imports only the floors below it, no module imports itself back
through others, function-local imports of project modules say why, and no code file is too long to read."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ("pmp", "train", "demo", "experiments", "benchmarks", "app")
# What each home may import, floors from the bottom up: the library, the training package (with its world),
# the demo, then the research record and the benchmarks, which may use anything below them.
ALLOWED = {
    "pmp": {"pmp"},
    "train": {"pmp", "train"},
    "demo": {"pmp", "train", "demo"},
    "app": {"pmp", "train", "demo"},
    "experiments": {"pmp", "train", "demo", "experiments", "benchmarks"},
    "benchmarks": {"pmp", "train", "demo", "benchmarks"},
}
MAX_LINES = 500
DATA_FILES = {"train/class_names.py"}  # the benchmarks' class-name lists: data, not code
LOCAL_IMPORT_REASON = "# here:"  # a function-local import of a project module says why on its line


def project_files() -> list[Path]:
    files = [ROOT / "app.py"]
    for home in PROJECT[:-1]:
        files += sorted((ROOT / home).rglob("*.py"))
    return [path for path in files if "__pycache__" not in path.parts]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported project module, line, whether inside a function) of every import in ``path``."""
    tree = ast.parse(path.read_text())
    found = []

    def visit(node: ast.AST, local: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                found.extend((alias.name, child.lineno, inside) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and not child.level:
                found.append((child.module, child.lineno, inside))
                found.extend((f"{child.module}.{alias.name}", child.lineno, inside) for alias in child.names)
            elif isinstance(child, ast.If) and getattr(child.test, "id", "") == "TYPE_CHECKING":
                continue
            visit(child, inside)

    visit(tree, False)
    return [(name, line, local) for name, line, local in found if name.split(".")[0] in PROJECT]


def test_each_home_imports_only_the_floors_below_it() -> None:
    wrong = []
    for path in project_files():
        home = module_name(path).split(".")[0]
        for name, line, _ in imports(path):
            if name.split(".")[0] not in ALLOWED[home]:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_no_module_imports_itself_back() -> None:
    modules = {module_name(path): path for path in project_files()}
    graph = {name: {_known(target, modules) for target, _, _ in imports(path)} for name, path in modules.items()}
    graph = {name: {target for target in targets if target and target != name} for name, targets in graph.items()}
    cycles = []
    state: dict[str, int] = {}

    def walk(node: str, stack: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append(" -> ".join(stack[stack.index(target) :] + [target]))
            elif target not in state:
                walk(target, stack + [target])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name, [name])
    assert not cycles, "\n".join(cycles)


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """The project module an import names (``pkg.mod.attr`` -> ``pkg.mod``), None for a package's own name."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name if name and not modules[name].name == "__init__.py" else None


def test_function_local_imports_of_project_modules_say_why() -> None:
    unexplained = []
    for path in project_files():
        lines = path.read_text().splitlines()
        for _, line, local in imports(path):
            if local and LOCAL_IMPORT_REASON not in lines[line - 1]:
                unexplained.append(f"{path.relative_to(ROOT)}:{line}: {lines[line - 1].strip()}")
    assert not sorted(set(unexplained)), "\n".join(sorted(set(unexplained)))


def test_no_code_file_is_over_500_lines() -> None:
    files = project_files() + sorted((ROOT / "tests").rglob("*.py"))
    long = [
        f"{path.relative_to(ROOT)}: {count}"
        for path in files
        if str(path.relative_to(ROOT)) not in DATA_FILES and (count := len(path.read_text().splitlines())) > MAX_LINES
    ]
    assert not long, long


def test_the_product_runs_without_the_research_record() -> None:
    """The library, the training package and the demo import with experiments/ and benchmarks/ made unimportable."""
    blocker = "import sys\nclass Block:\n    def find_spec(self, name, path=None, target=None):\n" \
        "        if name.split('.')[0] in ('experiments', 'benchmarks'):\n            raise ImportError(name)\n" \
        "sys.meta_path.insert(0, Block())\n"  # fmt: skip
    modules = ["pmp.segmenter", "pmp.cli", "train.train_segmenter", "train.evaluate", "train.bundle",
               "train.convert_ovseg", "train.ovseg_adapt", "demo.layout", "app"]  # fmt: skip
    code = blocker + "".join(f"import {name}\n" for name in modules)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize(
    "command",
    [
        "experiments.studies",
        "experiments.adaptation",
        "experiments.calibration",
        "experiments.crop_views",
        "experiments.diagnose",
        "experiments.latency_studies",
        "benchmarks.latency",
        "benchmarks.train_step",
        "benchmarks.app_memory",
        "benchmarks.gpu_check",
        "benchmarks.world_step_profile",
        "benchmarks.prompt_change",
        "train.bundle",
        "demo.pick_examples",
    ],
)
def test_every_study_and_benchmark_command_starts(command: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", command, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and "usage:" in done.stdout, done.stderr[-1500:]
