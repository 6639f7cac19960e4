"""Server-side sessions, kept apart for staff and for people, each with its CSRF token.

A browser holds only a random 256-bit session token in an HTTP-only, Secure, SameSite=Strict
cookie; everything else (who signed in, the person's subject id, the form being filled) stays
in this process's memory and is dropped at sign-out or after ``idle_seconds`` without use. So
no subject id ever reaches a cookie, a URL or the page cache, and a restarted web process
signs everyone out rather than keeping personal data on disk.

The counter (staff, with the person they serve) and "my data" (the person alone) are two
realms with their own cookies, scoped to their own paths: a staff session never opens a
person's "my data" and the other way round. Signing in replaces the session (a token seen
before sign-in never carries a signed-in session: no fixation).
"""

from __future__ import annotations

import enum
import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any


class Realm(enum.Enum):
    """Which face a session belongs to; each has its own cookie and path."""

    COUNTER = "counter"
    MYDATA = "me"

    @property
    def cookie(self) -> str:
        """The session cookie's name."""
        return f"gx_{self.value}"

    @property
    def path(self) -> str:
        """The URL path the cookie is sent to."""
        return f"/{self.value}"


@dataclass
class Session:
    """One browser's state in one realm. Mutable: the pages move it along."""

    token: str
    realm: Realm
    csrf: str
    last_used: float
    staff: str = ""
    # The person, once authenticated: kept only here, never sent to the browser.
    person: Any = None
    data: dict[str, Any] = field(default_factory=dict)

    def check_csrf(self, offered: str) -> bool:
        """Whether ``offered`` is this session's CSRF token (constant-time)."""
        return bool(offered) and hmac.compare_digest(offered, self.csrf)


class SessionStore:
    """Sessions by token, expiring after ``idle_seconds`` without use. Thread-safe."""

    def __init__(self, idle_seconds: float, limit: int = 10_000) -> None:
        self.idle_seconds = idle_seconds
        self.limit = limit
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def get(self, realm: Realm, token: str | None) -> tuple[Session | None, bool]:
        """The live session for ``token`` in ``realm`` and whether one had expired.

        Touching a session extends it. An expired session is dropped, with everything it held.
        """
        if not token:
            return None, False
        now = time.monotonic()
        with self._lock:
            session = self._sessions.get(token)
            if session is None or session.realm is not realm:
                return None, False
            if now - session.last_used > self.idle_seconds:
                del self._sessions[token]
                return None, True
            session.last_used = now
            return session, False

    def create(self, realm: Realm) -> Session:
        """A new, empty session with a fresh token and CSRF token."""
        now = time.monotonic()
        session = Session(secrets.token_urlsafe(32), realm, secrets.token_urlsafe(32), now)
        with self._lock:
            if len(self._sessions) >= self.limit:
                self._sweep(now)
            self._sessions[session.token] = session
        return session

    def replace(self, session: Session) -> Session:
        """A new session carrying nothing of ``session`` but its realm; the old one is gone.

        Called at every sign-in and sign-out, so a token that existed before is never the
        token of a signed-in session.
        """
        self.drop(session)
        return self.create(session.realm)

    def drop(self, session: Session) -> None:
        """Forget ``session`` and what it held."""
        with self._lock:
            self._sessions.pop(session.token, None)

    def _sweep(self, now: float) -> None:
        expired = [t for t, s in self._sessions.items() if now - s.last_used > self.idle_seconds]
        for token in expired:
            del self._sessions[token]
        if len(self._sessions) >= self.limit:  # still full: the oldest go first
            oldest = sorted(self._sessions.values(), key=lambda s: s.last_used)
            for session in oldest[: len(oldest) // 10 + 1]:
                del self._sessions[session.token]
