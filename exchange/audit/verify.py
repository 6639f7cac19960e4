"""Offline verification of a ledger export, with no access to the hub.

Checks every chain link, that entry times never go back, that every OK entry carries an
envelope, every envelope against the key of the entry's actor valid at the entry's time, the
Merkle root at every checkpoint, every checkpoint signature, that checkpoints
grow (consecutive checkpoints are consistent because both roots are recomputed from the one
leaf sequence), that the export is complete, and optionally that it extends a checkpoint the
auditor already trusts. What the ledger does not know (that an envelope is the request of its
entry, and that the export's unsigned key records are vouched for by the operator's registry
entries) is checked by an ``EntryAudit`` hook, by default ``keyhistory.RegistryAudit``.

Per-entry work (decode, hashes, envelope signatures, bindings) runs in a process pool over
chunks of the stream, since Ed25519 verification dominates and the GIL would hold it to one
core. The parent finds where entry lines are and cuts them into chunks, reads the records
between them, links each chunk to the one before, keeps the registry's state and folds the
chunks' Merkle subtrees into the tree, in order. From an export file the workers read their
chunks themselves, by byte range: no entry line passes through the parent's pipes.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import enum
import hashlib
import json
import os
import stat
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Any, NamedTuple, Protocol

import pybase64
from google.protobuf.message import DecodeError

from exchange.crypto.envelope import EnvelopeError, verified_key
from exchange.crypto.keys import keyid as keyid_of
from exchange.crypto.keys import verify_signature
from exchange.ledger import merkle
from exchange.ledger.checkpoint import (
    CheckpointError,
    NoteVerifier,
    UntrustedSigner,
    note_signers,
    verify_checkpoint,
)
from exchange.ledger.entry import ZERO_HASH
from exchange.ledger.export import FORMAT, VERSION, parse_time_ns
from exchange.v1 import envelope_pb2, ledger_pb2

CHUNK = 2048


class FailureReason(enum.Enum):
    """Why an export does not verify; for one sequence number, earlier members are reported
    first (an entry-local cause explains a broken link better than the link does)."""

    MALFORMED_EXPORT = "malformed export"
    MALFORMED_ENTRY = "malformed entry"
    SEQUENCE_GAP = "entry missing or out of order"
    ENVELOPE_HASH_MISMATCH = "envelope does not match the entry's envelope hash"
    MISSING_ENVELOPE = "an OK entry carries no envelope"
    NO_VALID_KEY = "envelope not signed by a key of the entry's actor valid at its time"
    BAD_ENVELOPE_SIGNATURE = "envelope signature does not verify"
    ENVELOPE_ENTRY_MISMATCH = "envelope is not the request the entry records"
    OUTSIDE_ISSUE_WINDOW = "entry time outside its request's issue window"
    REQUEST_RECORDED_TWICE = "a request recorded by two OK entries"
    UNREGISTERED_KEY = "signing key not vouched for by the operator's registry entries"
    REVOKED_KEY_USED = "signing key used after the entry that revoked or rotated it out"
    TIME_REGRESSION = "entry time earlier than the previous entry's"
    CHAIN_BROKEN = "hash chain broken"
    NO_PINNED_CHECKPOINT = "no checkpoint carries a pinned hub key"
    WITNESS_QUORUM = "no checkpoint carries the witness quorum"
    BAD_CHECKPOINT_SIGNATURE = "checkpoint not signed by the hub"
    ROOT_MISMATCH = "checkpoint root differs from the entries' Merkle root"
    CHECKPOINT_ORDER = "checkpoints out of order or of another log"
    TRUNCATED = "export is truncated"
    TRUSTED_CHECKPOINT_MISMATCH = "history differs from the trusted checkpoint"
    BAD_TRUSTED_CHECKPOINT = "trusted checkpoint not signed by the hub"


@dataclass(frozen=True, slots=True)
class Failure:
    """The first problem found: the sequence number it concerns (None for the export as a
    whole), the reason and a human message."""

    sequence: int | None
    reason: FailureReason
    message: str

    def __str__(self) -> str:
        where = "export" if self.sequence is None else f"sequence {self.sequence}"
        return f"{where}: {self.reason.name}: {self.message}"


@dataclass(slots=True)
class Report:
    """The outcome of a verification."""

    entries: int = 0
    checkpoints: int = 0
    signatures: int = 0
    size: int = 0
    origin: str = ""
    witnessed_size: int | None = None  # the largest checkpoint meeting the witness policy
    failures: list[Failure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True if nothing failed."""
        return not self.failures

    @property
    def first_failure(self) -> Failure | None:
        """The failure with the smallest sequence number (export-level ones first)."""
        if not self.failures:
            return None
        order = list(FailureReason)
        return min(
            self.failures,
            key=lambda f: (-1 if f.sequence is None else f.sequence, order.index(f.reason)),
        )


class KeyInfo(NamedTuple):
    """One key record of the export; times in nanoseconds since the Unix epoch."""

    keyid: str
    public_key: bytes
    valid_from: int
    valid_until: int | None
    revoked_at: int | None


Problem = tuple[str, str]  # (FailureReason member name, message)


class EntryAudit(Protocol):
    """Checks beyond what the ledger knows, plugged into ``verify_export``.

    ``inspect`` runs in the worker processes (the object is pickled to them once), for every
    OK entry whose envelope verified, with the entry's time; it must not depend on state.
    ``start`` and ``observe_chunk`` run in the parent: ``start`` once with the key records (by
    actor) and the operator's pinned first public keys, ``observe_chunk`` with the same entries
    a chunk at a time, in log order, and what ``inspect`` returned as facts (``Verified``); it
    returns the problems it finds by position, in position order (``observe`` is the same for
    one entry). Problems name a ``FailureReason`` member.
    """

    def inspect(
        self, entry: ledger_pb2.LedgerEntry, envelope: envelope_pb2.Envelope, time_ns: int
    ) -> tuple[list[Problem], Any]: ...

    def start(
        self, keys: dict[str, list[KeyInfo]], operator_keys: Sequence[bytes]
    ) -> list[Problem]: ...

    def observe(
        self, sequence: int, time_ns: int, actor: str, keyid: str, facts: Any
    ) -> list[Problem]: ...

    def observe_chunk(self, verified: Verified) -> list[LocalProblem]: ...


