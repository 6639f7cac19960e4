"""Key validity at authentication, without a server: real certificates and keys, a stub registry."""

from __future__ import annotations

import pytest

from exchange import errors
from exchange.clock import now_us, to_timestamp
from exchange.crypto import certificates
from exchange.crypto.envelope import sign
from exchange.crypto.keystore import Keystore
from exchange.membership import MemberState, Role
from exchange.policy.identity import Authenticator
from exchange.store.registry import DepartmentRecord, KeyRecord
from exchange.v1 import common_pb2, registry_pb2
from tests.conftest import HUB_ID

CIVIL = "js.nj.civil-affairs"
HOUR_US = 3_600 * 1_000_000


def authenticate_with_key(
    keystore: Keystore,
    *,
    valid_from_us: int,
    valid_until_us: int | None = None,
    revoked_us: int | None = None,
) -> str:
    """Sign a call with the department's key registered with this validity; the caller's id."""
    key = keystore.add_department(CIVIL)
    peer_certificate = keystore.department_tls(CIVIL).certificate
    department = DepartmentRecord(
        id=CIVIL,
        name="Civil Affairs",
        roles=frozenset({Role.CONSUMER}),
        provider_endpoint="",
        certificate_sha256=certificates.peer_identity(peer_certificate).certificate_sha256,
        state=MemberState.ACTIVE,
        owner=HUB_ID,
        registered_us=now_us() - HOUR_US,
        keys=(
            KeyRecord(
                key.keyid, CIVIL, key.public_bytes, valid_from_us, valid_until_us, revoked_us
            ),
        ),
    )
    authenticator = Authenticator(
        HUB_ID,
        lambda: [],
        {CIVIL: department}.get,
        replay_window_us=300 * 1_000_000,
    )
    body = registry_pb2.ListDepartmentsRequest(
        header=common_pb2.RequestHeader(
            request_id="req-1", department_id=CIVIL, issued_at=to_timestamp(now_us())
        )
    )
    envelope = sign(body.SerializeToString(), body.DESCRIPTOR.full_name, key)
    caller, _ = authenticator.authenticate(
        peer_certificate, envelope, registry_pb2.ListDepartmentsRequest
    )
    return caller.department_id


def test_key_inside_its_validity_authenticates(keystore: Keystore) -> None:
    assert authenticate_with_key(keystore, valid_from_us=now_us() - HOUR_US) == CIVIL


def test_key_not_valid_yet_is_refused_as_expired(keystore: Keystore) -> None:
    with pytest.raises(errors.Unauthenticated) as caught:
        authenticate_with_key(keystore, valid_from_us=now_us() + HOUR_US)
    assert caught.value.reason == common_pb2.KEY_EXPIRED
    assert "not valid yet" in caught.value.message


def test_key_rotated_out_is_refused_as_expired(keystore: Keystore) -> None:
    now = now_us()
    with pytest.raises(errors.Unauthenticated) as caught:
        authenticate_with_key(keystore, valid_from_us=now - 2 * HOUR_US, valid_until_us=now - 1)
    assert caught.value.reason == common_pb2.KEY_EXPIRED
    assert "rotated out" in caught.value.message


def test_revoked_key_is_refused_as_revoked_even_when_rotated_out(keystore: Keystore) -> None:
    now = now_us()
    with pytest.raises(errors.Unauthenticated) as caught:
        authenticate_with_key(
            keystore,
            valid_from_us=now - 2 * HOUR_US,
            valid_until_us=now - HOUR_US,
            revoked_us=now - HOUR_US,
        )
    assert caught.value.reason == common_pb2.KEY_REVOKED
