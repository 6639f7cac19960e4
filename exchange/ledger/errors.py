"""The ledger's refusals, as exchange errors carrying a contract reason."""

from __future__ import annotations

from exchange.errors import DATABASE_RETRY_SECONDS, NotFound, OutOfRange, Unavailable
from exchange.v1 import common_pb2


class LedgerUnavailable(Unavailable):
    """The ledger could not commit (database down, disk full, writer stopped); nothing was
    acknowledged, so the call that needed the entry must not be served."""

    def __init__(self, message: str = "the ledger cannot commit") -> None:
        super().__init__(common_pb2.LEDGER_UNAVAILABLE, message, retry_after=DATABASE_RETRY_SECONDS)


class BeyondLog(OutOfRange):
    """A position, size or checkpoint beyond the current log was asked for."""

    def __init__(self, message: str) -> None:
        super().__init__(common_pb2.BEYOND_LOG, message)


class CheckpointNotFound(NotFound):
    """No checkpoint is stored at the size asked for (the size is within the log)."""

    def __init__(self, message: str) -> None:
        super().__init__(common_pb2.BEYOND_LOG, message)