def default_audit(issue_window_seconds: int | None = None) -> EntryAudit:
    """The hook ``verify_export`` uses by default: ``keyhistory.RegistryAudit``, allowing the
    hub's replay window (default 300 s) between a request's issue and its entry."""
    from exchange.audit.keyhistory import ISSUE_WINDOW_NS, RegistryAudit

    if issue_window_seconds is None:
        return RegistryAudit()
    return RegistryAudit(issue_window_ns=issue_window_seconds * 1_000_000_000 or ISSUE_WINDOW_NS)


class Trusted(NamedTuple):
    """A checkpoint the auditor holds: its name in messages (``#n (size s)``), size and root."""

    name: str
    size: int
    root_hash: bytes


def _trusted(
    report: Report, given: str | Sequence[str] | None, pinned: Sequence[NoteVerifier]
) -> list[Trusted] | None:
    """Check every trusted checkpoint against the pinned keys and the export's origin; None
    (with the failure reported) if one does not pass."""
    notes = [given] if isinstance(given, str) else list(given or ())
    held: list[Trusted] = []
    for number, note in enumerate(notes, start=1):
        try:
            checkpoint = verify_checkpoint(note, pinned)
        except CheckpointError as exc:
            report.failures.append(
                Failure(
                    None,
                    FailureReason.BAD_TRUSTED_CHECKPOINT,
                    f"trusted checkpoint #{number}: {exc}",
                )
            )
            return None
        name = f"#{number} (size {checkpoint.size})"
        if checkpoint.origin != report.origin:
            report.failures.append(
                Failure(
                    None,
                    FailureReason.BAD_TRUSTED_CHECKPOINT,
                    f"trusted checkpoint {name} is of log {checkpoint.origin}, export of "
                    f"{report.origin}",
                )
            )
            return None
        held.append(Trusted(name, checkpoint.size, checkpoint.root_hash))
    return held


# ------------------------------------------------------------------ worker side

_Key = KeyInfo
_KEYS: dict[tuple[str, str], list[_Key]] = {}  # (actor, keyid) -> its records, in export order
_AUDIT: EntryAudit | None = None
# public key -> its key id, one string object per key: a chunk's results name the key of each
# entry, and pickle sends a repeated object once
_KEYIDS: dict[bytes, str] = {}

# (actor, keyid) -> (public key, valid from, valid until or revoked at, keyid) of a key with
# one record: the path most envelopes take, one lookup and one comparison
_SINGLE_KEYS: dict[tuple[str, str], tuple[bytes, int, int, str]] = {}
_FOREVER = 1 << 96  # later than any protobuf Timestamp, in nanoseconds
# payload type -> its DSSE pre-authentication encoding up to the payload's length
_PAE_PREFIXES: dict[str, bytes] = {}

# The OK entries of a chunk whose envelope verified, for ``EntryAudit.observe_chunk``, as
# columns in position order: positions, times, actors, key ids, and what ``inspect`` returned.
Verified = tuple[list[int], list[int], list[str], list[str], list[Any]]
LocalProblem = tuple[int, str, str]  # position, FailureReason member name, message


class ChunkResult(NamedTuple):
    """What a worker found in the entries at positions ``start`` … ``start + entries - 1``.

    Everything that needs no state from earlier chunks is decided here; the parent only links
    the chunk to its predecessor (``first_prev``, ``first_time``) and folds ``levels`` into its
    tree."""

    start: int
    entries: int
    failures: list[LocalProblem]  # problems of single entries, in position order
    signatures: int
    verified: Verified  # OK entries whose envelope verified, for ``EntryAudit.observe_chunk``
    # The first break of the chain inside the chunk: (position, problem or None if the entry
    # is malformed, already reported). The first entry's link to the previous chunk is the
    # parent's to check, against ``first_prev``.
    chain: tuple[int, LocalProblem | None] | None
    first_prev: bytes
    last_leaf: bytes
    first_time: tuple[int, int] | None  # (position, time) of the first decodable entry
    last_time: int
    regressions: list[int]  # positions dated before the decodable entry before them
    levels: list[bytes]  # merkle.subtree_levels of the chunk's leaf hashes


class _ExportFile(NamedTuple):
    """The export as a file the workers read their chunks from themselves, by byte range: the
    parent reads each line once to find where chunks start and what lies between entries, and
    sends no entry to a worker. Identified by more than its path, so that a worker never reads
    another file that took its place."""

    path: str
    device: int
    inode: int
    size: int
    mtime_ns: int


# A chunk as a worker gets it: its lines as text (a stream that is not a plain file), or the
# byte range of the export file holding them (entry lines, and the records the parent handles
# between them, which the worker passes over).
Chunk = str | tuple[int, int]
_FILE: int | None = None  # the worker's descriptor of the export file
_FILE_PROBLEM = ""  # why it has none, for a chunk given by byte range


class _AtLine(ValueError):
    """A malformed export, its message naming the line."""


class _NotText(ValueError):
    """A chunk of the export file is not UTF-8, ``line`` lines after the chunk's first."""

    def __init__(self, line: int, problem: str) -> None:
        super().__init__(line, problem)  # as pickle rebuilds it, from the worker
        self.line = line

    def __str__(self) -> str:
        return str(self.args[1])


