"""The README's and docs/cli.md's examples marked ``<!-- runs against: exchange demo
--keep-running -->`` run as written against the demo (with the address and keystore it
prints, to each command that takes them: ``person assert`` calls no hub and takes only the
keystore), each exiting 0."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parents[2]
MARKER = "<!-- runs against: exchange demo --keep-running -->"


def marked_commands(document: Path) -> list[list[str]]:
    """The ``exchange …`` lines of every sh block right after the marker."""
    commands = []
    for block in document.read_text(encoding="utf-8").split(MARKER)[1:]:
        body = block.split("```sh\n", 1)[1].split("```", 1)[0]
        for line in body.splitlines():
            line = line.split("  #", 1)[0].strip()
            if line.startswith("exchange "):
                commands.append(shlex.split(line)[1:])
    return commands


def where_options(command: list[str], where: dict[str, str]) -> list[str]:
    """The options of ``where`` (``--listen``, ``--keys-dir``) that ``command`` takes."""
    from exchange.cli.main import main

    found: click.Command = main
    with click.Context(main) as ctx:
        for word in command:
            if not isinstance(found, click.Group):
                break
            sub = found.get_command(ctx, word)
            if sub is None:
                break
            found = sub
    taken = {name for param in found.params for name in param.opts}
    return [part for name, value in where.items() if name in taken for part in (name, value)]


def test_documents_mark_examples() -> None:
    assert len(marked_commands(ROOT / "README.md")) >= 5
    assert len(marked_commands(ROOT / "docs" / "cli.md")) >= 5


@pytest.mark.slow
def test_marked_examples_run_against_the_demo(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXCHANGE_")}
    demo = subprocess.Popen(
        [sys.executable, "-m", "exchange.cli", "demo", "--keep-running", "--dir", "demo"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert demo.stdout is not None
        printed = ""
        deadline = time.monotonic() + 240
        while "stops everything." not in printed:
            line = demo.stdout.readline()
            assert line or demo.poll() is None, printed[-3000:]
            printed += line
            assert time.monotonic() < deadline, printed[-3000:]
        found = re.search(r"Hub on (127\.0\.0\.1:\d+), keys in (\S+)\.", printed)
        assert found is not None, printed[-3000:]
        where = {"--listen": found.group(1), "--keys-dir": found.group(2)}
        for document in (ROOT / "README.md", ROOT / "docs" / "cli.md"):
            for command in marked_commands(document):
                result = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "exchange.cli",
                        *command,
                        *where_options(command, where),
                    ],
                    cwd=tmp_path,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
                assert result.returncode == 0, (document.name, command, result.stderr)
    finally:
        demo.send_signal(signal.SIGTERM)
        try:
            assert demo.wait(timeout=60) == 0  # SIGTERM stops everything it started
        except subprocess.TimeoutExpired:
            demo.kill()
            demo.wait()
