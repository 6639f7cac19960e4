"""Forwarded request ids: how a holder's signed record names the caller's request (docs/api.md).

The hub forwards each call to a holder under its own request id,
``<binding>/<kind>-<16 hex>`` (55 characters), where the binding is the first 32 lowercase hex
digits of SHA-256 of the caller's whole request id. The holder signs that id into its
MaterialRecord, so a consumer checking the record end to end knows it answers its own request,
however long the request id was.
"""

from __future__ import annotations

import hashlib
import re

FORWARDED_KINDS = ("fetch", "store", "prefill")
# Calls that settle or list Stores (provider contract 2): no signed record ever names them.
CONTROL_KINDS = ("settle", "inventory")
FORWARDED_ID = re.compile(r"^[0-9a-f]{32}/(fetch|store|prefill)-[0-9a-f]{16}$")


def forwarded_binding(caller_request_id: str) -> str:
    """The first 32 lowercase hex digits of SHA-256 of the caller's request id (ASCII)."""
    return hashlib.sha256(caller_request_id.encode("ascii")).hexdigest()[:32]


def forwarded_id(caller_request_id: str, kind: str, suffix: str) -> str:
    """``<binding>/<kind>-<suffix>``; ``suffix`` is 16 lowercase hex digits.

    Raises ValueError for a kind other than fetch, store, prefill, settle or inventory, or a
    malformed suffix.
    """
    if kind not in FORWARDED_KINDS and kind not in CONTROL_KINDS:
        raise ValueError(f"unknown forwarded kind {kind[:16]!r}")
    if not re.fullmatch(r"[0-9a-f]{16}", suffix):
        raise ValueError("the suffix must be 16 lowercase hex digits")
    return f"{forwarded_binding(caller_request_id)}/{kind}-{suffix}"


def answers(record_request_id: str, request_id: str) -> bool:
    """Whether a holder's record naming ``record_request_id`` answers the caller's
    ``request_id``: it is that id, or an id the hub forwarded for it."""
    if record_request_id == request_id:
        return True
    return bool(FORWARDED_ID.match(record_request_id)) and record_request_id.startswith(
        forwarded_binding(request_id) + "/"
    )