def _init_worker(
    keys: dict[str, list[_Key]],
    audit: EntryAudit | None = None,
    export: _ExportFile | int | None = None,
) -> None:
    """Set this process's key tables and hook, and the export file it reads byte ranges of
    (``export``: the file to open, or a descriptor already open in this process)."""
    global _KEYS, _SINGLE_KEYS, _KEYIDS, _AUDIT, _FILE, _FILE_PROBLEM  # per-process state
    table: dict[tuple[str, str], list[_Key]] = {}
    for actor, records in keys.items():
        for record in records:
            table.setdefault((actor, record.keyid), []).append(record)
    _KEYS = table
    _SINGLE_KEYS = {
        pair: (
            only.public_key,
            only.valid_from,
            min((t for t in only[3:] if t is not None), default=_FOREVER),  # until, revoked
            only.keyid,
        )
        for pair, (only, *others) in table.items()
        if not others
    }
    _PAE_PREFIXES.clear()
    _KEYIDS = {record.public_key: record.keyid for records in keys.values() for record in records}
    _AUDIT = audit
    _FILE, _FILE_PROBLEM = (export, "") if isinstance(export, int) else _open(export)


def _open(export: _ExportFile | None) -> tuple[int | None, str]:
    if export is None:
        return None, "no export file was given"
    try:
        fd = os.open(export.path, os.O_RDONLY)
    except OSError as exc:
        return None, f"cannot open the export file: {exc}"
    found = os.fstat(fd)
    if (found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns) != export[1:]:
        os.close(fd)
        return None, f"{export.path} changed while it was being verified"
    return fd, ""


def _chunk_lines(source: Chunk) -> list[bytes]:
    """The lines of a chunk, as bytes without their line ends."""
    if isinstance(source, str):
        # surrogatepass: a line parsed as JSON decodes back to exactly this text
        data = source.encode("utf-8", "surrogatepass")
    else:
        if _FILE is None:
            raise ValueError(_FILE_PROBLEM)
        begin, end = source
        data = os.pread(_FILE, end - begin, begin)
        if len(data) != end - begin:
            raise ValueError("the export file was truncated while it was being verified")
    return data.split(b"\n")


def _pae_prefix(payload_type: str) -> bytes:
    """The DSSE pre-authentication encoding of ``payload_type`` up to the payload's length (see
    ``exchange.crypto.envelope.pae``), kept for the few types a log holds."""
    kind = payload_type.encode("utf-8")
    prefix = b"DSSEv1 %d %b " % (len(kind), kind)
    if len(_PAE_PREFIXES) < 256:
        _PAE_PREFIXES[payload_type] = prefix
    return prefix


def _key_lookup(actor: str, time_ns: int) -> Callable[[str], bytes | None]:
    def lookup(keyid: str) -> bytes | None:
        for _, public_key, valid_from, valid_until, revoked_at in _KEYS.get((actor, keyid), ()):
            if time_ns < valid_from:
                continue
            if valid_until is not None and time_ns >= valid_until:
                continue
            if revoked_at is not None and time_ns >= revoked_at:
                continue
            return public_key
        return None

    return lookup


# An entry line as the exporter writes it, taken apart without a JSON parse (most of a line is
# base64, which strict decoding checks); any other spelling of the same JSON is parsed as JSON.
_ENTRY = b'{"type":"entry"'  # what marks a line as an entry, for the parent and the workers
_ENTRY_PREFIX = b'{"type":"entry","sequence":'
_ENTRY_KEY = b',"entry":"'
_ENVELOPE_KEY = b'","envelope":"'
_PREFIX_LENGTH, _ENTRY_KEY_LENGTH = len(_ENTRY_PREFIX), len(_ENTRY_KEY)
_ENVELOPE_KEY_LENGTH = len(_ENVELOPE_KEY)
_NO_LEAF = bytes(merkle.HASH_SIZE)  # stands for an undecodable entry's leaf (already reported)


def _entry_fields(line: bytes, errors: str = "strict") -> tuple[bytes, bytes]:
    """The entry and envelope bytes of an entry line (without its line end), which is UTF-8
    (decoded with ``errors`` where it must be). Raises ValueError (binascii.Error and
    UnicodeDecodeError among them), KeyError, TypeError if it is not an object with both in
    base64."""
    if line.startswith(_ENTRY_PREFIX):
        entry_at = line.find(_ENTRY_KEY, _PREFIX_LENGTH)
        envelope_at = line.find(_ENVELOPE_KEY, entry_at) + _ENVELOPE_KEY_LENGTH
        end = len(line) - 2
        if (
            entry_at > 0
            and line[_PREFIX_LENGTH:entry_at].isdigit()
            and _ENVELOPE_KEY_LENGTH <= envelope_at <= end
            and line.endswith(b'"}')
        ):
            entry_text = line[entry_at + _ENTRY_KEY_LENGTH : envelope_at - _ENVELOPE_KEY_LENGTH]
            envelope_text = line[envelope_at:end]
            # Strict standard base64: pybase64 decodes the exporter's spelling several times
            # faster than binascii, whose strict mode is the rule: it never refuses what
            # pybase64 accepts, and decides what pybase64 refuses (a few spellings it accepts).
            decode = pybase64.b64decode  # (text, None, True): validate, a keyword costs more
            try:
                return decode(entry_text, None, True), decode(envelope_text, None, True)
            except ValueError:
                pass
            try:
                return (
                    binascii.a2b_base64(entry_text, strict_mode=True),
                    binascii.a2b_base64(envelope_text, strict_mode=True),
                )
            except ValueError:
                pass  # not the exporter's spelling after all (an escape, a quote): parse it
    record = json.loads(line.decode("utf-8", errors))
    entry, envelope = record["entry"], record.get("envelope", "")
    if not isinstance(entry, str) or not isinstance(envelope, str):
        raise TypeError("entry and envelope are base64 strings")
    return (
        binascii.a2b_base64(entry, strict_mode=True),
        binascii.a2b_base64(envelope, strict_mode=True),
    )


