"""Binding a gRPC server's listening address, never shared with another process.

gRPC binds with SO_REUSEPORT by default on Linux, so a second hub (or adapter) started on the
address of a running one binds too, silently, and the kernel splits the callers between them:
two processes, possibly on two databases, answering as one. Servers here are created with
``grpc.so_reuseport`` off (``SERVER_OPTIONS``), and ``bind`` first tries the address with a
plain socket: gRPC binds every address a host name resolves to that it can (``localhost`` is
127.0.0.1 and ::1), and reports success if any one of them worked.

Used by the hub and by provider adapters alike (this module imports nothing of either).
"""

from __future__ import annotations

import errno
import socket

import grpc

# Options every server of the exchange is created with (beside its own).
SERVER_OPTIONS: list[tuple[str, int]] = [("grpc.so_reuseport", 0)]


class AddressInUse(OSError):
    """The listening address is taken (or cannot be bound); the message is one line."""


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    try:
        return host.strip("[]") or "0.0.0.0", int(port)
    except ValueError as exc:
        raise AddressInUse(f"{address}: not a host:port address") from exc


def _probe(host: str, port: int, address: str) -> None:
    """Raise AddressInUse if any address ``host`` resolves to has ``port`` taken."""
    try:
        resolved = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise AddressInUse(f"{address}: cannot resolve {host!r}: {exc.strerror}") from exc
    for family, kind, proto, _, sockaddr in resolved:
        with socket.socket(family, kind, proto) as probe:
            # As gRPC binds: a port in TIME_WAIT after an earlier process is not in use.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(sockaddr)
                probe.listen(1)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise AddressInUse(f"{address}: address already in use") from exc
                if exc.errno == errno.EADDRNOTAVAIL:
                    continue  # e.g. ::1 on a host without IPv6; gRPC skips it too
                raise AddressInUse(f"{address}: cannot listen: {exc.strerror}") from exc


def bind(server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None) -> int:
    """Add ``address`` to ``server`` (created with ``SERVER_OPTIONS``), with TLS
    ``credentials`` or without (None); return the bound port.

    Raises AddressInUse ("<address>: address already in use") if another process listens
    there, or with the reason if the address cannot be bound.
    """
    host, port = _split(address)
    if port != 0:
        _probe(host, port, address)
    try:
        if credentials is None:
            bound = server.add_insecure_port(address)
        else:
            bound = server.add_secure_port(address, credentials)
    except RuntimeError as exc:  # gRPC says only "Failed to bind"
        raise AddressInUse(f"{address}: address already in use or not available") from exc
    if bound == 0:
        raise AddressInUse(f"{address}: address already in use or not available")
    return bound
