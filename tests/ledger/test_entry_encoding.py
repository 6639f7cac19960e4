"""Entry bytes assembled from parts encoded before the head lock are the entry's encoding."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from exchange.ledger.entry import (
    EntryDraft,
    assemble_entry,
    build_entry,
    encode_entry,
    prepare_entry,
)
from exchange.v1 import common_pb2, ledger_pb2

text = st.text(max_size=40)
blob = st.binary(max_size=40)
drafts = st.builds(
    EntryDraft,
    kind=st.sampled_from(list(ledger_pb2.EntryKind.values())),
    actor=text,
    outcome=st.sampled_from(list(ledger_pb2.Outcome.values())),
    reason=st.sampled_from(list(common_pb2.Reason.values())),
    subject_ref=blob,
    material_type=text,
    content_hash=blob,
    purpose=text,
    counterparty=text,
    reference=text,
    version=st.integers(0, 2**64 - 1),
    request_id=text,
    attributes=st.dictionaries(text, text, max_size=5),
)


@given(
    draft=drafts,
    envelope=blob,
    sequence=st.integers(0, 2**64 - 1),
    time_ns=st.integers(0, 2**62),
    prev=st.binary(min_size=32, max_size=32),
)
def test_assembled_bytes_are_the_deterministic_encoding(
    draft: EntryDraft, envelope: bytes, sequence: int, time_ns: int, prev: bytes
) -> None:
    whole = encode_entry(
        build_entry(
            draft, sequence=sequence, time_ns=time_ns, prev_leaf_hash=prev, envelope=envelope
        )
    )
    parts = assemble_entry(
        prepare_entry(draft, envelope), sequence=sequence, time_ns=time_ns, prev_leaf_hash=prev
    )
    assert parts == whole