def _check_chunk(start: int, source: Chunk) -> ChunkResult:
    """Decode and check the entries at ``start`` … of one chunk: everything about them that
    needs no state of earlier chunks (see ``ChunkResult``).

    The common entry (an exporter's line, an envelope with one signature by a key with one
    record) takes a path with as few Python steps as the checks allow; anything else takes
    the general one (``_entry_fields``' JSON parse, ``verified_key``), with the same results."""
    failures: list[LocalProblem] = []
    positions: list[int] = []
    times: list[int] = []
    actors: list[str] = []
    keyids: list[str] = []
    facts: list[Any] = []
    leaves: list[bytes] = []
    regressions: list[int] = []
    chain: tuple[int, LocalProblem | None] | None = None
    first_prev = b""
    first_time: tuple[int, int] | None = None
    last_time = -1
    leaf = b""
    signatures = 0
    audit = _AUDIT
    inspect = None if audit is None else audit.inspect
    single_keys, pae_prefixes = _SINGLE_KEYS, _PAE_PREFIXES
    sha256 = hashlib.sha256
    decode = pybase64.b64decode  # (text, None, True): validate; a keyword costs more
    verify = verify_signature
    parse_entry = ledger_pb2.LedgerEntry.FromString
    parse_envelope = envelope_pb2.Envelope.FromString
    ok = ledger_pb2.OK
    position = start - 1
    # a line of text comes back exactly as it was; the file's bytes must be UTF-8, as they
    # must be for a text stream of the file
    errors = "surrogatepass" if isinstance(source, str) else "strict"
    lines = _chunk_lines(source)
    for line in lines:
        if not line.startswith(_ENTRY):
            continue  # a blank line or a record between entries: the parent's
        position += 1
        try:
            # the exporter's spelling, inline (see _entry_fields, which decides the rest)
            entry_at = line.find(_ENTRY_KEY, _PREFIX_LENGTH)
            envelope_at = line.find(_ENVELOPE_KEY, entry_at) + _ENVELOPE_KEY_LENGTH
            end = len(line) - 2
            exporters = (
                entry_at > 0
                and line.startswith(_ENTRY_PREFIX)
                and line[_PREFIX_LENGTH:entry_at].isdigit()
                and _ENVELOPE_KEY_LENGTH <= envelope_at <= end
                and line.endswith(b'"}')
            )
            if exporters:
                try:
                    entry_bytes = decode(
                        line[entry_at + _ENTRY_KEY_LENGTH : envelope_at - _ENVELOPE_KEY_LENGTH],
                        None,
                        True,
                    )
                    envelope = decode(line[envelope_at:end], None, True)
                except ValueError:
                    exporters = False
            if not exporters:
                entry_bytes, envelope = _entry_fields(line, errors)
            entry = parse_entry(entry_bytes)
        except UnicodeDecodeError as exc:
            raise _NotText(lines.index(line), str(exc)) from None
        except (ValueError, KeyError, TypeError, DecodeError) as exc:
            failures.append((position, "MALFORMED_ENTRY", f"cannot decode: {exc}"))
            leaf = _NO_LEAF
            leaves.append(leaf)
            if chain is None:
                chain = (position, None)
            continue
        previous, leaf = leaf, sha256(b"\x00" + entry_bytes).digest()
        leaves.append(leaf)
        if chain is None:
            if entry.sequence != position:
                chain = (
                    position,
                    (
                        position,
                        "SEQUENCE_GAP",
                        f"expected entry {position}, found entry {entry.sequence}",
                    ),
                )
            elif position == start:
                first_prev = entry.prev_leaf_hash
            elif entry.prev_leaf_hash != previous:
                chain = (position, _chain_broken(position))
        time = entry.time  # entry_time_ns, inline
        time_ns = time.seconds * 1_000_000_000 + time.nanos
        if first_time is None:
            first_time = (position, time_ns)
        elif time_ns < last_time:
            # A backdated entry could slip into a rotated or revoked key's validity window.
            regressions.append(position)
        last_time = time_ns
        if entry.envelope_hash != (sha256(envelope).digest() if envelope else b""):
            failures.append(
                (position, "ENVELOPE_HASH_MISMATCH", "the stored envelope bytes were altered")
            )
            continue
        # A refused or failed call may carry a bad signature legitimately: only OK entries
        # vouch for their envelope's signature. Every OK entry records an authenticated call,
        # whose signed envelope the hub stores beside it (the operator's calls included).
        if entry.outcome != ok:
            continue
        actor = entry.actor
        if not envelope:
            failures.append(
                (position, "MISSING_ENVELOPE", f"actor {actor}: the call's envelope is gone")
            )
            continue
        signatures += 1
        try:
            message = parse_envelope(envelope)
        except DecodeError:
            failures.append((position, "BAD_ENVELOPE_SIGNATURE", "envelope is not decodable"))
            continue
        # verified_key, inline for one signature by a key with one record valid at the time
        signed = message.signatures
        key = None
        if len(signed) == 1:
            signature = signed[0]
            key = single_keys.get((actor, signature.keyid))
            if key is not None and key[1] <= time_ns < key[2]:
                payload_type, payload = message.payload_type, message.payload
                prefix = pae_prefixes.get(payload_type) or _pae_prefix(payload_type)
                if not verify(key[0], signature.sig, b"%b%d %b" % (prefix, len(payload), payload)):
                    failures.append(
                        (
                            position,
                            "BAD_ENVELOPE_SIGNATURE",
                            f"actor {actor}: signature by key {key[3][:16]}… does not verify",
                        )
                    )
                    continue
                keyid = key[3]
            else:
                key = None
        if key is None:
            try:
                _, public_key = verified_key(message, _key_lookup(actor, time_ns))
            except EnvelopeError as exc:
                reason = "NO_VALID_KEY" if "known key" in str(exc) else "BAD_ENVELOPE_SIGNATURE"
                failures.append((position, reason, f"actor {actor}: {exc}"))
                continue
            keyid = _KEYIDS[public_key]
        if inspect is not None:
            problems, found = inspect(entry, message, time_ns)
            if problems:
                failures.extend((position, reason, text) for reason, text in problems)
            positions.append(position)
            times.append(time_ns)
            actors.append(actor)
            keyids.append(keyid)
            facts.append(found)
    return ChunkResult(
        start,
        position + 1 - start,
        failures,
        signatures,
        (positions, times, actors, keyids, facts),
        chain,
        first_prev,
        leaf,
        first_time,
        last_time,
        regressions,
        merkle.subtree_levels(leaves),
    )


