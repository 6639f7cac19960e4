"""Schema violations name the field and the expected form, never the offending value."""

from __future__ import annotations

import pytest

from exchange import errors
from exchange.catalog.model import FieldSpec, FieldType, MaterialType, SharingClass
from exchange.catalog.schema import canonical_fields
from exchange.crypto.content import ContentKeys
from exchange.flows.material import check_fields
from exchange.store.materials import IndexedMaterial
from exchange.v1 import common_pb2

MARRIAGE = MaterialType(
    id="marriage-record",
    owner="civil",
    name="m",
    fields=(
        FieldSpec("marital_status", FieldType.STRING, True),
        FieldSpec("registered_on", FieldType.DATE),
        FieldSpec("children", FieldType.INTEGER),
        FieldSpec("remarried", FieldType.BOOLEAN),
    ),
    sharing_class=SharingClass.CONDITIONAL,
)


@pytest.mark.parametrize(
    ("name", "bad", "expected"),
    [
        ("registered_on", "1990-02-30", "calendar date"),
        ("registered_on", "19900101", "YYYY-MM-DD"),
        ("children", "3 (twins)", "decimal integer"),
        ("remarried", "jawohl", "true or false"),
    ],
)
def test_schema_violation_names_field_and_form_but_not_the_value(
    name: str, bad: str, expected: str
) -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        canonical_fields(MARRIAGE, {"marital_status": "married", name: bad}, complete=True)
    assert caught.value.reason == common_pb2.SCHEMA_VIOLATION
    message = caught.value.message
    assert name in message and expected in message
    assert bad not in message and bad[:8] not in message


def test_holder_answer_violating_schema_does_not_quote_the_value() -> None:
    keys = ContentKeys.derive(bytes(32))
    indexed = IndexedMaterial("ref", MARRIAGE.id, b"", 1, b"", "civil", "civil")
    with pytest.raises(errors.FailedPrecondition) as caught:
        check_fields(
            keys,
            MARRIAGE,
            "990101199001010019",
            {"registered_on": "1990-02-30"},
            ["registered_on"],
            indexed,
        )
    assert caught.value.reason == common_pb2.CONTENT_MISMATCH
    assert "registered_on" in caught.value.message
    assert "1990-02-30" not in caught.value.message
    assert "990101199001010019" not in caught.value.message
