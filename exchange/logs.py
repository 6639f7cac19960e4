"""Structured logging, configured once at start. Events carry no personal data and no payloads."""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import MutableMapping
from typing import Any

import structlog
from sqlalchemy.exc import DBAPIError


def configure(level: str = "info", fmt: str = "json") -> None:
    """Send structlog events to stderr as JSON lines (``fmt="json"``) or for a console.

    ``log.exception(...)`` writes the traceback into the event, so an incident id a caller was
    given leads to the cause. Tracebacks never show local variable values: they can hold
    personal data (a subject id, a field value) and a log is no place for it. For the same
    reason a database error's message is withheld (``withhold_database_messages``).
    """
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        withhold_database_messages,
    ]
    if fmt == "json":
        # format_exc_info renders with the standard library's traceback module, which has no
        # locals at all (dict_tracebacks and the rich formatter show them by default).
        processors += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    else:
        processors.append(
            structlog.dev.ConsoleRenderer(
                colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
            )
        )
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # psycopg_pool writes unstructured lines through the standard library; its warnings are
    # about connections exchange.store.loop_connections closes on purpose (and the pool then
    # replaces), or attempts to connect while the database is down, which the refused calls
    # and that module's own events already report.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)


def ensure_configured() -> None:
    """Configure safe logging if nobody did (a hub embedded in another program, without the
    CLI's ``configure``): structlog's defaults render tracebacks with local variables, which can
    hold a subject id. A program that configured structlog itself keeps its configuration."""
    if not structlog.is_configured():
        configure("info", "console")


def withhold_database_messages(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A structlog processor: if the event's exception, or one it was raised from or while
    handling, is a database error, render the traceback with that error's message replaced by
    its type, SQLSTATE and constraint name.

    A database's message can quote the values it was given: PostgreSQL's DETAIL line names the
    value of a violated key or the whole failing row, and a statement's parameters may hold a
    subject id or a field value. Other exceptions keep their messages.
    """
    exc_info = event.get("exc_info")
    if exc_info is True:
        error = sys.exc_info()[1]
    elif isinstance(exc_info, BaseException):
        error = exc_info
    elif isinstance(exc_info, tuple):
        error = exc_info[1]
    else:
        return event
    chain = _chain(error) if error is not None else []
    # The driver's own exception (a DBAPIError's ``orig``, usually also its cause) carries the
    # same message.
    drivers = {id(e.orig) for e, _ in chain if isinstance(e, DBAPIError)}
    if not drivers:
        return event
    del event["exc_info"]
    event["exception"] = "\n".join(
        _render(e, link, withhold=isinstance(e, DBAPIError) or id(e) in drivers)
        for e, link in reversed(chain)
    )
    return event


_LINKS = {
    "cause": "\nThe above exception was the direct cause of the following exception:\n",
    "context": "\nDuring handling of the above exception, another exception occurred:\n",
}


def _chain(error: BaseException) -> list[tuple[BaseException, str]]:
    """``error`` and the exceptions behind it, newest first, each with how the next newer one
    was linked to it ("" for the newest)."""
    chain: list[tuple[BaseException, str]] = []
    link, seen = "", set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append((current, link))
        if current.__cause__ is not None:
            current, link = current.__cause__, "cause"
        elif not current.__suppress_context__:
            current, link = current.__context__, "context"
        else:
            current = None
    return chain


def _render(error: BaseException, link: str, *, withhold: bool) -> str:
    """One exception's traceback and last line (its message withheld if ``withhold``),
    followed by the text linking it to the next."""
    frames = "".join(traceback.format_tb(error.__traceback__))
    if withhold:
        driver = error.orig if isinstance(error, DBAPIError) else error
        state = getattr(driver, "sqlstate", None) or getattr(driver, "sqlite_errorname", None)
        constraint = getattr(getattr(driver, "diag", None), "constraint_name", None)
        last = (
            f"{type(error).__module__}.{type(error).__qualname__}: "
            f"({type(driver).__module__}.{type(driver).__qualname__}) sqlstate={state} "
            f"constraint={constraint} [message withheld: it can quote the values given]\n"
        )
    else:
        last = "".join(traceback.format_exception_only(type(error), error))
    return f"Traceback (most recent call last):\n{frames}{last}" + _LINKS.get(link, "")
