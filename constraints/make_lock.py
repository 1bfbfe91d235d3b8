"""Write constraints/lock.txt: the exact version of every third-party package that
``pip install -e ".[test,bench]"`` installs, read from the environment this script runs in.

    .venv/bin/python constraints/make_lock.py   # Python 3.11+, after a tested dependency change

Only what loopfree-queue[test,bench] needs: pyproject.toml's requirements, then the installed
packages' requirements with their markers evaluated for this interpreter, so tools installed
beside it by hand stay out. (The project's own requirements come from pyproject.toml, not from
its installed metadata, which is as old as the last `pip install -e .`.)
Left out: the project itself; torch, pinned by constraints/cpu.txt for CI (the worker image
installs a CUDA build of the same version); and anything CUDA-specific (nvidia-*, triton), so
the lock holds for a CPU venv and a CUDA image alike.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PROJECT = "loopfree-queue"
ROOT_EXTRAS = ("test", "bench")
LOCK = Path(__file__).resolve().with_name("lock.txt")
PYPROJECT = LOCK.parents[1] / "pyproject.toml"
LEFT_OUT = re.compile(r"^(torch|triton|nvidia-.*)$")
HEADER = """\
# Exact versions of every third-party package `pip install -e ".[test,bench]"` installs
# (Python {python}, Linux), for reproducible installs in CI (Makefile) and the images
# (docker/*.Dockerfile).
# torch is pinned by constraints/cpu.txt; CUDA packages are left out on purpose.
# Regenerate with `.venv/bin/python constraints/make_lock.py` after a tested dependency change.
"""


def project_requirements() -> list[str]:
    """The project's requirements as metadata lines (``name; extra == "x"``), from pyproject."""
    import tomllib  # Python 3.11+: this script is a developer's tool, not part of the install

    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    lines = list(project["dependencies"])
    for extra, requirements in project.get("optional-dependencies", {}).items():
        lines += [f'{line}; extra == "{extra}"' for line in requirements]
    return lines


def requirements_of(name: str, extras: frozenset[str]) -> list[Requirement]:
    """The requirements of distribution ``name`` with ``extras``, markers applied: the project's
    from pyproject.toml, any other's from its installed metadata."""
    found = []
    own = canonicalize_name(name) == PROJECT
    for line in project_requirements() if own else metadata.requires(name) or []:
        requirement = Requirement(line)
        marker = requirement.marker
        if marker is None or any(
            marker.evaluate({**default_environment(), "extra": extra}) for extra in ("", *extras)
        ):
            found.append(requirement)
    return found


def closure() -> dict[str, str]:
    """Canonical name -> installed version of everything ``PROJECT[ROOT_EXTRAS]`` pulls in."""
    versions: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(PROJECT, frozenset(ROOT_EXTRAS))]
    while todo:
        name, extras = todo.pop()
        key = canonicalize_name(name)
        if (key, extras) in seen:
            continue
        seen.add((key, extras))
        try:
            versions[key] = metadata.version(name)
        except metadata.PackageNotFoundError:
            sys.exit(
                f"{name} is required but not installed: run `make .venv/.installed` first"
            )
        for requirement in requirements_of(name, extras):
            todo.append((requirement.name, frozenset(requirement.extras)))
    return versions


def lock_pins() -> dict[str, str]:
    """What the lock should hold: name -> version, without the project, torch and CUDA."""
    return {
        name: version
        for name, version in closure().items()
        if name != PROJECT and not LEFT_OUT.match(name)
    }


def main() -> None:
    pins = lock_pins()
    local = [f"{name}=={version}" for name, version in pins.items() if "+" in version]
    if local:
        sys.exit(f"local versions would tie the lock to one build: {local}")
    python = ".".join(map(str, sys.version_info[:2]))
    lines = [f"{name}=={pins[name]}" for name in sorted(pins)]
    LOCK.write_text(HEADER.format(python=python) + "\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(lines)} pins to {LOCK}")


if __name__ == "__main__":
    main()