def _chain_broken(position: int) -> LocalProblem:
    culprit = max(position - 1, 0)
    return (
        culprit,
        "CHAIN_BROKEN",
        f"entry {position}'s prev_leaf_hash is not the leaf hash of entry {culprit}: an entry "
        "was altered, removed or inserted",
    )


# ------------------------------------------------------------------ parent side


BLOCK = 1 << 20  # bytes (characters of a text stream) the parent reads at a time

_RECORD, _FIRST_ENTRY, _CHUNK = 0, 1, 2


class _Source:
    """The export's lines for the parent, read a block at a time.

    Entry lines are only counted and cut into chunks of ``CHUNK`` entries; the parent reads
    every other line (its records: the header, keys, checkpoints, end) as text. A chunk is the
    span of the export from its first entry line to its last, with the records between them,
    which its worker passes over: the byte range of a plain UTF-8 file (the worker reads it
    itself), else that text. ``events`` yields (``_RECORD``, text), (``_FIRST_ENTRY``, None) at
    the first entry line, and (``_CHUNK``, chunk) in order; ``entries`` counts the entry lines
    seen, ``line_number`` the lines and ``chunk_line`` is the number of the last chunk's first
    line.
    """

    def __init__(self, handle: IO[str]) -> None:
        self._handle = handle
        self.file = _plain_file(handle)
        self.line_number = 0
        self.entries = 0
        self.ended = False  # the end record was read: any further record is refused
        self.chunk_line = 0
        # the handle's descriptor, read at explicit offsets (the handle stays where it is)
        self.fd = None if self.file is None else handle.fileno()
        self._by_range = self.file is not None  # chunks are byte ranges of the file

    def _blocks(self) -> Iterator[tuple[str | bytes, int, int]]:
        """The export as (block, offset of the block in the file, where its last whole line
        ends); the stream's last block ends where the stream does. Bytes of the file while it
        holds no carriage return, else text read through the handle, whose newline mode then
        decides where lines end."""
        offset = 0
        if self.fd is not None:
            size = BLOCK
            while True:
                block = os.pread(self.fd, size, offset)
                if b"\r" in block:
                    self._handle.seek(offset)  # a line start: a cookie of a stateless decoder
                    break
                if len(block) < size:
                    if block:
                        yield block, offset, len(block)
                    return
                cut = block.rfind(b"\n") + 1
                if cut:
                    yield block, offset, cut
                    offset, size = offset + cut, BLOCK
                else:
                    size *= 2  # a line longer than a block
        carry = ""
        while True:
            text = self._handle.read(BLOCK)
            if not text:
                if carry:
                    yield carry, offset, len(carry)
                return
            text = carry + text
            cut = text.rfind("\n") + 1
            carry = text[cut:]
            if cut:
                yield text, offset, cut

    def events(self) -> Generator[tuple[int, Any], None, None]:
        chunk = CHUNK
        header = True  # the first record is the header, whatever it starts with
        in_chunk = 0  # entry lines in the chunk being cut
        begin = 0  # where it begins: in the file, or in the current block of text
        pieces: list[str] = []  # its text from earlier blocks
        read = 0  # where in the file the blocks read so far end
        ended = False  # as self.ended, which the reader of the events sets
        newline: Any = b"\n" if self._by_range else "\n"
        mark: Any = _ENTRY if self._by_range else _ENTRY.decode()
        for block, offset, cut in self._blocks():
            if self._by_range and isinstance(block, str):  # the rest is read as text
                self._by_range, newline, mark = False, "\n", _ENTRY.decode()
                if in_chunk:
                    assert self.fd is not None
                    pieces.append(os.pread(self.fd, offset - begin, begin).decode("utf-8"))
                    begin = 0
            find, starts = block.find, block.startswith
            position = 0
            # the counters are kept here and stored before each event (and error)
            line_number, entries = self.line_number, self.entries
            while position < cut:
                end = find(newline, position, cut)
                if end < 0:
                    end = cut  # the stream's last line, without its end
                line_number += 1
                if starts(mark, position) and not header:
                    if ended:
                        self.line_number = line_number
                        raise ValueError("records after the end record")
                    if not entries:
                        self.line_number = line_number
                        yield _FIRST_ENTRY, None
                    if not in_chunk:
                        begin = offset + position if self._by_range else position
                        self.chunk_line = line_number
                    entries += 1
                    in_chunk += 1
                    if in_chunk == chunk:
                        self.line_number, self.entries = line_number, entries
                        stop = min(end + 1, cut)  # after the line's end, if it has one
                        yield _CHUNK, self._chunk(pieces, block, begin, stop, offset)
                        in_chunk = 0
                else:
                    self.line_number, self.entries = line_number, entries
                    line = block[position:end]
                    text = line if isinstance(line, str) else line.decode("utf-8")
                    if text and not text.isspace():
                        if ended:
                            raise ValueError("records after the end record")
                        header = False
                        yield _RECORD, text
                        ended = self.ended  # the end record was just read
                position = end + 1
            self.line_number, self.entries = line_number, entries
            read = offset + cut
            if in_chunk and not self._by_range:  # the chunk goes on in the next block
                pieces.append(str(block[begin:cut]))
                begin = 0
        if in_chunk:  # to the end of the stream (the worker passes over the records there)
            yield _CHUNK, self._chunk(pieces, "", begin, 0, read)

    def _chunk(
        self, pieces: list[str], block: str | bytes, begin: int, end: int, offset: int
    ) -> Chunk:
        """The chunk from ``begin`` to ``end`` in ``block``, found at ``offset`` in the file."""
        if self._by_range:
            return (begin, offset + end)
        pieces.append(str(block[begin:end]))
        text = "".join(pieces)
        pieces.clear()
        return text


