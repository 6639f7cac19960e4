"""Staff accounts of the counter: names and scrypt password hashes, from a TOML file.

The file (``exchange web serve --staff-file``) holds one table per account::

    [staff.clerk-1]
    name = "窗口一 李晓"
    password = "scrypt$16384$8$1$<salt hex>$<hash hex>"

``exchange web add-staff`` writes such an entry. Passwords are checked in constant time, and an
unknown account costs the same scrypt work as a known one, so timing does not tell which
accounts exist.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
_DUMMY = "scrypt$16384$8$1$" + "00" * 16 + "$" + "00" * 32


class StaffFileError(ValueError):
    """The staff file is unreadable or malformed; the message says where."""


def hash_password(password: str) -> str:
    """A self-describing scrypt hash of ``password`` with a fresh salt."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32
    )
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored`` (from ``hash_password``). False if malformed."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        computed = hashlib.scrypt(
            password.encode(),
            salt=bytes.fromhex(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(digest) // 2,
        )
    except ValueError:
        return False
    return hmac.compare_digest(computed.hex(), digest)


@dataclass(frozen=True, slots=True)
class StaffAccount:
    """One counter clerk."""

    account: str
    name: str
    password_hash: str


@dataclass(frozen=True, slots=True)
class StaffAccounts:
    """The counter's accounts by account name."""

    accounts: Mapping[str, StaffAccount]

    def authenticate(self, account: str, password: str) -> StaffAccount | None:
        """The account if ``password`` is right, else None (same work either way)."""
        found = self.accounts.get(account)
        ok = verify_password(password, found.password_hash if found else _DUMMY)
        return found if ok and found is not None else None

    @classmethod
    def load(cls, path: Path) -> StaffAccounts:
        """Read a staff file. Raises StaffFileError."""
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise StaffFileError(f"cannot read staff file {path}: {exc}") from exc
        accounts: dict[str, StaffAccount] = {}
        for account, entry in (data.get("staff") or {}).items():
            if not isinstance(entry, dict) or not isinstance(entry.get("password"), str):
                raise StaffFileError(f"{path}: [staff.{account}] needs a password hash")
            accounts[account] = StaffAccount(
                account, str(entry.get("name") or account), entry["password"]
            )
        return cls(accounts)


def add_account(path: Path, account: str, name: str, password: str) -> None:
    """Add (or replace) ``account`` in the staff file at ``path``, creating it owner-only."""
    existing = StaffAccounts.load(path).accounts if path.exists() else {}
    merged = dict(existing)
    merged[account] = StaffAccount(account, name, hash_password(password))
    lines = []
    for entry in merged.values():
        lines += [
            f"[staff.{_toml_key(entry.account)}]",
            f"name = {_toml_string(entry.name)}",
            f"password = {_toml_string(entry.password_hash)}",
            "",
        ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _toml_key(value: str) -> str:
    plain = value.replace("-", "").replace("_", "").isalnum() and value.isascii()
    return value if plain else _toml_string(value)
