"""Repository of request idempotency records: one per (department, request id)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from exchange.store.tables import requests

PENDING = 0
ANSWERED = 1
REFUSED = 2


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """An earlier call with the same department and request id."""

    envelope_sha256: bytes
    method: str
    state: int
    response: bytes | None


class RequestLog:
    """Claims request ids and remembers their answers, so a retry gets the first answer."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def claim(
        self, department_id: str, request_id: str, envelope_sha256: bytes, method: str, now_us: int
    ) -> RequestRecord | None:
        """Claim the request id for this call; return None if claimed, else the earlier record."""
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(requests).values(
                        department_id=department_id,
                        request_id=request_id,
                        envelope_sha256=envelope_sha256,
                        method=method,
                        state=PENDING,
                        response=None,
                        received_us=now_us,
                    )
                )
            return None
        except IntegrityError:
            pass
        with self.engine.connect() as conn:
            row = conn.execute(
                select(requests).where(
                    requests.c.department_id == department_id,
                    requests.c.request_id == request_id,
                )
            ).first()
        if row is None:  # released between our insert and read: a fresh claim is fair
            return self.claim(department_id, request_id, envelope_sha256, method, now_us)
        m = row._mapping
        response = m["response"]
        return RequestRecord(
            envelope_sha256=bytes(m["envelope_sha256"]),
            method=m["method"],
            state=m["state"],
            response=None if response is None else bytes(response),
        )

    def complete(self, department_id: str, request_id: str, state: int, response: bytes) -> None:
        """Record the answer (serialized response, or serialized google.rpc.Status)."""
        with self.engine.begin() as conn:
            conn.execute(
                update(requests)
                .where(
                    requests.c.department_id == department_id,
                    requests.c.request_id == request_id,
                )
                .values(state=state, response=response)
            )

    def release(self, department_id: str, request_id: str) -> None:
        """Forget a claim whose call failed for an internal reason, so a retry runs again."""
        with self.engine.begin() as conn:
            conn.execute(
                delete(requests).where(
                    requests.c.department_id == department_id,
                    requests.c.request_id == request_id,
                )
            )

    def purge(self, before_us: int) -> int:
        """Delete records received before ``before_us``; return how many.

        Safe once they are older than the replay window: such requests are refused as stale.
        """
        with self.engine.begin() as conn:
            result = conn.execute(delete(requests).where(requests.c.received_us < before_us))
        return result.rowcount or 0
