"""CLI start-up benchmark: how long `exchange …` takes to start, against `python -c pass`.

Each command runs as a fresh process (the installed interpreter, ``-m exchange.cli``), as an
operator's shell or a monitor's script would run it. The baseline is ``python -c pass`` with the
same interpreter, measured interleaved with the commands in the same run, so a busy machine
slows both. `registry list` runs in an empty folder: it stops at its one
``error:`` line (no keystore), after loading everything a registry call loads (gRPC, the SDK).

Prints the median wall time of each and its ratio to the baseline, and the absolute excess.
Run: python bench/startup.py [--repeat 15]
Target: `exchange --help` and quick commands well under half a second (excess < 0.25 s).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time

COMMANDS: dict[str, list[str]] = {
    "python -c pass": ["-c", "pass"],
    "exchange --help": ["-m", "exchange.cli", "--help"],
    "exchange registry --help": ["-m", "exchange.cli", "registry", "--help"],
    "exchange config check": ["-m", "exchange.cli", "config", "check"],
    "exchange check --help": ["-m", "exchange.cli", "check", "--help"],
    "exchange registry list (error)": [
        *("-m", "exchange.cli", "registry", "list", "--listen", "127.0.0.1:1"),
    ],
    "exchange audit --help": ["-m", "exchange.cli", "audit", "--help"],
}


def once(argv: list[str], cwd: str) -> float:
    """Wall time of one run of the interpreter with ``argv``."""
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, *argv],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    with tempfile.TemporaryDirectory() as cwd:
        for argv in COMMANDS.values():  # warm the page cache and .pyc files once
            once(argv, cwd)
        for _ in range(args.repeat):
            for name, argv in COMMANDS.items():  # interleaved: drift favours none
                times[name].append(once(argv, cwd))
    base = statistics.median(times["python -c pass"])
    print(f"{'command':32} {'median s':>9} {'x baseline':>11} {'excess s':>9}")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"{name:32} {median:9.3f} {median / base:11.1f} {median - base:9.3f}")


if __name__ == "__main__":
    main()