def _plain_file(handle: IO[str]) -> _ExportFile | None:
    """The export file behind ``handle`` if workers can read their chunks from it themselves:
    an unread regular file, opened by its path as strict UTF-8."""
    if not hasattr(os, "pread"):
        return None
    try:
        path = handle.name
        if (
            not isinstance(path, str)
            or codecs.lookup(handle.encoding).name != "utf-8"  # type: ignore[attr-defined]
            or handle.errors != "strict"  # type: ignore[attr-defined]
            or not handle.seekable()
            or handle.tell() != 0
        ):
            return None
        found = os.fstat(handle.fileno())
        path = os.path.abspath(path)
        here = os.stat(path)
    except (AttributeError, OSError, ValueError, LookupError):
        return None
    if not stat.S_ISREG(found.st_mode) or (here.st_dev, here.st_ino) != (
        found.st_dev,
        found.st_ino,
    ):
        return None  # not a plain file, or its path names another file now
    return _ExportFile(path, found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns)


def _keys_from(records: list[dict[str, Any]]) -> dict[str, list[_Key]]:
    keys: dict[str, list[_Key]] = {}
    for record in records:
        public_key = base64.b64decode(record["public_key"], validate=True)
        if len(public_key) != 32 or keyid_of(public_key) != record["keyid"]:
            raise ValueError(f"key {record['keyid'][:16]}… does not match its public key")
        until = record.get("valid_until")
        revoked = record.get("revoked_at")
        keys.setdefault(str(record["actor"]), []).append(
            KeyInfo(
                str(record["keyid"]),
                public_key,
                parse_time_ns(record["valid_from"]),
                parse_time_ns(until) if until else None,
                parse_time_ns(revoked) if revoked else None,
            )
        )
    return keys


class _Verifier:
    def __init__(
        self,
        report: Report,
        hub_keys: list[NoteVerifier],
        trusted: list[Trusted],
        progress: Callable[[int], None] | None,
        audit: EntryAudit | None = None,
    ) -> None:
        self.report = report
        self.hub_keys = hub_keys
        self.audit = audit
        self.last_time = -1
        self.trusted = trusted
        self.progress = progress
        self.tree = merkle.CompactRange()
        self.prev = ZERO_HASH
        self.position = 0
        self.last_checkpoint = 0
        self.checkpoints_at: dict[int, str] = {}
        self.broken = False
        self.operator_keys: list[bytes] = []  # the operator's first keys, as pinned
        self.witness_policy: Callable[[str], object] | None = None
        self.quorum_problem = ""
        self.pinned_signed = 0  # checkpoints a pinned key signed
        self.other_signers: set[str] = set()  # who signed the others

    def fail(self, sequence: int | None, reason: FailureReason, message: str) -> None:
        self.report.failures.append(Failure(sequence, reason, message))

    def absorb(self, result: ChunkResult) -> None:
        """Take a worker's findings for the next chunk, in log order."""
        start, count = result.start, result.entries
        self.report.signatures += result.signatures
        for position, reason, message in result.failures:
            self.fail(position, FailureReason[reason], message)
        if self.audit is not None:
            for position, reason, message in self.audit.observe_chunk(result.verified):
                self.fail(position, FailureReason[reason], message)
        # What depends on the chunks before, in the order a one-entry-at-a-time reading meets
        # it: at each position its date, its link, then the checkpoints of the size it makes.
        steps: list[tuple[int, int, LocalProblem | int]] = []
        if result.first_time is not None:
            position, time_ns = result.first_time
            if time_ns < self.last_time:
                steps.append((position, 0, _regression(position)))
            self.last_time = result.last_time
        steps.extend((position, 0, _regression(position)) for position in result.regressions)
        if not self.broken and count:
            chain = result.chain
            if (chain is None or chain[0] > start) and result.first_prev != self.prev:
                chain = (start, _chain_broken(start))
            if chain is not None:
                self.broken = True
                if chain[1] is not None:
                    steps.append((chain[0], 1, chain[1]))
        end = start + count
        sizes = {size for size in self.checkpoints_at if start < size <= end}
        sizes.update(held.size for held in self.trusted if start < held.size <= end)
        steps.extend((size - 1, 2, size) for size in sizes)
        steps.sort(key=lambda step: step[:2])
        for _, _, step in steps:
            if isinstance(step, int):
                self._check_roots(step, self._root_within(result, step))
            else:
                self.fail(step[0], FailureReason[step[1]], step[2])
        _extend(self.tree, result.levels, count)
        self.prev = result.last_leaf
        self.position = end
        self.report.entries = end
        if self.progress is not None:
            self.progress(count)

    def _root_within(self, result: ChunkResult, size: int) -> bytes:
        """The root of the first ``size`` entries, the tree holding those before the chunk."""
        tree = self.tree.copy()
        _extend(tree, result.levels, size - result.start)
        return tree.root()

    def _check_roots(self, size: int, root: bytes) -> None:
        note = self.checkpoints_at.pop(size, None)
        if note is not None:
            self._check_checkpoint(size, note, root)
        for held in self.trusted:
            if held.size == size and root != held.root_hash:
                self.fail(
                    size - 1,
                    FailureReason.TRUSTED_CHECKPOINT_MISMATCH,
                    f"the first {size} entries do not have the root of trusted checkpoint "
                    f"{held.name}: the history was rewritten or forked",
                )

    def _check_checkpoint(self, size: int, note: str, root: bytes) -> None:
        try:
            checkpoint = verify_checkpoint(note, self.hub_keys)
        except UntrustedSigner as exc:
            self.other_signers.update(note_signers(note))
            self.fail(size - 1, FailureReason.BAD_CHECKPOINT_SIGNATURE, f"size {size}: {exc}")
            return
        except CheckpointError as exc:
            self.fail(size - 1, FailureReason.BAD_CHECKPOINT_SIGNATURE, f"size {size}: {exc}")
            return
        self.pinned_signed += 1
        if self.witness_policy is not None:
            try:
                self.witness_policy(note)
            except CheckpointError as exc:
                self.quorum_problem = f"size {size}: {exc}"
            else:
                self.report.witnessed_size = size
        if checkpoint.size != size or checkpoint.origin != self.report.origin:
            self.fail(
                size - 1,
                FailureReason.CHECKPOINT_ORDER,
                f"checkpoint placed at size {size} states {checkpoint.origin} size "
                f"{checkpoint.size}",
            )
            return
        if checkpoint.root_hash != root:
            self.fail(
                size - 1,
                FailureReason.ROOT_MISMATCH,
                f"checkpoint of size {size} has a root the entries do not produce",
            )

    def checkpoint(self, record: dict[str, Any], entries_seen: int) -> None:
        size = int(record["size"])
        note = str(record["note"])
        self.report.checkpoints += 1
        if size <= self.last_checkpoint or size < entries_seen:
            self.fail(
                max(size - 1, 0),
                FailureReason.CHECKPOINT_ORDER,
                f"checkpoint of size {size} follows one of size {self.last_checkpoint} "
                f"or is placed after entry {entries_seen - 1}",
            )
            return
        self.last_checkpoint = size
        if size == self.position:  # the tree already holds exactly its entries
            self._check_checkpoint(size, note, self.tree.root())
        else:
            self.checkpoints_at[size] = note


