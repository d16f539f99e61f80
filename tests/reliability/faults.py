"""The fault table: every reliability test names the fault it injects and the
outcome it asserts, and README.md's table is generated from those marks, so the
table cannot claim more than the tests check.

    @fault("Bad images", "zero-byte file", "error before model work, naming the file")
    def test_...

    python -m tests.reliability.faults            # print the table
    python -m tests.reliability.faults --write    # rewrite it in README.md

tests/reliability/test_readme_table.py fails when README.md's table is stale.
A test module here without marks gets one row from its docstring's first
paragraph, read as "<fault>: <outcome>".
"""

from __future__ import annotations

import argparse
import ast
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
README = HERE.parent.parent / "README.md"
START = "<!-- fault-table:start (generated: python -m tests.reliability.faults --write) -->"
END = "<!-- fault-table:end -->"
AREAS = ("Bad annotations", "Bad images", "Bad embeddings", "Interruption", "Determinism",
         "Caches", "Checkpoints")


@dataclass(frozen=True)
class Fault:
    area: str
    fault: str
    outcome: str
    test: str = ""


def fault(area: str, what: str, outcome: str):
    """Mark a test with the fault it injects and the outcome it asserts."""
    if area not in AREAS:
        raise ValueError(f"area must be one of {AREAS}")

    def mark(func):
        func.__dict__.setdefault("faults", []).insert(0, Fault(area, what, outcome))
        return func

    return mark


def collect() -> list[Fault]:
    """Marks read from the test files' source (nothing is imported or run)."""
    rows: list[Fault] = []
    for path in sorted(HERE.glob("test_*.py")):
        if path.name == "test_readme_table.py":
            continue
        tree = ast.parse(path.read_text())
        found = []
        for node in tree.body:
            if isinstance(node, ast.FunctionDef):
                for deco in node.decorator_list:
                    if isinstance(deco, ast.Call) and getattr(deco.func, "id", None) == "fault":
                        area, what, outcome = (ast.literal_eval(a) for a in deco.args)
                        found.append(Fault(area, what, outcome, f"{path.name}::{node.name}"))
        if not found:  # "<fault>: <outcome>", the docstring's first paragraph
            doc = " ".join((ast.get_docstring(tree) or path.stem).split("\n\n")[0].split())
            what, _, outcome = doc.partition(": ")
            found.append(Fault(_area_of(doc), what, outcome or "see the test", path.name))
        rows += found
    if not (HERE / "test_kill_training.py").exists():
        rows.append(Fault("Interruption", "kill -9 during fine-tuning, then a rerun with `--resume`",
                          "PENDING: covered by tests/reliability/test_kill_training.py, built with "
                          "`--resume`; not in this tree yet", "test_kill_training.py"))
    return sorted(rows, key=lambda f: AREAS.index(f.area) if f.area in AREAS else len(AREAS))


def _area_of(text: str) -> str:
    lowered = text.lower()
    if "train" in lowered or "kill" in lowered or "resume" in lowered:
        return "Interruption"
    return next((a for a in AREAS if a.split()[-1].lower() in lowered), "Interruption")


def table(rows: list[Fault]) -> str:
    lines = ["| area | fault injected | outcome (asserted) | test |", "|---|---|---|---|"]
    lines += [f"| {f.area} | {f.fault} | {f.outcome} | `{f.test}` |" for f in rows]
    return "\n".join(lines) + "\n"


def readme_block(rows: list[Fault]) -> str:
    return f"{START}\n{table(rows)}{END}"


def current_readme_block(text: str) -> str | None:
    if START not in text or END not in text:
        return None
    return text[text.index(START) : text.index(END) + len(END)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="rewrite the table in README.md")
    args = parser.parse_args()
    block = readme_block(collect())
    if not args.write:
        print(table(collect()), end="")
        return
    text = README.read_text()
    old = current_readme_block(text)
    if old is None:
        raise SystemExit(f"README.md has no {START} ... {END} block: add one where the table goes")
    README.write_text(text.replace(old, block))


if __name__ == "__main__":
    main()
