"""Repository of departments and their signing keys."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, Row, insert, select, update

from exchange.membership import MemberState, Role
from exchange.store.tables import department_keys, departments


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One signing key of a department and its validity (microseconds since the epoch)."""

    keyid: str
    department_id: str
    public_key: bytes
    valid_from_us: int
    valid_until_us: int | None = None
    revoked_us: int | None = None

    def usable_at(self, us: int) -> bool:
        """Whether the key may sign at time ``us``: within validity and not yet revoked."""
        if us < self.valid_from_us:
            return False
        if self.valid_until_us is not None and us >= self.valid_until_us:
            return False
        return self.revoked_us is None or us < self.revoked_us


@dataclass(frozen=True, slots=True)
class DepartmentRecord:
    """A registered department as stored."""

    id: str
    name: str
    roles: frozenset[Role]
    provider_endpoint: str
    certificate_sha256: str
    state: MemberState
    owner: str
    registered_us: int
    keys: tuple[KeyRecord, ...] = ()

    def key(self, keyid: str) -> KeyRecord | None:
        """The department's key with this id, current or past."""
        return next((k for k in self.keys if k.keyid == keyid), None)


def _key(row: Row[tuple[object, ...]]) -> KeyRecord:
    m = row._mapping
    return KeyRecord(
        keyid=m["keyid"],
        department_id=m["department_id"],
        public_key=bytes(m["public_key"]),
        valid_from_us=m["valid_from_us"],
        valid_until_us=m["valid_until_us"],
        revoked_us=m["revoked_us"],
    )


class Registry:
    """Reads and writes the registry tables. Every method is one transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def get(self, department_id: str, conn: Connection | None = None) -> DepartmentRecord | None:
        """The department with this id, with all its keys, or None; read through ``conn`` if
        given (inside a change's transaction), else on a connection of its own."""
        if conn is None:
            with self.engine.connect() as own:
                return self.get(department_id, own)
        row = conn.execute(select(departments).where(departments.c.id == department_id)).first()
        if row is None:
            return None
        keys = conn.execute(
            select(department_keys)
            .where(department_keys.c.department_id == department_id)
            .order_by(department_keys.c.valid_from_us)
        ).all()
        return self._department(row, [_key(k) for k in keys])

    def all(self) -> list[DepartmentRecord]:
        """Every department, ordered by id, with its keys."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(departments).order_by(departments.c.id)).all()
            keys = conn.execute(
                select(department_keys).order_by(department_keys.c.valid_from_us)
            ).all()
        by_department: dict[str, list[KeyRecord]] = {}
        for k in keys:
            record = _key(k)
            by_department.setdefault(record.department_id, []).append(record)
        return [self._department(r, by_department.get(r._mapping["id"], [])) for r in rows]

    def key_history(self) -> list[KeyRecord]:
        """Every key ever registered, oldest first: the auditor's key history."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(department_keys).order_by(
                    department_keys.c.valid_from_us, department_keys.c.keyid
                )
            ).all()
        return [_key(r) for r in rows]

    # The writes below run in ``conn``'s transaction: the change's ledger entry's (the flows pass
    # them as the entry's effect), so a change is never stored without its entry.

    def add(self, conn: Connection, department: DepartmentRecord, key: KeyRecord) -> None:
        """Insert a new department and its first key.

        Raises sqlalchemy.exc.IntegrityError if the id or the key is taken.
        """
        conn.execute(
            insert(departments).values(
                id=department.id,
                name=department.name,
                roles=",".join(sorted(department.roles)),
                provider_endpoint=department.provider_endpoint,
                certificate_sha256=department.certificate_sha256,
                state=department.state,
                owner=department.owner,
                registered_us=department.registered_us,
            )
        )
        self._insert_key(conn, key)

    def rotate(
        self,
        conn: Connection,
        department_id: str,
        new_key: KeyRecord,
        old_valid_until_us: int,
        certificate_sha256: str | None,
    ) -> None:
        """Add ``new_key`` and end every current key of the department at ``old_valid_until_us``.

        Raises sqlalchemy.exc.IntegrityError if the new key is already registered.
        """
        conn.execute(
            update(department_keys)
            .where(
                department_keys.c.department_id == department_id,
                department_keys.c.valid_until_us.is_(None),
            )
            .values(valid_until_us=old_valid_until_us)
        )
        self._insert_key(conn, new_key)
        if certificate_sha256 is not None:
            conn.execute(
                update(departments)
                .where(departments.c.id == department_id)
                .values(certificate_sha256=certificate_sha256)
            )

    def revoke(self, conn: Connection, keyid: str, revoked_us: int) -> None:
        """Mark a key revoked from ``revoked_us`` on (keeps an earlier revocation time)."""
        conn.execute(
            update(department_keys)
            .where(department_keys.c.keyid == keyid, department_keys.c.revoked_us.is_(None))
            .values(revoked_us=revoked_us)
        )

    def set_state(self, conn: Connection, department_id: str, state: MemberState) -> None:
        """Change a department's life-cycle state."""
        conn.execute(
            update(departments).where(departments.c.id == department_id).values(state=state)
        )

    def update(self, conn: Connection, department: DepartmentRecord) -> None:
        """Store ``department``'s name, roles, provider endpoint, certificate fingerprint and
        owner over the registered department of its id (its keys and state stay)."""
        conn.execute(
            update(departments)
            .where(departments.c.id == department.id)
            .values(
                name=department.name,
                roles=",".join(sorted(department.roles)),
                provider_endpoint=department.provider_endpoint,
                certificate_sha256=department.certificate_sha256,
                owner=department.owner,
            )
        )

    @staticmethod
    def _insert_key(conn: Connection, key: KeyRecord) -> None:
        conn.execute(
            insert(department_keys).values(
                keyid=key.keyid,
                department_id=key.department_id,
                public_key=key.public_key,
                valid_from_us=key.valid_from_us,
                valid_until_us=key.valid_until_us,
                revoked_us=key.revoked_us,
            )
        )

    @staticmethod
    def _department(row: Row[tuple[object, ...]], keys: Iterable[KeyRecord]) -> DepartmentRecord:
        m = row._mapping
        roles = frozenset(Role(r) for r in str(m["roles"]).split(",") if r)
        return DepartmentRecord(
            id=m["id"],
            name=m["name"],
            roles=roles,
            provider_endpoint=m["provider_endpoint"],
            certificate_sha256=m["certificate_sha256"],
            state=MemberState(m["state"]),
            owner=m["owner"],
            registered_us=m["registered_us"],
            keys=tuple(keys),
        )
