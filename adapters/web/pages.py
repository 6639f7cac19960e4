"""What every page of the web app shares: settings, the hub client, sessions, rendering,
CSRF checks, the hub's catalog and refusals turned into plain words.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import grpc
import jinja2
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from adapters.client import HubClient, Refused
from adapters.errors import VerificationError
from adapters.web.i18n import Catalog, Language
from adapters.web.identity import PersonAuthenticator
from adapters.web.sessions import Realm, Session, SessionStore
from adapters.web.staff import StaffAccounts
from exchange.v1 import catalog_pb2

HERE = Path(__file__).parent
LANG_COOKIE = "gx_lang"
CATALOG_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class WebSettings:
    """How the web app runs. ``secure_cookies`` is off only for tests over plain HTTP that a
    browser would not treat as a secure context; loopback HTTP counts as secure in browsers."""

    department_id: str
    staff: StaffAccounts
    idle_seconds: float = 900.0
    secure_cookies: bool = True
    utc_offset_minutes: int = 480


class CsrfRefused(Exception):
    """A form came without this session's CSRF token."""


class SessionExpired(Exception):
    """The realm's session (or the person's assertion) is gone: sign in again."""

    def __init__(self, realm: Realm) -> None:
        super().__init__(realm.value)
        self.realm = realm


class Pages:
    """The app's shared parts, one per process."""

    def __init__(
        self,
        settings: WebSettings,
        client: HubClient,
        identity_provider: PersonAuthenticator,
    ) -> None:
        self.settings = settings
        self.client = client
        self.identity_provider = identity_provider
        self.sessions = SessionStore(settings.idle_seconds)
        self.zone = timezone(timedelta(minutes=settings.utc_offset_minutes))
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            enable_async=False,
            auto_reload=False,
        )
        # Compiled now, not by the first page that uses each (some 10-30 ms apiece, during
        # which that page would hold up every other).
        for name in self.templates.list_templates(extensions=["html"]):
            self.templates.get_template(name)
        self._catalog: tuple[float, catalog_pb2.ListCatalogResponse] | None = None
        self._catalog_lock = asyncio.Lock()

    # ------------------------------------------------------------------------ sessions

    def session(self, request: Request, realm: Realm) -> Session:
        """The browser's session in ``realm``, a new anonymous one if it has none.

        Raises SessionExpired if it had one that timed out (so the page can say so).
        """
        found, expired = self.sessions.get(realm, request.cookies.get(realm.cookie))
        if expired:
            raise SessionExpired(realm)
        return found if found is not None else self.sessions.create(realm)

    async def form(self, request: Request, session: Session) -> FormData:
        """The posted form, after checking its CSRF token. Raises CsrfRefused."""
        form = await request.form()
        token = form.get("csrf")
        if not isinstance(token, str) or not session.check_csrf(token):
            raise CsrfRefused()
        return form

    def keep(self, response: Response, session: Session) -> Response:
        """Set ``session``'s cookie on ``response`` (HTTP-only, Secure, SameSite=Strict)."""
        response.set_cookie(
            session.realm.cookie,
            session.token,
            path=session.realm.path,
            httponly=True,
            secure=self.settings.secure_cookies,
            samesite="strict",
        )
        return response

    def forget(self, response: Response, realm: Realm) -> Response:
        """Clear ``realm``'s cookie in the browser."""
        response.delete_cookie(
            realm.cookie,
            path=realm.path,
            httponly=True,
            secure=self.settings.secure_cookies,
            samesite="strict",
        )
        return response

    def redirect(self, url: str, session: Session | None = None) -> Response:
        """A 303 redirect to a path of this app (after a POST, so a reload does not repost)."""
        response = RedirectResponse(url, status_code=303)
        return self.keep(response, session) if session is not None else response

    # ------------------------------------------------------------------------ rendering

    def language(self, request: Request) -> Language:
        """The page language: the visitor's choice, Chinese by default."""
        return Language.parse(request.cookies.get(LANG_COOKIE))

    def render(
        self,
        request: Request,
        template: str,
        session: Session | None,
        status_code: int = 200,
        **values: Any,
    ) -> Response:
        """Render ``template`` in the visitor's language; keep ``session``'s cookie."""
        language = self.language(request)
        words = Catalog(language)
        html = self.templates.get_template(template).render(
            t=words.text,
            maybe=words.maybe,
            lang=language,
            path=request.url.path,
            csrf=session.csrf if session is not None else "",
            session=session,
            **values,
        )
        response = HTMLResponse(html, status_code=status_code)
        return self.keep(response, session) if session is not None else response

    def refusal(
        self, request: Request, session: Session | None, error: Exception, back: str
    ) -> Response:
        """A page explaining a refusal or failure in plain words, with what to do next."""
        words = Catalog(self.language(request))
        if isinstance(error, Refused):
            unavailable = error.code in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED,
            )
            explanation = words.explain(error.reason, unavailable, error.ledger_sequence)
            status = {
                grpc.StatusCode.PERMISSION_DENIED: 403,
                grpc.StatusCode.NOT_FOUND: 404,
                grpc.StatusCode.UNAVAILABLE: 503,
                grpc.StatusCode.DEADLINE_EXCEEDED: 503,
                grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
            }.get(error.code, 400)
        else:  # VerificationError: material that did not verify is never shown
            explanation = words.explain("VERIFICATION_FAILED", False, None)
            status = 502
        return self.render(
            request, "error.html", session, status_code=status, explanation=explanation, back=back
        )

    def when(self, time_us: int) -> str:
        """A ledger time in the app's zone, to the minute."""
        moment = datetime.fromtimestamp(time_us / 1e6, UTC).astimezone(self.zone)
        return moment.strftime("%Y-%m-%d %H:%M")

    # ------------------------------------------------------------------------ the hub

    async def catalog(self) -> catalog_pb2.ListCatalogResponse:
        """The hub's catalog (material types, purposes, forms), cached for half a minute.

        Raises Refused.
        """
        async with self._catalog_lock:
            if self._catalog is None or time.monotonic() - self._catalog[0] > CATALOG_SECONDS:
                answer = await self.client.list_catalog()
                self._catalog = (time.monotonic(), answer)
            return self._catalog[1]

    async def holder_names(self, holders: set[str]) -> Mapping[str, str]:
        """Department id -> display name, the id itself for one that cannot be read."""

        async def name(holder: str) -> str:
            try:
                return (await self.client.department(holder)).name or holder
            except (Refused, VerificationError):
                return holder

        names = await asyncio.gather(*(name(h) for h in sorted(holders)))
        return dict(zip(sorted(holders), names, strict=True))
