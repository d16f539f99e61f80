"""A `python -m harness.run` started at the session's start and collected when a test
needs it. The regression check's default run (full fine-tuning, the suite's longest
step by far) runs in a process of its own this way, while the other tests, most of
which keep one core busy, run beside it; its figures are the command's own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


class BackgroundRun:
    def __init__(self, arguments: list[str], out: Path, cache: Path, repo: Path):
        self.out = out
        self.log = out / "run.log"
        out.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "COIR_BENCH_CACHE": str(cache)}
        with open(self.log, "w") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "harness.run", "--out", str(out), *arguments],
                                            cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT)

    def result(self) -> dict:
        """The run's results file, once it has finished; a test failure with the log's
        tail if it failed."""
        code = self.process.wait()
        if code != 0:
            pytest.fail(f"the background run exited {code}:\n{self.log.read_text()[-3000:]}")
        [path] = [p for p in self.out.glob("*.json")]
        return json.loads(path.read_text())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
