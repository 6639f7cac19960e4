"""The hub's connection limits: gRPC core options, and the file descriptors they may use.

Every open connection holds a file descriptor, whether its TLS handshake completed or not (no
certificate is needed to open one). Left alone, idle and half-open connections held for about
two minutes exhausted a 1,024-descriptor limit; the hub's database then could not open its file
and calls of departments already connected failed. So:

- a handshake must complete within ``handshake_timeout_ms`` and a connection without calls is
  closed after ``idle_timeout_ms``;
- at most ``max_connections`` connections are open at once (gRPC's
  ``max_allowed_incoming_connections``: one over it is closed as soon as it is accepted), and
  never more than the descriptor limit
  leaves after the hub's own needs (``reserved_descriptors``): database connections, worker
  threads' files, provider channels, logs;
- keepalive is enforced: the hub pings quiet connections and drops those that do not answer,
  and a client that pings too often, or without calls, is disconnected (ping strikes).

gRPC has no separate cap on connections still in their handshake: the connection cap bounds
them together with the others, and the handshake timeout frees their descriptors quickly.

Calls that gRPC core has received but the server has not yet taken up wait in core's pending
queue. Beyond ``grpc.server.max_pending_requests`` (1,000 by default) core cancels some of them
at random, before the hub sees them: no log line, no entry, no reason (~10 % of a burst of
2,000 calls). The queue is made large enough that the hub takes up every call and refuses what
is over a limit itself (exchange.api.limits).
"""

from __future__ import annotations

import resource

import structlog

from exchange.config import LimitsConfig

log = structlog.get_logger("exchange.server")

# Calls core may hold before the hub takes them up. Each costs a few kilobytes until the event
# loop reaches it, when the limits refuse it cheaply; beyond it core refuses with a bare
# RESOURCE_EXHAUSTED.
PENDING_CALLS = 20_000
# Descriptors the hub keeps for itself beyond its database connections: the listening socket,
# event loop and gRPC core pipes and eventfds, provider channels, log files, migrations.
BASE_RESERVE = 256
# A SQLite connection holds three descriptors (the database, its write-ahead log and its
# shared-memory index); a PostgreSQL connection one.
SQLITE_DESCRIPTORS_PER_CONNECTION = 3


def raise_descriptor_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; return the soft limit
    now in force (unchanged if it cannot be raised)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            log.warning("descriptor_limit_not_raised", soft=soft, hard=hard)
    return soft


def reserved_descriptors(database_connections: int, sqlite: bool) -> int:
    """Descriptors the hub needs apart from its callers' connections."""
    per_connection = SQLITE_DESCRIPTORS_PER_CONNECTION if sqlite else 1
    return BASE_RESERVE + database_connections * per_connection


def connection_cap(config: LimitsConfig, descriptor_limit: int, reserved: int) -> int:
    """How many connections the hub accepts at once: ``config.max_connections``, lowered to
    what ``descriptor_limit`` leaves after ``reserved`` (at least 16, so a badly set limit still
    serves a few callers)."""
    return max(16, min(config.max_connections, descriptor_limit - reserved))


def server_options(config: LimitsConfig, max_connections: int) -> list[tuple[str, int]]:
    """The gRPC core options that put ``config`` in force for a server."""
    options = [
        ("grpc.server_handshake_timeout_ms", config.handshake_timeout_ms),
        ("grpc.max_connection_idle_ms", config.idle_timeout_ms),
        ("grpc.max_allowed_incoming_connections", max_connections),
        ("grpc.keepalive_time_ms", config.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", config.keepalive_timeout_ms),
        # Enforcement of the clients' pings: no pings without calls, none more often than
        # min_ping_interval_ms; the second strike closes the connection (GOAWAY).
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.http2.min_ping_interval_without_data_ms", config.min_ping_interval_ms),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.server.max_pending_requests", PENDING_CALLS),
        ("grpc.server.max_pending_requests_hard_limit", PENDING_CALLS),
    ]
    if config.max_connection_age_ms > 0:
        options += [
            ("grpc.max_connection_age_ms", config.max_connection_age_ms),
            ("grpc.max_connection_age_grace_ms", config.connection_age_grace_ms),
        ]
    return options
