"""One process of several leads a role (supervision) for a database.

On PostgreSQL the leader is the hub process holding a session advisory lock on a connection
kept for that purpose: the others try again from time to time, and take over within that
period once the leader's session ends (its process stopped or died, or its connection was
cut: PostgreSQL then releases the lock). SQLite has one hub process per database file, which
always leads.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from sqlalchemy import Engine

_log = structlog.get_logger("exchange.store")

CONNECT_TIMEOUT_SECONDS = 5


class Leadership:
    """Whether this process leads ``name`` for the database of ``engine``."""

    def __init__(self, engine: Engine, name: str, key: int) -> None:
        self._shared = engine.dialect.name == "postgresql"
        self._conninfo = engine.url.set(drivername="postgresql").render_as_string(
            hide_password=False
        )
        self._name = name
        self._key = key
        self._connection: Any = None
        self.leading = not self._shared

    async def try_lead(self) -> bool:
        """Take the lead if nobody holds it; return whether this process leads now.

        Database errors are logged and answer False (the next try may succeed).
        """
        if not self._shared or self.leading:
            return await self.still_leading()
        try:
            if self._connection is None or self._connection.broken:
                await self._drop()
                import psycopg

                self._connection = await psycopg.AsyncConnection.connect(
                    self._conninfo,
                    autocommit=True,
                    connect_timeout=CONNECT_TIMEOUT_SECONDS,
                    application_name=f"exchange-{self._name}",
                    # A cut network ends the session (and the lead) within seconds.
                    keepalives=1,
                    keepalives_idle=5,
                    keepalives_interval=2,
                    keepalives_count=3,
                    tcp_user_timeout=10_000,
                )
            async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
                cursor = await self._connection.execute(
                    "SELECT pg_try_advisory_lock(%s)", (self._key,)
                )
                row = await cursor.fetchone()
        except Exception as exc:
            _log.warning(f"{self._name}_lead_failed", error=type(exc).__name__)
            await self._drop()
            return False
        self.leading = bool(row and row[0])
        if self.leading:
            _log.info(f"{self._name}_leading")
        return self.leading

    async def still_leading(self) -> bool:
        """Whether the session holding the lead is still alive (always True on SQLite); if it
        is gone, the lead is lost (another process may already hold it)."""
        if not self._shared:
            return True
        if not self.leading:
            return False
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
                await self._connection.execute("SELECT 1")
        except Exception as exc:
            _log.warning(f"{self._name}_lead_lost", error=type(exc).__name__)
            await self._drop()
            return False
        return True

    async def close(self) -> None:
        """Give up the lead (closing the session releases the lock)."""
        await self._drop()

    async def _drop(self) -> None:
        connection, self._connection = self._connection, None
        self.leading = not self._shared
        if connection is not None:
            try:
                await connection.close()
            except Exception as exc:  # the server may be gone already
                _log.warning(f"{self._name}_close_failed", error=type(exc).__name__)
