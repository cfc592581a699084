"""Shared helpers of the benchmark scripts: machine facts and writing one section of results.md."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import math
import os
import platform
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from statistics import mean, stdev

import torch


def machine(*, details: bool = False) -> str:
    """CPU cores, torch and its thread count, Python, GPU. ``details``: also the OS
    (``platform.platform()``) and the CUDA version."""
    cpu = platform.processor() or platform.machine()
    if torch.cuda.is_available():
        gpu = f", GPU {torch.cuda.get_device_name(0)}"
        if details:
            gpu += f" (CUDA {torch.version.cuda})"
    else:
        gpu = ", no GPU"
    system = f", {platform.platform()}" if details else ""
    return (f"{os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}{system}{gpu}")


def command(argv: Sequence[str] | None = None) -> str:
    """The command line of this run; ``argv`` replaces ``sys.argv[1:]`` (a ``main(argv)`` call)."""
    script = Path(sys.argv[0])
    # python -m benchmarks.<name> (argv[0] is then the module's file)
    head = (["-m", f"benchmarks.{script.stem}"] if script.parent.name == "benchmarks"
            else [sys.argv[0]])
    args = [*head, *(sys.argv[1:] if argv is None else argv)]
    return ".venv/bin/python " + " ".join(shlex.quote(a) for a in args)


def rerunnable(recorded: str) -> str:
    """A stored run's command as it reruns today: runs recorded before the benchmarks became a
    package (``python benchmarks/<name>.py``) rerun as ``python -m benchmarks.<name>``."""
    return re.sub(r"(python[0-9.]*) benchmarks/([a-z_0-9]+)\.py\b", r"\1 -m benchmarks.\2", recorded)


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


REPO_ROOT = Path(__file__).resolve().parents[1]


def code_commit(root: str | Path = REPO_ROOT) -> str | None:
    """The git commit of the code a run ran (``root``'s checkout), ``"+dirty"`` appended when a
    tracked file of ``iegkit/`` or ``benchmarks/`` differs from it (untracked files are not
    counted); None outside a git checkout.
    Stored with each run: two runs of one seed that disagree are then traced to a commit range."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              check=True, timeout=30).stdout.strip()
    try:
        head = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "iegkit", "benchmarks")
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def load_average() -> str:
    """The 1, 5 and 15-minute load averages, e.g. ``"2.18 1.61 2.26"``."""
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def cpu_kernels() -> str:
    """The CPU model and the vector kernels torch dispatches to (e.g. ``"... Xeon ..., AVX512"``):
    two hosts with different kernels round the same seed's run differently."""
    try:
        names = re.findall(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
    except OSError:
        names = []
    model = names[0].strip() if names else (platform.processor() or platform.machine())
    return f"{model}, {torch.backends.cpu.get_cpu_capability()}"


def data_fingerprint(split) -> str:
    """The first 16 hex digits of a SHA-256 over every tensor field of the dataclass ``split``
    (images and labels, in field order): the data a run trained and was scored on. JPEG decoding
    may change with the image library that filled the cache; this tells whether it did."""
    digest = hashlib.sha256()
    for field in dataclasses.fields(split):
        value = getattr(split, field.name)
        if isinstance(value, torch.Tensor):
            digest.update(field.name.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def run_provenance(argv: Sequence[str] | None = None, split=None) -> dict[str, str | None]:
    """What every stored run records about how it was made: command, machine, load, date, the
    commit of the code, the CPU kernels and (given its ``split``) the data: what a bit-exact
    rerun needs the same."""
    record = {"command": command(argv), "machine": machine(), "load_average": load_average(),
              "date": now(), "commit": code_commit(), "cpu": cpu_kernels()}
    if split is not None:
        record["data"] = data_fingerprint(split)
    return record


def provenance(date_note: str = "") -> str:
    """The head of a results section: command, machine and date lines (``date_note`` follows the
    date, e.g. ``"; total 3.2 min."``)."""
    return f"Command: `{command()}`  \nMachine: {machine()}  \nDate: {now()}{date_note}"


def write_section(path: str | Path, heading: str, body: str) -> None:
    """Replace the section ``## heading`` of a markdown file (up to the next ``## ``), or append it."""
    path = Path(path)
    text = path.read_text() if path.exists() else "# Results\n\nEvery figure below comes from a " \
        "script in benchmarks/, with the command, machine and date that made it.\n"
    section = f"## {heading}\n\n{body.strip()}\n\n"
    pattern = re.compile(rf"^## {re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip("\n") + "\n")


class RunStore:
    """One JSON line per finished run, keyed by a string: a long table grows over several
    invocations, and a restarted script skips the runs it already has."""

    def __init__(self, path: str | Path) -> None:
        import json

        self._json = json
        self.path = Path(path)
        self.runs: dict[str, dict] = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    record = json.loads(line)
                    self.runs[record["key"]] = record

    def __contains__(self, key: str) -> bool:
        return key in self.runs

    def add(self, key: str, record: dict) -> None:
        record = {"key": key, **record}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:  # appended as it finishes: a killed run loses nothing
            handle.write(self._json.dumps(record) + "\n")
        self.runs[key] = record


def t_interval(diffs: Sequence[float]) -> str:
    """mean [95% t interval] of paired differences, in points."""
    n = len(diffs)
    if n < 2:
        return f"{100 * diffs[0]:+.1f} (1 seed)"
    t975 = {2: 12.71, 3: 4.30, 4: 3.18, 5: 2.78, 6: 2.57, 7: 2.45, 8: 2.36, 9: 2.31, 10: 2.26}
    half = t975.get(n, 1.96) * stdev(diffs) / math.sqrt(n)
    return f"{100 * mean(diffs):+.1f} [{100 * (mean(diffs) - half):+.1f}, {100 * (mean(diffs) + half):+.1f}]"