def _regression(position: int) -> LocalProblem:
    return (
        position,
        "TIME_REGRESSION",
        f"entry {position} is dated before entry {position - 1}",
    )


def _extend(tree: merkle.CompactRange, levels: list[bytes], count: int) -> None:
    """Add the first ``count`` leaves of a chunk to ``tree`` (whose size is the chunk's start)
    from the chunk's ``merkle.subtree_levels``: a subtree at a time where it is aligned in the
    tree too (always, for chunks of a power of two), else leaf by leaf."""
    width = merkle.HASH_SIZE
    for level, index in merkle.range_subtrees(0, count):
        if tree.size % (1 << level) == 0:
            tree.append_subtree(level, levels[level][index * width : (index + 1) * width])
        else:
            leaves = levels[0]
            for leaf in range(index << level, (index + 1) << level):
                tree.append(leaves[leaf * width : (leaf + 1) * width])


def verify_export(
    handle: IO[str],
    *,
    hub_keys: Sequence[str] = (),
    trusted_checkpoint: str | Sequence[str] | None = None,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    on_header: Callable[[int], None] | None = None,
    audit: EntryAudit | None = None,
    issue_window_seconds: int | None = None,
    operator_keys: Sequence[bytes] = (),
    witness_policy: Callable[[str], object] | None = None,
) -> Report:
    """Verify an export stream read from ``handle``.

    ``hub_keys`` pins the hub's verifier keys; if empty, those declared in the export header are
    used (trust on first use: pin them for a real audit). ``trusted_checkpoint`` is a
    signed-note checkpoint the auditor already holds, or several (a receipt's, a watcher's
    state, a witness's): the export must extend each. ``workers`` is
    the process count for per-entry checks (default: every core; 0 checks in this process).
    ``progress`` is called with the number of entries checked so far in each step and
    ``on_header`` with the declared size. ``audit`` checks what the ledger does not know
    (default: ``default_audit()``, the binding of envelopes to entries and of key records to the
    operator's registry entries); ``issue_window_seconds`` the hub's replay window, which the
    default audit allows between a request's ``issued_at`` and its entry's time (default 300).
    ``operator_keys`` pins the operator's first public keys (its later ones are introduced
    by its signed rotations); if empty, those the header declares, else the hub keys (a log
    from before the operator's key was apart from the hub's). ``witness_policy`` is called
    with each checkpoint note the hub key signed and raises CheckpointError if the note lacks
    the witness quorum (``WitnessPolicy.check``); the export fails if no checkpoint meets it,
    and ``Report.witnessed_size`` is the largest that does. Returns a Report; never raises for
    a bad export.
    """
    report = Report()
    source = _Source(handle)
    events = source.events()
    try:
        keys = _header(report, events, hub_keys, operator_keys)
        if keys is None:
            return report
        pinned, operator_roots = keys
        if on_header is not None:
            on_header(report.size)
        trusted = _trusted(report, trusted_checkpoint, pinned)
        if trusted is None:
            return report
        hook = default_audit(issue_window_seconds) if audit is None else audit
        state = _Verifier(report, pinned, trusted, progress, hook)
        state.operator_keys = operator_roots or [k.public_key for k in pinned]
        state.witness_policy = witness_policy
        count = (os.cpu_count() or 1) if workers is None else workers
        _read(state, source, events, hook, count)
    finally:
        events.close()
    return report


def _header(
    report: Report,
    events: Iterator[tuple[int, Any]],
    hub_keys: Sequence[str],
    operator_keys: Sequence[bytes],
) -> tuple[list[NoteVerifier], list[bytes]] | None:
    """Read the header record: the origin and size go to ``report``; returns the hub keys to
    trust and the operator's first keys, or None if the header is bad (reported)."""
    try:
        _, line = next(events)
        header = json.loads(line)
        if header.get("format") != FORMAT or header.get("version") != VERSION:
            raise ValueError(f"not a {FORMAT} version {VERSION} stream")
        report.origin = str(header["origin"])
        report.size = int(header["size"])
        declared = [NoteVerifier.parse(k) for k in header.get("hub_keys", [])]
        pinned = [NoteVerifier.parse(k) for k in hub_keys] or declared
        operator_roots = list(operator_keys) or [
            base64.b64decode(k, validate=True) for k in header.get("operator_keys", [])
        ]
    except (StopIteration, ValueError, KeyError, TypeError, CheckpointError, binascii.Error) as exc:
        report.failures.append(Failure(None, FailureReason.MALFORMED_EXPORT, f"bad header: {exc}"))
        return None
    return pinned, operator_roots


