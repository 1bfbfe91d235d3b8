"""The package layering of docs/architecture.md, checked on the source: who may import whom, no
import cycles between packages, SQL libraries only in storage/ and migrations/, the model stack
only in worker/, and the submit/status commands never loading torch.

Imports are read with ``ast`` (module level, inside functions, under ``TYPE_CHECKING``, and
``importlib.import_module("...")`` with a literal name), so a lazy import inside a function cannot
slip past. The checker is tested on a planted tree too, so a checker that finds nothing cannot
pass for a clean codebase.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

STAGES = ("producer", "worker", "status", "fleet", "export")
# The front door above the stages (api) and the HTTP client beside everything (loopfree_client).
FRONTS = ("api", "loopfree_client")
PACKAGES = ("core", "storage", "migrations", "taskqueue", "notify", *STAGES, *FRONTS, "loopfree")

# Which project packages each package may import (besides itself). Keep in step with the table in
# docs/architecture.md.
ALLOWED: dict[str, frozenset[str]] = {
    "core": frozenset(),
    "storage": frozenset({"core"}),
    "migrations": frozenset({"core", "storage"}),
    "taskqueue": frozenset({"core"}),
    "notify": frozenset({"core", "storage"}),
    **{stage: frozenset({"core", "storage", "taskqueue", "notify"}) for stage in STAGES},
    # An export reads rows and objects; it never publishes, so it needs no broker.
    "export": frozenset({"core", "storage"}),
    # The HTTP API calls the intake and the status queries the CLI calls: it sits above those
    # two stages (which never import it) and below the CLI.
    "api": frozenset({"core", "storage", "taskqueue", "producer", "status"}),
    # The Python client talks HTTP only; of the server it may use one module (below).
    "loopfree_client": frozenset(),
    "loopfree": frozenset(PACKAGES) - {"loopfree"},
}

# Single modules a package may import beyond its row: every worker runs the reconciler
# (worker/reconciling.py) and the dispatcher (worker/dispatching.py), which need storage and
# taskqueue both, so they cannot sit in a base layer. One way only: fleet never imports worker
# (the cycle check below would say so).
ALLOWED_MODULES: dict[str, frozenset[str]] = {
    "worker": frozenset({"fleet.reconcile", "fleet.dispatch"}),
    # The folder sync of `results --download`, so `Submission.download` writes what the CLI
    # writes; it imports nothing of the project at run time (checked below).
    "loopfree_client": frozenset({"status.download"}),
}

SQL_PACKAGES = ("storage", "migrations")
MODEL_PACKAGES = ("worker",)
# Third-party libraries and the only packages that may import them.
CONFINED: dict[str, tuple[str, ...]] = {
    "sqlalchemy": SQL_PACKAGES,
    "alembic": SQL_PACKAGES,
    "psycopg": SQL_PACKAGES,
    "torch": MODEL_PACKAGES,
    "diffusers": MODEL_PACKAGES,
    "transformers": MODEL_PACKAGES,
    "accelerate": MODEL_PACKAGES,
    "safetensors": MODEL_PACKAGES,
    # The [export] extra: only `loopfree export` may need it, so the slim install works without.
    "pyarrow": ("export",),
    # The API's framework and its streaming JSON reader: the web view stays on plain Starlette.
    "fastapi": ("api",),
    "ijson": ("api",),
}
MODEL_STACK = tuple(name for name, where in CONFINED.items() if where == MODEL_PACKAGES)


# -- the checker --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Import:
    """One import statement (or ``import_module`` call) found in a source file."""

    path: str  # relative to the scanned root, with forward slashes
    line: int
    package: str  # the project package the file belongs to
    module: str  # the absolute dotted name imported

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def top(self) -> str:
        return self.module.split(".")[0]


def module_of(relative: Path) -> tuple[str, bool]:
    """The dotted module name of a file under the root, and whether it is a package's __init__."""
    parts = list(relative.with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def resolve_from(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module a ``from ... import`` names; relative levels are resolved against the
    importing module, the way Python does it."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _dynamic_import(node: ast.Call) -> str | None:
    """``importlib.import_module("x")`` / ``import_module("x")`` / ``__import__("x")``."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name not in ("import_module", "__import__") or not node.args:
        return None
    first = node.args[0]
    return first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else None


def imports_in(root: Path, packages: Iterable[str] = PACKAGES) -> list[Import]:
    """Every import in every ``.py`` file of ``packages`` under ``root``."""
    found = []
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            relative = path.relative_to(root)
            module, is_package = module_of(relative)
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            # ast.walk goes breadth first; sorted by line, messages read top to bottom.
            for node in sorted(ast.walk(tree), key=lambda node: getattr(node, "lineno", 0)):
                names: list[str] = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom):
                    names = [resolve_from(node, module, is_package)]
                elif isinstance(node, ast.Call) and (dynamic := _dynamic_import(node)):
                    names = [dynamic]
                found += [Import(relative.as_posix(), node.lineno, package, name) for name in names]
    return found


def layer_violations(
    imports: Iterable[Import], allowed: Mapping[str, frozenset[str]] = ALLOWED
) -> list[str]:
    """Imports of a project package the importing package may not depend on."""
    return [
        f"{imp.where}: {imp.package} imports {imp.module}; rule: {imp.package} may import only "
        f"{', '.join(sorted(allowed[imp.package])) or 'nothing of the project'}"
        for imp in imports
        if imp.top in allowed
        and imp.top != imp.package
        and imp.top not in allowed[imp.package]
        and imp.module not in ALLOWED_MODULES.get(imp.package, frozenset())
    ]


def library_violations(
    imports: Iterable[Import], confined: Mapping[str, tuple[str, ...]] = CONFINED
) -> list[str]:
    """Imports of a confined third-party library outside the packages it is confined to."""
    return [
        f"{imp.where}: {imp.package} imports {imp.module}; rule: {imp.top} only in "
        f"{', '.join(f'{p}/' for p in confined[imp.top])}"
        for imp in imports
        if imp.top in confined and imp.package not in confined[imp.top]
    ]


def package_graph(imports: Iterable[Import], packages: Iterable[str]) -> dict[str, set[str]]:
    """Package -> the other project packages it imports."""
    packages = set(packages)
    graph: dict[str, set[str]] = {package: set() for package in packages}
    for imp in imports:
        if imp.top in packages and imp.top != imp.package:
            graph[imp.package].add(imp.top)
    return graph


def find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """A cycle in the graph as a path that ends where it starts (``[a, b, a]``), or None.

    Depth-first search: reaching a node that is still on the current path closes a cycle."""
    on_path: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> list[str] | None:
        on_path.append(node)
        for successor in sorted(graph.get(node, ())):
            if successor in on_path:
                return [*on_path[on_path.index(successor) :], successor]
            if successor not in done and (cycle := visit(successor)):
                return cycle
        on_path.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done and (cycle := visit(start)):
            return cycle
    return None


def cycle_violations(imports: list[Import], packages: Iterable[str] = PACKAGES) -> list[str]:
    """The first import cycle between packages, with one import that makes each of its edges."""
    cycle = find_cycle(package_graph(imports, packages))
    if cycle is None:
        return []
    evidence = []
    for source, target in zip(cycle, cycle[1:], strict=False):
        first = next(i for i in imports if i.package == source and i.top == target)
        evidence.append(f"{first.where} imports {first.module}")
    return [f"import cycle {' -> '.join(cycle)}: {'; '.join(evidence)}; rule: no cycles"]


# -- the project obeys the rules ----------------------------------------------------------------


@pytest.fixture(scope="module")
def project_imports() -> list[Import]:
    return imports_in(REPO)


def test_the_rule_table_covers_every_installed_package() -> None:
    # A package missing from the table would go unchecked. (No tomllib: Python 3.10 is supported.)
    find = (REPO / "pyproject.toml").read_text().split("[tool.setuptools.packages.find]")[1]
    include = re.search(r"^include = \[(.*)\]$", find, re.MULTILINE)
    assert include is not None, "pyproject.toml lists the installed packages in one line"
    installed = {name.strip(' "*') for name in include.group(1).split(",")}
    assert installed == set(PACKAGES) == set(ALLOWED)
    assert all((REPO / package / "__init__.py").is_file() for package in PACKAGES)


def test_the_checker_reads_lazy_imports_of_the_real_tree(project_imports: list[Import]) -> None:
    # The CLI imports its commands inside a function; a module-level-only scan would miss them.
    assert {imp.package for imp in project_imports} == set(PACKAGES)
    graph = package_graph(project_imports, PACKAGES)
    assert {"producer", "worker", "status", "fleet"} <= graph["loopfree"]
    assert {"core"} <= graph["storage"]


def test_each_package_imports_only_the_packages_below_it(project_imports: list[Import]) -> None:
    violations = layer_violations(project_imports)
    assert not violations, "\n".join(violations)


def test_there_are_no_import_cycles_between_packages(project_imports: list[Import]) -> None:
    violations = cycle_violations(project_imports)
    assert not violations, "\n".join(violations)


def test_sql_is_only_in_storage_and_the_model_stack_only_in_the_worker(
    project_imports: list[Import],
) -> None:
    violations = library_violations(project_imports)
    assert not violations, "\n".join(violations)


def test_submit_and_status_commands_run_without_importing_the_model_stack(
    tmp_path: Path,
) -> None:
    # They run in the slim CLI image, which has no torch. A real submit on the embedded defaults
    # (SQLite, filesystem broker) and every status command on it, then a look at sys.modules.
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a lighthouse at dusk\na fox in the snow\n")
    program = f"""
import sys
from typer.testing import CliRunner
from loopfree.cli import _register, app

_register()
runner = CliRunner()

def run(*args):
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, (args, result.output, result.exception)
    return result.output

run("submit", "--help")
run("db", "upgrade")
submission = run("submit", {str(prompts)!r}).strip().splitlines()[-1]
run("status", submission)
run("jobs")
run("jobs", "--submission", submission)
run("stats")
run("results", submission)
run("cancel", submission)
loaded = sorted({{name.split(".")[0] for name in sys.modules}} & set({MODEL_STACK!r}))
assert not loaded, f"the submit/status path imported {{loaded}}"
"""
    env = {key: value for key, value in os.environ.items() if not key.startswith("LOOPFREE_")}
    env.update(LOOPFREE_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-c", program], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_the_python_client_loads_nothing_of_the_server_stack() -> None:
    # `pip install loopfree-queue` users import it in notebooks: no SQL, broker, S3 or model
    # libraries, no server package beyond the folder sync (whose own imports are checked here).
    program = """
import sys
import loopfree_client
from loopfree_client import AsyncClient, Client
import status.download
heavy = {"sqlalchemy", "psycopg", "alembic", "celery", "kombu", "redis", "boto3", "botocore",
         "awscrt", "fastapi", "starlette", "pydantic", "torch", "diffusers", "transformers",
         "core", "storage", "producer", "api", "taskqueue", "worker"}
loaded = sorted({name.split(".")[0] for name in sys.modules} & heavy)
assert not loaded, f"the client imported {loaded}"
"""
    result = subprocess.run(
        [sys.executable, "-c", program], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


# -- the checker finds what is planted ------------------------------------------------------------

PLANTED = {
    "core/__init__.py": "",
    "core/settings.py": "def load():\n    from storage import db\n",
    "storage/__init__.py": "",
    "storage/db.py": "import sqlalchemy\n\nfrom migrations.runner import upgrade\n",
    "migrations/__init__.py": "",
    "migrations/runner.py": "from alembic import command\nfrom storage.db import engine\n",
    "status/__init__.py": "",
    "status/queries.py": "from core import settings\n\nfrom sqlalchemy.orm import Session\n",
    "producer/__init__.py": "",
    "producer/submit.py": "import importlib\n\nimportlib.import_module('torch.nn')\n",
    "fleet/__init__.py": "from . import exporter\n",
    "fleet/exporter.py": "from .scaling import plan\nfrom storage import fleet_reads\n",
    "worker/__init__.py": "",
    "worker/sampling/step.py": "import torch\nfrom ..models import load\nfrom status import x\n",
}


@pytest.fixture()
def planted(tmp_path: Path) -> list[Import]:
    for relative, source in PLANTED.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return imports_in(tmp_path, ["core", "storage", "migrations", "status", "producer", "fleet",
                                 "worker"])  # fmt: skip


def test_relative_imports_resolve_like_python_does(planted: list[Import]) -> None:
    modules = {(imp.path, imp.module) for imp in planted}
    assert ("fleet/__init__.py", "fleet") in modules
    assert ("fleet/exporter.py", "fleet.scaling") in modules
    assert ("worker/sampling/step.py", "worker.models") in modules


def test_the_checker_names_file_line_and_rule_of_each_planted_layer_violation(
    planted: list[Import],
) -> None:
    assert layer_violations(planted) == [
        "core/settings.py:2: core imports storage; rule: core may import only nothing of the "
        "project",
        "storage/db.py:3: storage imports migrations.runner; rule: storage may import only core",
        "worker/sampling/step.py:3: worker imports status; rule: worker may import only core, "
        "notify, storage, taskqueue",
    ]


def test_the_checker_finds_planted_libraries_outside_their_packages(
    planted: list[Import],
) -> None:
    assert library_violations(planted) == [
        "status/queries.py:3: status imports sqlalchemy.orm; rule: sqlalchemy only in storage/, "
        "migrations/",
        "producer/submit.py:3: producer imports torch.nn; rule: torch only in worker/",
    ]


def test_the_checker_names_a_planted_cycle_and_the_imports_that_make_it(
    planted: list[Import],
) -> None:
    assert cycle_violations(planted) == [
        "import cycle storage -> migrations -> storage: storage/db.py:3 imports "
        "migrations.runner; migrations/runner.py:2 imports storage.db; rule: no cycles"
    ]


def test_the_cycle_search_follows_long_cycles_and_accepts_a_diamond() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"d"}, "d": {"b"}}) == ["b", "c", "d", "b"]
    assert find_cycle({"top": {"left", "right"}, "left": {"base"}, "right": {"base"}}) is None
