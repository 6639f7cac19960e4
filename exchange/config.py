"""The hub's configuration: one typed object, loaded once, passed down.

Precedence, lowest to highest: built-in defaults < TOML file (``--config``, section ``[hub]`` or
the top level) < ``EXCHANGE_*`` environment variables (``EXCHANGE_DATABASE_URL``…) < command-line
flags. No other module reads the environment.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "EXCHANGE_"


class ConfigError(ValueError):
    """A configuration value is unknown or of the wrong type; the message names it."""


@dataclass(frozen=True, slots=True)
class SupervisionConfig:
    """Thresholds of the supervision rules and the burden report (docs/supervision.md).

    Office hours are local hours ``[office_hours_start, office_hours_end)`` at
    ``utc_offset_minutes`` from UTC (China Standard Time by default); with ``weekends_off``
    Saturday and Sunday are outside office hours all day. ``tick_seconds`` is how often the
    deadline rules look at the clock. ``form_tool_min_uses`` is the number of prefills and
    submissions in the idle window below which a form tool is flagged; ``form_overlap`` the
    share of shared fields (over the smaller form) from which two forms are consolidation
    candidates; ``idle_days`` the report's default idle window.
    """

    provider_time_limit_ms: int = 2000
    refusals_per_window: int = 5
    refusal_window_seconds: int = 600
    bulk_subjects_per_window: int = 50
    bulk_window_seconds: int = 3600
    office_hours_start: int = 8
    office_hours_end: int = 18
    objection_deadline_days: int = 15
    utc_offset_minutes: int = 480
    weekends_off: bool = True
    tick_seconds: float = 60.0
    idle_days: int = 90
    form_tool_min_uses: int = 5
    form_overlap: float = 0.6


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """What one caller may hold of the hub at once, and how long a connection may idle
    (docs/operations.md says what to set for a given load).

    Calls running at once and open streams are limited per department, per client certificate
    (a department may run several systems, each with its own) and for the whole hub. A call
    whose share is taken waits its turn in its department's queue (departments take turns), up
    to ``calls_queued_per_department`` waiting (``calls_queued`` in the hub); beyond that, or
    when its deadline is near, it is refused with RESOURCE_EXHAUSTED (TOO_MANY_CALLS,
    HUB_BUSY) and a RetryInfo of ``retry_after_ms``, and recorded like any refusal. A stream
    over its limit is refused at once (TOO_MANY_STREAMS). A department with calls waiting runs
    at most ``calls_backlogged`` at once while departments without calls waiting are being
    served (exchange/api/limits.py says why).
    ``follow_buffer`` is how many entries a following StreamEntries may have waiting for its
    caller before it is dropped (FOLLOWER_TOO_SLOW; it resumes from its cursor).

    Connections: a TLS handshake must complete within ``handshake_timeout_ms``; a connection
    without calls for ``idle_timeout_ms`` is closed (the client reconnects when it next calls);
    at most ``max_connections`` are open at once (lowered at start to what the process's file
    descriptor limit leaves after the hub's own needs); the hub pings a connection quiet for
    ``keepalive_time_ms`` and closes it if no answer comes in ``keepalive_timeout_ms``; a client
    pinging more often than every ``min_ping_interval_ms`` (or without calls) is disconnected
    after two strikes. ``max_connection_age_ms`` (0: never) retires connections after that
    age, with ``connection_age_grace_ms`` for their calls to finish.
    """

    calls: int = 256
    calls_per_department: int = 8
    calls_per_certificate: int = 4
    calls_queued: int = 16_384
    calls_queued_per_department: int = 4096
    calls_backlogged: int = 1
    streams: int = 64
    streams_per_department: int = 16
    streams_per_certificate: int = 8
    retry_after_ms: int = 200
    follow_buffer: int = 256
    handshake_timeout_ms: int = 5000
    idle_timeout_ms: int = 60_000
    max_connections: int = 4096
    keepalive_time_ms: int = 60_000
    keepalive_timeout_ms: int = 20_000
    min_ping_interval_ms: int = 30_000
    max_connection_age_ms: int = 0
    connection_age_grace_ms: int = 30_000


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the hub process needs to know at start."""

    hub_id: str = "hub"
    listen: str = "127.0.0.1:7443"
    database_url: str = "sqlite:///var/exchange.db"
    keys_dir: Path = Path("keys")
    insecure: bool = False
    origin: str = "exchange.local/hub"
    replay_window_seconds: int = 300
    shutdown_grace_seconds: float = 10.0
    checkpoint_every: int = 1000
    checkpoint_interval_ms: int = 1000
    provider_timeout_ms: int = 5000
    # Witnesses the hub submits each checkpoint to: "<URL> <witness key>, ..." (docs/ledger.md)
    witnesses: str = ""
    log_level: str = "info"
    log_format: str = "json"
    # Operations (docs/operations.md): each is off while empty.
    metrics_listen: str = ""  # host:port of /metrics, /healthz, /readyz (plain HTTP)
    alert_webhook_url: str = ""  # alerts POSTed as JSON here
    alert_syslog: str = ""  # "local" (/dev/log) or host:port (UDP) for alerts
    otlp_endpoint: str = ""  # OTLP/gRPC collector for traces, e.g. http://127.0.0.1:4317
    supervision: SupervisionConfig = field(default_factory=SupervisionConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)


def _coerce(name: str, kind: Any, value: Any) -> Any:
    if isinstance(kind, str):  # postponed annotations
        kind = {"str": str, "int": int, "float": float, "bool": bool, "Path": Path}.get(kind, kind)
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in {"1", "true", "yes", "on"}:
            return True
        if text in {"0", "false", "no", "off", ""}:
            return False
        raise ConfigError(f"{name}: expected a boolean, got {value!r}")
    if kind is int:
        if isinstance(value, bool):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{name}: expected an integer, got {value!r}") from exc
    if kind is float:
        try:
            return float(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{name}: expected a number, got {value!r}") from exc
    if kind is Path:
        return Path(str(value))
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{name}: unsupported type {kind!r}")  # pragma: no cover


def _apply(
    cls: type[Any],
    base: Any,
    values: Mapping[str, Any],
    where: str,
    sources: dict[str, str] | None = None,
    prefix: str = "",
) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    changes: dict[str, Any] = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in known:
            raise ConfigError(f"{where}: unknown setting {key!r}")
        kind = hints[name]
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}: [{key}] must be a table")
            changes[name] = _apply(
                kind, getattr(base, name), value, f"{where} [{key}]", sources, f"{name}."
            )
        else:
            if isinstance(kind, types.UnionType):  # pragma: no cover - none today
                kind = typing.get_args(kind)[0]
            changes[name] = _coerce(f"{where}: {key}", kind, value)
            if sources is not None:
                sources[prefix + name] = where
    return dataclasses.replace(base, **changes)


def _relative_to(folder: Path, data: dict[str, Any]) -> dict[str, Any]:
    """The file's settings with its relative paths (``keys_dir``, a SQLite database) made
    relative to the file's folder, so that ``--config /etc/exchange/hub.toml`` means the same
    from any working directory."""
    resolved = dict(data)
    for key in ("keys_dir", "keys-dir"):
        if isinstance(resolved.get(key), str) and not Path(resolved[key]).is_absolute():
            resolved[key] = str(folder / resolved[key])
    for key in ("database_url", "database-url"):
        url = resolved.get(key)
        if isinstance(url, str) and url.startswith("sqlite:///"):
            path = url[len("sqlite:///") :]
            if path and path != ":memory:" and not Path(path).is_absolute():
                resolved[key] = f"sqlite:///{folder / path}"
    return resolved


def load(
    file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Config:
    """Build the configuration from defaults, a TOML file, the environment and flags.

    ``environ`` is the process environment (passed in by the CLI); only ``EXCHANGE_*`` names are
    read, and ``EXCHANGE_SUPERVISION__NAME`` sets a supervision threshold. ``flags`` holds values
    given on the command line (None values are ignored). Relative paths in the file are relative
    to the file's folder. Raises ConfigError naming the offending setting and where it came from.
    """
    return load_explained(file, environ, flags)[0]


def load_explained(
    file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> tuple[Config, dict[str, str]]:
    """``load``, and where each setting that is not a default came from (``"supervision.x"``
    names a supervision threshold): the file's path, ``environment`` or ``command line``."""
    sources: dict[str, str] = {}
    config = Config()
    if file is not None:
        try:
            data = tomllib.loads(file.read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"configuration file {file} not found") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: {exc}") from exc
        data = _relative_to(file.parent, data.get("hub", data))
        config = _apply(Config, config, data, str(file), sources)
    if environ:
        from_env: dict[str, Any] = {}
        for key, value in environ.items():
            if not key.startswith(ENV_PREFIX) or key.startswith(ENV_PREFIX + "TEST_"):
                continue
            name = key[len(ENV_PREFIX) :].lower()
            if "__" in name:
                section, sub = name.split("__", 1)
                from_env.setdefault(section, {})[sub] = value
            else:
                from_env[name] = value
        config = _apply(Config, config, from_env, "environment", sources)
    if flags:
        config = _apply(
            Config,
            config,
            {k: v for k, v in flags.items() if v is not None},
            "command line",
            sources,
        )
    return config, sources
