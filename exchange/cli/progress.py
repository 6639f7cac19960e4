"""Progress on a terminal for long work, and silence in pipes and files.

``progress(description, total)`` yields a function to call with the amount of work just done,
drawing a bar on stderr only when stderr is a terminal; otherwise the function does nothing, so
a script's output and logs stay clean.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any


def _nothing(_done: int) -> None:
    pass


@contextlib.contextmanager
def progress(description: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
    """A bar (or, with no ``total``, a running count) on a terminal's stderr while the block
    runs; ``advance(n)`` adds ``n`` units of work."""
    from rich.console import Console

    console = Console(stderr=True)
    if not console.is_terminal:
        yield _nothing
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns: list[Any] = ["[progress.description]{task.description}"]
    if total is None:
        columns += [SpinnerColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    else:
        columns += [BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(description, total=total)

        def advance(done: int) -> None:
            bar.advance(task, done)

        yield advance


class LineCounter:
    """A text stream that passes writes on and reports each line written (one ledger entry
    per line in an export) to ``advance``."""

    def __init__(self, stream: Any, advance: Callable[[int], None]) -> None:
        self.stream = stream
        self.advance = advance

    def write(self, text: str) -> int:
        written = int(self.stream.write(text))
        lines = text.count("\n")
        if lines:
            self.advance(lines)
        return written

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)
