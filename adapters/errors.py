"""The one base exception of the ``adapters`` package and its families.

Refusals the adapter sends to the hub are ``exchange.errors.ExchangeError`` subclasses (one
error-to-status mapping in the project); these are the adapter's and the SDK's own failures.
"""

from __future__ import annotations


class AdapterError(Exception):
    """Base of every error the ``adapters`` package raises on purpose."""


class SettingsError(AdapterError):
    """The department's TOML file is missing, malformed, or names an unknown setting."""


class MappingError(AdapterError):
    """A mapping names a table, column, file or field its backend does not have.

    Raised at start, before the adapter serves anything; the message names the material type
    and the missing piece.
    """


class BackendError(AdapterError):
    """The backend cannot do what was asked (no store target, no holdings query, I/O failure)."""


class BackendRefused(BackendError):
    """The data source refused the values themselves: a value its column cannot hold (too long,
    wrong type) or a constraint it enforces. ``invalid`` is true for a value it cannot hold
    (the caller's INVALID_ARGUMENT), false for a constraint (FAILED_PRECONDITION). The message
    names the table, the error class, its SQLSTATE and the constraint, never a value."""

    def __init__(self, message: str, *, invalid: bool) -> None:
        super().__init__(message)
        self.invalid = invalid


class VerificationError(AdapterError):
    """An answer from the hub did not verify: a receipt outside its checkpoint, a checkpoint not
    signed by the hub, or a provider's material envelope that is not signed by its holder or does
    not answer the request that was made."""
