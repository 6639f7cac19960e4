"""Structured logging, configured once at start. Events carry no personal data and no payloads."""

from __future__ import annotations

import logging
import sys

import structlog


def configure(level: str = "info", fmt: str = "json") -> None:
    """Send structlog events to stderr as JSON lines (``fmt="json"``) or for a console.

    ``log.exception(...)`` writes the traceback into the event, so an incident id a caller was
    given leads to the cause. Tracebacks never show local variable values: they can hold
    personal data (a subject id, a field value) and a log is no place for it.
    """
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
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
