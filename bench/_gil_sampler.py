"""Where the benchmark's own process spends its GIL and its CPU, by sampling it with py-spy.

``with Sampled(gil=True) as sampled: ...`` runs ``py-spy record --pid <this process>`` for the
duration of the block. With ``gil=True`` a sample is kept only for the thread that holds the GIL
at that instant (CPython 3.11: the thread whose state is ``_PyRuntime``'s current one; a thread
inside ``Py_BEGIN_ALLOW_THREADS`` does not hold it), so ``samples / rate`` is the GIL-held time.
With ``gil=False`` every thread that is running (not blocked in a system call or waiting for the
GIL) is kept, which splits the process's CPU time between the parts of the path.

``--nonblocking``: py-spy reads the process's memory without pausing it, so sampling adds no
stall to the threads measured (a stack read mid-update is dropped as an error, not counted).
py-spy runs in its own process; its CPU is not the benchmark's.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType

RATE_HZ = 200
"""Samples per second: 2,000 in a 10 s measurement, a few hundred per part."""


def py_spy() -> str:
    """The py-spy command beside this interpreter (the ``bench`` extra) or on the PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        raise SystemExit(
            "py-spy is not installed: pip install -c constraints/lock.txt -e '.[bench]' "
            "(it samples which thread holds the GIL)."
        )
    return found


class Sampled:
    """Samples this process while the block runs; ``stacks`` maps a raw stack to its count."""

    def __init__(self, *, gil: bool, rate_hz: int = RATE_HZ) -> None:
        self.gil = gil
        self.rate_hz = rate_hz
        self.stacks: dict[str, int] = {}
        self.wall_s = 0.0
        self.log = ""
        self._process: subprocess.Popen[str] | None = None
        self._output = Path(tempfile.mkstemp(prefix="bench-pyspy-", suffix=".txt")[1])

    def __enter__(self) -> Sampled:
        command = [
            *(py_spy(), "record", "--nonblocking", "--pid", str(os.getpid())),
            *("--rate", str(self.rate_hz), "--format", "raw", "--output", str(self._output)),
        ]
        if self.gil:
            command.append("--gil")
        self._process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert self._process.stdout is not None
        self.log = self._process.stdout.readline()  # "Sampling process 200 times a second..."
        if "Sampling process" not in self.log:
            self._process.kill()
            raise SystemExit(f"py-spy could not sample this process: {self.log.strip()}")
        self._started = time.perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.wall_s = time.perf_counter() - self._started
        assert self._process is not None
        self._process.send_signal(signal.SIGINT)  # py-spy writes its output and exits
        rest, _ = self._process.communicate(timeout=60)
        self.log += rest
        for line in self._output.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if stack:
                self.stacks[stack] = self.stacks.get(stack, 0) + int(count)
        self._output.unlink(missing_ok=True)

    @property
    def samples(self) -> int:
        return sum(self.stacks.values())

    @property
    def seconds(self) -> float:
        """Sampled time: GIL-held seconds with ``gil=True``, running-thread seconds without."""
        return self.samples / self.rate_hz

    @property
    def behind(self) -> bool:
        """py-spy said it could not keep up with the rate (the figures are then low)."""
        return "behind" in self.log

    def by_part(self, part_of: Callable[[str], str]) -> dict[str, int]:
        """Samples per part, ``part_of`` naming the part of a raw stack."""
        parts: dict[str, int] = {}
        for stack, count in self.stacks.items():
            part = part_of(stack)
            parts[part] = parts.get(part, 0) + count
        return parts


def part_by_frames(rules: Mapping[str, tuple[str, ...]], default: str = "other") -> Callable[
    [str], str
]:  # fmt: skip
    """A ``part_of`` for ``Sampled.by_part``: the first part (in ``rules`` order) one of whose
    frame markers (``"function (file"`` prefixes of py-spy's raw frames) is on the stack."""

    def part_of(stack: str) -> str:
        for part, markers in rules.items():
            if any(marker in stack for marker in markers):
                return part
        return default

    return part_of
