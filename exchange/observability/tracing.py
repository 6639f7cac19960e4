"""OpenTelemetry traces of each call's stages, exported over OTLP; off unless configured.

With ``otlp_endpoint`` set (``http://collector:4317``), the hub process records a span per call
(``exchange.call``, named by its RPC method) with children for its stages: authentication
(``exchange.authenticate``), the request-id claim (``exchange.claim``), the flow
(``exchange.flow``), each holder call (``exchange.holder``) and each ledger append
(``exchange.ledger.append``). The W3C ``traceparent`` of the holder span is sent to the adapter
in the call's metadata, where ``adapter.Fetch`` / ``adapter.Store`` continue the trace (when the
adapter's process traces too); a caller's own ``traceparent`` becomes the call span's parent.

The stages are traced by wrapping the hub's own objects at start (``instrument``), so the call
path carries no tracing code and pays nothing while tracing is off: ``enabled()`` is false and
nothing is wrapped. Span attributes are RPC methods, outcome codes, holders' endpoints and
sizes, never a subject id, a field value or a payload.

The OpenTelemetry SDK and exporter are the ``tracing`` extra (``pip install
'gov-exchange[tracing]'``); they are imported only when tracing is configured.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

T = TypeVar("T")

_tracer: Any = None
_propagator: Any = None
TRACEPARENT = "traceparent"


def enabled() -> bool:
    """Whether this process records spans."""
    return _tracer is not None


def configure(endpoint: str = "", *, exporter: Any = None, service: str = "exchange-hub") -> None:
    """Record spans and export them: to ``exporter`` if given (tests), else over OTLP/gRPC to
    ``endpoint``. Neither: tracing stays off. Raises ConfigError if the SDK is not installed."""
    global _tracer, _propagator
    if not endpoint and exporter is None:
        return
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError as exc:
        from exchange.config import ConfigError

        raise ConfigError(
            "otlp_endpoint needs the OpenTelemetry SDK: pip install 'gov-exchange[tracing]'"
        ) from exc
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=endpoint, insecure=endpoint.startswith("http://"))
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=200))
    _tracer = provider.get_tracer("exchange")
    _propagator = TraceContextTextMapPropagator()
    _tracer._exchange_provider = provider  # kept for shutdown()


def shutdown() -> None:
    """Export what is buffered and stop tracing."""
    global _tracer, _propagator
    if _tracer is not None:
        _tracer._exchange_provider.shutdown()
    _tracer = _propagator = None


@contextlib.contextmanager
def span(
    name: str, parent: Iterable[Any] = (), attributes: Mapping[str, Any] | None = None
) -> Iterator[Any]:
    """A span around the block (nothing while tracing is off). ``parent``: a call's gRPC
    metadata, whose ``traceparent`` becomes the span's parent."""
    if _tracer is None:
        yield None
        return
    context = None
    if parent is not None:
        carrier = {k: v for k, v in parent if k == TRACEPARENT and isinstance(v, str)}
        if carrier:
            context = _propagator.extract(carrier)
    with _tracer.start_as_current_span(name, context=context, attributes=attributes) as current:
        try:
            yield current
        except BaseException as error:
            current.set_attribute("exchange.error", type(error).__name__)
            reason = getattr(error, "reason_name", None)
            if isinstance(reason, str):
                current.set_attribute("exchange.reason", reason)
            raise


def outgoing_metadata() -> tuple[tuple[str, str], ...] | None:
    """The current span's W3C trace context as gRPC metadata (None while tracing is off)."""
    if _tracer is None:
        return None
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return tuple(carrier.items()) or None


def traced(name: str, function: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """``function`` (a coroutine function) inside a span ``name``."""

    @functools.wraps(function)
    async def wrapper(*args: Any, **kwargs: Any) -> T:
        with span(name):
            return await function(*args, **kwargs)

    return wrapper


def instrument(hub: Any, pipeline: Any) -> None:
    """Trace the stages of every call of ``hub`` served through ``pipeline`` (no-op while off).

    Wraps the instances' own methods: the pipeline's authentication, the request log's claim,
    the ledger's append and the holder router's call.
    """
    if _tracer is None:
        return
    pipeline._authenticate = traced("exchange.authenticate", pipeline._authenticate)
    hub.requests.claim = traced("exchange.claim", hub.requests.claim)
    hub.ledger.append = traced("exchange.ledger.append", hub.ledger.append)
