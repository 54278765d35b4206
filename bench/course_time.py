"""Wall time of the course's checks: ``pytest --nbval notebooks/`` and the whole test suite.

Each command runs in a fresh subprocess from the repository root, exactly as CI runs it, with the
run budget of this environment (``$DDPM_TEACH_BUDGET``; pytest's conftest makes it "smoke" when
unset). The table gives wall seconds, the exit status and pytest's own summary line.

    python -m bench.course_time
    python -m bench.course_time --only notebooks
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from ._common import base_parser, machine_info, markdown_table, report, setup

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "notebooks": ["pytest", "--nbval", "notebooks/"],
    "suite": ["pytest"],
}

_TINY_TEST = "def test_nothing():\n    assert 1 + 1 == 2\n"


def summary_line(output: str) -> str:
    """pytest's final '== N passed, ... in Xs ==' line (or the last non-empty line)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("=") and (" in " in line or "no tests ran" in line):
            return line.strip("= ")
    return lines[-1] if lines else "(no output)"


def time_command(
    argv: list[str], cwd: Path, timeout: float, env: dict[str, str] | None = None
) -> tuple[float, int, str]:
    """Run ``python -m pytest ...`` in ``cwd``; (wall seconds, exit status, summary line)."""
    cmd = [sys.executable, "-m", *argv[:1], "-p", "no:cacheprovider", *argv[1:]]
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return time.perf_counter() - start, -1, f"timed out after {timeout:.0f} s"
    return time.perf_counter() - start, proc.returncode, summary_line(proc.stdout + proc.stderr)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = base_parser("course_time", __doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(COMMANDS), default=None)
    parser.add_argument(
        "--timeout", type=float, default=3600, help="seconds per command (default 3600)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = setup(args)
    info = machine_info(device)
    budget = os.environ.get("DDPM_TEACH_BUDGET") or "smoke (conftest default)"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        env = None
        if args.tiny:  # prove the timing path on a one-test file, not the real suite
            Path(tmp, "test_tiny.py").write_text(_TINY_TEST)
            jobs = {"tiny": (["pytest", "-q", "test_tiny.py"], Path(tmp))}
            env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}  # start-up in a second
        else:
            jobs = {name: (cmd, ROOT) for name, cmd in COMMANDS.items()}
        for name, (cmd, cwd) in jobs.items():
            if args.only not in (None, name):
                continue
            seconds, status, summary = time_command(cmd, cwd, args.timeout, env)
            shown = " ".join(cmd) + (" (tiny stand-in)" if args.tiny else "")
            rows.append([name, f"`{shown}`", f"{seconds:.1f}", str(status), summary])
            print("  " + " | ".join(rows[-1]))
    body = "\n".join(
        [
            markdown_table(["what", "command", "wall s", "exit", "pytest summary"], rows),
            "",
            f"Run budget: {budget}; each command in a fresh subprocess from the repository root.",
        ]
    )
    report(args.doc, "course_time", argv, info, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
