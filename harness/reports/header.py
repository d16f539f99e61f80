"""The lines every BENCHMARKS.md section starts with: where a figure came from."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from harness.core.provenance import describe_machine


def section_header(title: str, result: dict, path: Path, *, packages: Sequence[str] = ("torch",),
                   identity: str = "", remark: str = "", machine_note: str = "",
                   lines: Sequence[str] = ()) -> list[str]:
    """Title, machine (and `machine_note`), command, date / commit (dirty or not) /
    `identity` / package versions (and `remark`), the section's own `lines`, the
    result file."""
    git = result["git"]
    stamp = f"- date {result['date']}, commit {git['commit'][:12]}{' (dirty)' if git.get('dirty') else ''}"
    stamp += (f", {identity}" if identity else "")
    stamp += "".join(f", {name} {result['packages'].get(name)}" for name in packages)
    return [
        f"## {title}",
        "",
        f"- machine: {describe_machine(result['hardware'])}{machine_note}",
        *([f"- command: `{result['command']}`"] if result.get("command") else []),
        stamp + (f"; {remark}" if remark else ""),
        *lines,
        f"- result file: `{path.as_posix()}`",
        "",
    ]
