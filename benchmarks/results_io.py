"""Shared helpers of the benchmark scripts: machine facts and writing one section of results.md."""

from __future__ import annotations

import datetime
import os
import platform
import re
import shlex
import sys
from pathlib import Path

import torch


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return (f"{os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}{gpu}")


def command() -> str:
    return ".venv/bin/python " + " ".join(shlex.quote(a) for a in sys.argv)


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


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
    path.write_text(text.rstrip("\n") + "\n")
