from __future__ import annotations

import os

import pytest

from exchange.crypto.sealing import SealError, seal, unseal


def test_an_answer_sealed_to_a_disclosure_opens_only_with_it() -> None:
    disclosure = os.urandom(60)
    stored = seal(b"marital_status=married", disclosure)
    assert b"married" not in stored
    assert unseal(stored, disclosure) == b"marital_status=married"
    with pytest.raises(SealError):
        unseal(stored, os.urandom(60))
    with pytest.raises(SealError):
        unseal(stored, b"")


def test_answers_of_requests_without_personal_data_are_kept_plain() -> None:
    assert unseal(seal(b"departments", b""), b"") == b"departments"


def test_nonces_never_repeat() -> None:
    disclosure = os.urandom(60)
    nonces = {seal(b"answer", disclosure)[1:13] for _ in range(1000)}
    assert len(nonces) == 1000