def _read(
    state: _Verifier,
    source: _Source,
    events: Iterator[tuple[int, Any]],
    hook: EntryAudit,
    count: int,
) -> None:
    """Check the export after its header, the entries in a pool of ``count`` worker processes
    (none: in this one), the records here; problems go to ``state.report``."""
    report = state.report
    key_records: list[dict[str, Any]] = []
    chunk_start = 0
    ended: dict[str, Any] | None = None
    pool: ProcessPoolExecutor | None = None
    # each chunk's result to come, with the chunk's first line and its count of entries
    pending: deque[tuple[Future[ChunkResult], int, int]] = deque()
    keys: dict[str, list[_Key]] | None = None
    in_process = False  # this process's worker state is set up

    def take(result: Callable[[], ChunkResult], first_line: int, entries: int) -> None:
        try:
            found = result()
        except _NotText as exc:
            raise _AtLine(f"line {first_line + exc.line}: {exc}") from None
        if found.entries != entries:  # the worker read other bytes than this process
            raise _AtLine(f"line {first_line}: the export changed while it was verified")
        state.absorb(found)

    def submit(chunk: Chunk, entries: int) -> None:
        nonlocal pool, chunk_start, in_process
        assert keys is not None
        if count > 0 and pool is None and (entries == CHUNK or pending):
            pool = ProcessPoolExecutor(
                count, initializer=_init_worker, initargs=(keys, hook, source.file)
            )
        start, first_line = chunk_start, source.chunk_line
        if pool is None:
            if not in_process:
                _init_worker(keys, hook, source.fd)
                in_process = True
            take(lambda: _check_chunk(start, chunk), first_line, entries)
        else:
            pending.append((pool.submit(_check_chunk, start, chunk), first_line, entries))
            while len(pending) > 2 * count:
                future, line, expected = pending.popleft()
                take(future.result, line, expected)
        chunk_start += entries

    try:
        for kind, item in events:
            if kind == _CHUNK:
                submit(item, source.entries - chunk_start)
            elif kind == _FIRST_ENTRY:
                keys = _start(state, key_records)
            else:
                record = json.loads(item)
                if not isinstance(record, dict) or not isinstance(record.get("type"), str):
                    raise ValueError("a record is not an object with a type")
                if record["type"] == "checkpoint":
                    # Only registered here; checked when the tree reaches its size, so the
                    # workers keep streaming.
                    state.checkpoint(record, source.entries)
                elif record["type"] == "key":
                    if keys is not None:
                        raise ValueError("key records must come before entries")
                    key_records.append(record)
                elif record["type"] == "end":
                    ended = record
                    source.ended = True
                else:
                    raise ValueError(f"unknown record type {record['type']!r}")
        if keys is None:
            keys = _start(state, key_records)
        while pending:
            future, line, expected = pending.popleft()
            take(future.result, line, expected)
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        message = str(exc) if isinstance(exc, _AtLine) else f"line {source.line_number}: {exc}"
        report.failures.append(Failure(None, FailureReason.MALFORMED_EXPORT, message))
        return
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        if in_process:
            _init_worker({}, None)  # forget the export file, whose descriptor closes
    _finish(state, ended)


def _start(state: _Verifier, records: list[dict[str, Any]]) -> dict[str, list[_Key]]:
    keys = _keys_from(records)
    if state.audit is not None:
        for reason, message in state.audit.start(keys, state.operator_keys):
            state.fail(None, FailureReason[reason], message)
    return keys


def _finish(state: _Verifier, ended: dict[str, Any] | None) -> None:
    report = state.report
    n = state.position
    for size in sorted(state.checkpoints_at):
        state.fail(
            min(size, n) - 1 if n else None,
            FailureReason.TRUNCATED,
            f"checkpoint of size {size} but the export holds only {n} entries",
        )
    if ended is None:
        state.fail(
            n if n < report.size else None,
            FailureReason.TRUNCATED,
            f"no end record after {n} entries (the header declares {report.size})",
        )
    elif int(ended.get("entries", -1)) != n or n != report.size:
        state.fail(
            min(n, report.size),
            FailureReason.TRUNCATED,
            f"the export holds {n} entries; header declares {report.size}, end record "
            f"{ended.get('entries')}",
        )
    elif state.last_checkpoint != n:
        state.fail(
            state.last_checkpoint,
            FailureReason.TRUNCATED,
            f"entries after the last checkpoint (size {state.last_checkpoint}) are not covered "
            "by any checkpoint",
        )
    for held in state.trusted:
        if held.size > n:
            state.fail(
                n,
                FailureReason.TRUSTED_CHECKPOINT_MISMATCH,
                f"trusted checkpoint {held.name} covers {held.size} entries, the export only "
                f"{n}: the log was truncated or rolled back",
            )
    if state.witness_policy is not None and report.witnessed_size is None:
        state.fail(
            None,
            FailureReason.WITNESS_QUORUM,
            "no checkpoint of the export carries the witness quorum"
            + (f" (last: {state.quorum_problem})" if state.quorum_problem else ""),
        )
    if report.checkpoints and not state.pinned_signed and state.other_signers:
        pinned = ", ".join(f"{k.name}+{k.keyid.hex()}" for k in state.hub_keys)
        state.fail(
            None,
            FailureReason.NO_PINNED_CHECKPOINT,
            f"no checkpoint of the export carries the pinned hub key {pinned}; they are signed "
            f"by {', '.join(sorted(state.other_signers))}: the log was re-signed by another key "
            "(or the wrong key is pinned)",
        )
