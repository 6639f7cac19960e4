"""Progress is drawn on a terminal and absent in pipes (a real pseudo-terminal and a real pipe,
around the helper adapter publish and audit export use)."""

from __future__ import annotations

import io
import os
import pty
import subprocess
import sys

from exchange.cli.progress import LineCounter

SCRIPT = (
    "import time\n"
    "from exchange.cli.progress import progress\n"
    "with progress('publishing t', 3) as advance:\n"
    "    for _ in range(3):\n"
    "        advance(1); time.sleep(0.3)\n"
    "print('done')\n"
)


def test_progress_shows_on_a_terminal() -> None:
    main, secondary = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-c", SCRIPT], stdout=subprocess.DEVNULL, stderr=secondary
    )
    os.close(secondary)
    seen = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        seen += chunk
    process.wait(timeout=30)
    os.close(main)
    assert b"publishing t" in seen


def test_progress_is_quiet_in_a_pipe() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=30, check=True
    )
    assert result.stderr == "" and result.stdout == "done\n"


def test_line_counter_reports_lines_written() -> None:
    seen: list[int] = []
    out = io.StringIO()
    counter = LineCounter(out, seen.append)
    counter.write('{"a": 1}\n{"b": 2}\n')
    counter.write("partial")
    assert out.getvalue() == '{"a": 1}\n{"b": 2}\npartial' and seen == [2]
