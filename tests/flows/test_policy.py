"""The sharing decision and rate limits, without servers."""

from __future__ import annotations

import pytest

from exchange import errors
from exchange.catalog.model import FieldSpec, FieldType, MaterialType, SharingClass
from exchange.catalog.schema import canonical_fields
from exchange.policy.grants import Grant
from exchange.policy.rates import RateLimiter
from exchange.policy.sharing import permit
from exchange.v1 import common_pb2

NOW = 1_000_000_000_000


def kind(sharing: SharingClass) -> MaterialType:
    return MaterialType(
        id="marriage-record",
        owner="civil",
        name="m",
        fields=(
            FieldSpec("marital_status", FieldType.STRING, True),
            FieldSpec("spouse_name", FieldType.STRING),
            FieldSpec("registered_on", FieldType.DATE),
        ),
        sharing_class=sharing,
    )


def grant(**overrides: object) -> Grant:
    values: dict[str, object] = {
        "id": "g-1",
        "owner": "civil",
        "consumer": "social",
        "material_type": "marriage-record",
        "fields": frozenset({"marital_status"}),
        "purposes": frozenset({"assistance"}),
        "valid_from_us": NOW - 10,
        "valid_until_us": NOW + 10,
        "rate_per_minute": 0,
        "revoked_us": None,
        "issued_us": NOW - 10,
    }
    values.update(overrides)
    return Grant(**values)  # type: ignore[arg-type]


def reason(call: object) -> int:
    with pytest.raises(errors.ExchangeError) as caught:
        call()  # type: ignore[operator]
    return caught.value.reason


def test_unconditional_gives_the_fields_asked_or_all() -> None:
    assert permit(kind(SharingClass.UNCONDITIONAL), [], [], "p", NOW).fields == (
        "marital_status",
        "registered_on",
        "spouse_name",
    )


def test_each_refusal_in_order() -> None:
    c = kind(SharingClass.CONDITIONAL)
    assert (
        reason(lambda: permit(kind(SharingClass.NOT_SHARED), [grant()], [], "assistance", NOW))
        == common_pb2.MATERIAL_NOT_SHARED
    )
    assert reason(lambda: permit(c, [], [], "assistance", NOW)) == common_pb2.NO_GRANT
    assert (
        reason(lambda: permit(c, [grant(revoked_us=NOW - 1)], [], "assistance", NOW))
        == common_pb2.GRANT_REVOKED
    )
    assert (
        reason(lambda: permit(c, [grant(valid_until_us=NOW)], [], "assistance", NOW))
        == common_pb2.GRANT_EXPIRED
    )
    assert reason(lambda: permit(c, [grant()], [], "other", NOW)) == common_pb2.PURPOSE_NOT_GRANTED
    assert (
        reason(lambda: permit(c, [grant()], ["spouse_name"], "assistance", NOW))
        == common_pb2.FIELD_NOT_GRANTED
    )
    assert (
        reason(lambda: permit(c, [grant()], ["nope"], "assistance", NOW))
        == common_pb2.INVALID_ARGUMENT_FIELD
    )
    allowed = permit(c, [grant()], [], "assistance", NOW)
    assert allowed.fields == ("marital_status",) and allowed.grant is not None


def test_rate_limiter_refills_and_says_when() -> None:
    limiter = RateLimiter()
    assert limiter.take("g", 2, now=0.0) == 0.0
    assert limiter.take("g", 2, now=0.0) == 0.0
    wait = limiter.take("g", 2, now=0.0)
    assert wait == pytest.approx(30.0)
    assert limiter.take("g", 2, now=30.0) == 0.0
    assert limiter.take("other", 0) == 0.0


def test_canonical_fields() -> None:
    c = kind(SharingClass.CONDITIONAL)
    assert canonical_fields(
        c, {"marital_status": "x", "registered_on": "2020-01-02"}, complete=True
    )
    assert (
        reason(lambda: canonical_fields(c, {"registered_on": "2020-01-02"}, complete=True))
        == common_pb2.SCHEMA_VIOLATION
    )
    assert (
        reason(
            lambda: canonical_fields(
                c, {"marital_status": "x", "registered_on": "2020-02-30"}, complete=True
            )
        )
        == common_pb2.SCHEMA_VIOLATION
    )
