"""A snippet run in a fresh interpreter with the C paths off (PRIMELEDGER_PURE_PYTHON=1)."""

from __future__ import annotations

import os
import subprocess
import sys


def run_pure_python(script: str, stdin: bytes | None = None) -> str:
    """The snippet's standard output; it fails the test if the snippet fails."""
    result = subprocess.run(
        [sys.executable, "-c", script],
        input=stdin,
        capture_output=True,
        env={**os.environ, "PRIMELEDGER_PURE_PYTHON": "1"},
    )
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()
