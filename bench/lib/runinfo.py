"""Where and when a benchmark's numbers were taken: the one run record every entry script writes.

Capture it before the run (the tree may move while it runs); ``finish`` adds the load average at
the end, which says how busy the shared machine was while it ran.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class RunInfo:
    """Machine name, CPU, load average, date and commit of one benchmark run."""

    machine: str  # host name
    cpu: str  # model name
    cpus: int
    load_average: float  # 1-minute load average when captured
    date: str  # UTC, ISO 8601, seconds
    commit: str  # HEAD, with ``-dirty`` when tracked files differ from it
    platform: str
    python: str
    package: str = ""  # the cachegen package measured (its folder)
    load_average_end: float | None = None

    @classmethod
    def capture(cls) -> RunInfo:
        return cls(
            machine=platform.node(),
            cpu=cpu_model(),
            cpus=os.cpu_count() or 1,
            load_average=os.getloadavg()[0],
            date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            commit=git_commit(),
            platform=platform.platform(),
            python=platform.python_version(),
            package=measured_package(),
        )

    def finish(self) -> RunInfo:
        """The same record with the load average at the end of the run."""
        return dataclasses.replace(self, load_average_end=os.getloadavg()[0])

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def line(self) -> str:
        """One markdown sentence for a results file's header."""
        return describe(self.as_dict())


def describe(run: dict[str, Any]) -> str:
    """``RunInfo.line`` of a record read back from a results JSON file."""
    load = f"{run['load_average']:.1f}"
    if run.get("load_average_end") is not None:
        load += f" at the start, {run['load_average_end']:.1f} at the end"
    return (
        f"Machine: {run['machine']}, {run['cpu']} ({run['cpus']} CPUs), load average {load}; "
        f"{run['date']}, commit `{short_commit(run['commit'])}`."
    )


def short_commit(commit: str) -> str:
    """A recorded commit, abbreviated, keeping its ``-dirty`` mark."""
    return commit[:12] + ("-dirty" if commit.endswith("-dirty") else "")


def measured_package() -> str:
    """The folder of the cachegen package this process imports; a warning on stderr when it is
    not this checkout's (an installed copy measures another build than `commit` names)."""
    import cachegen

    folder = Path(cachegen.__file__).resolve().parent
    if REPO / "python" not in folder.parents:
        print(
            f"warning: cachegen is imported from {folder}, not from this checkout's python/: "
            "the figures are of that build (run with PYTHONPATH=python)",
            file=sys.stderr,
        )
    return str(folder)


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (falls back to ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit() -> str:
    """HEAD's commit, marked ``-dirty`` when tracked files differ from it."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return git("rev-parse", "HEAD") + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
