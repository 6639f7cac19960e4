"""My data (我的数据): the person signs in through the identity provider, sees every access
to their material with filters, objects to a value and follows the objection, and manages
consents where the exchange offers them.

Filters travel in the query string (who, material, outcome, date); the subject never does: it
lives in the server-side session only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import date, datetime

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from adapters.client import Access, Refused
from adapters.errors import VerificationError
from adapters.web.identity import Assurance, NotAuthenticated
from adapters.web.pages import Pages
from adapters.web.sessions import Realm, Session
from exchange.clock import from_timestamp
from exchange.v1 import catalog_pb2, exchange_pb2

OUTCOMES = ("OK", "REFUSED", "FAILED")


@dataclass(frozen=True, slots=True)
class HistoryFilter:
    """What the person narrowed the history to; empty strings mean "all"."""

    who: str = ""
    material: str = ""
    outcome: str = ""
    since: str = ""

    @classmethod
    def from_query(cls, query: dict[str, str]) -> HistoryFilter:
        """The filter from a query string; unknown or malformed values are ignored."""
        since = query.get("since", "")
        try:
            date.fromisoformat(since)
        except ValueError:
            since = ""
        outcome = query.get("outcome", "")
        return cls(
            who=query.get("who", "")[:128],
            material=query.get("material", "")[:128],
            outcome=outcome if outcome in OUTCOMES else "",
            since=since,
        )

    def admits(self, access: Access, since_us: int | None) -> bool:
        """Whether ``access`` passes the filter."""
        return (
            (not self.who or access.actor == self.who)
            and (not self.material or access.material_type == self.material)
            and (not self.outcome or access.outcome == self.outcome)
            and (since_us is None or access.time_us >= since_us)
        )

    @property
    def active(self) -> bool:
        """Whether any filter is set."""
        return bool(self.who or self.material or self.outcome or self.since)


@dataclass(frozen=True, slots=True)
class ObjectionView:
    """One of the person's objections as shown."""

    id: str
    material_name: str
    field: str
    state: str
    filed: str
    deadline: str
    resolution: str
    overdue: bool


class MyData:
    """The pages of "my data"."""

    def __init__(self, pages: Pages) -> None:
        self.pages = pages

    def routes(self) -> list[Route]:
        """The routes, under /me."""
        return [
            Route("/me", self.home, methods=["GET"]),
            Route("/me/sign-in", self.sign_in, methods=["POST"]),
            Route("/me/sign-out", self.sign_out, methods=["POST"]),
            Route("/me/history", self.history, methods=["GET"]),
            Route("/me/objections", self.objections, methods=["GET"]),
            Route("/me/objections", self.file_objection, methods=["POST"]),
            Route("/me/consents", self.consents, methods=["GET"]),
        ]

    def _person(self, request: Request) -> Session | None:
        session = self.pages.session(request, Realm.MYDATA)
        if session.person is None:
            return None
        if session.person.expired:
            self.pages.sessions.drop(session)
            return None
        return session

    async def home(self, request: Request) -> Response:
        if self._person(request) is not None:
            return self.pages.redirect("/me/history")
        session = self.pages.session(request, Realm.MYDATA)
        return self.pages.render(request, "me_sign_in.html", session, error="")

    async def sign_in(self, request: Request) -> Response:
        session = self.pages.session(request, Realm.MYDATA)
        form = await self.pages.form(request, session)
        try:
            person = await self.pages.identity_provider.authenticate(
                str(form.get("subject_id", "")),
                Assurance.PASSWORD_SMS,
                self.pages.settings.department_id,
            )
        except NotAuthenticated as failed:
            return self.pages.render(
                request, "me_sign_in.html", session, status_code=400, error=failed.key
            )
        session = self.pages.sessions.replace(session)
        session.person = person
        return self.pages.redirect("/me/history", session)

    async def sign_out(self, request: Request) -> Response:
        session = self.pages.session(request, Realm.MYDATA)
        await self.pages.form(request, session)
        self.pages.sessions.drop(session)
        return self.pages.forget(self.pages.redirect("/me"), Realm.MYDATA)

    # ------------------------------------------------------------------------ history

    async def history(self, request: Request) -> Response:
        session = self._person(request)
        if session is None:
            return self.pages.redirect("/me")
        chosen = HistoryFilter.from_query(dict(request.query_params))
        try:
            accesses = await self.pages.client.access_history(session.person.subject_id)
            catalog = await self.pages.catalog()
            names = await self.pages.holder_names({a.actor for a in accesses if a.actor})
        except (Refused, VerificationError) as error:
            return self.pages.refusal(request, session, error, "/me/history")
        since_us = None
        if chosen.since:
            start = datetime.combine(date.fromisoformat(chosen.since), datetime.min.time())
            since_us = int(start.replace(tzinfo=self.pages.zone).timestamp() * 1e6)
        shown = [a for a in reversed(accesses) if chosen.admits(a, since_us)]
        type_names = {t.id: t.name for t in catalog.material_types}
        purposes = {p.id: p.name for p in catalog.purposes}
        return self.pages.render(
            request,
            "history.html",
            session,
            accesses=shown,
            total=len(accesses),
            chosen=chosen,
            actors=sorted({a.actor for a in accesses if a.actor}),
            materials=sorted({a.material_type for a in accesses if a.material_type}),
            outcomes=OUTCOMES,
            names=names,
            type_names=type_names,
            purposes=purposes,
            when=self.pages.when,
        )

    # ------------------------------------------------------------------------ objections

    async def objections(self, request: Request) -> Response:
        session = self._person(request)
        if session is None:
            return self.pages.redirect("/me")
        return await self._objections_page(request, session, error="", status_code=200)

    async def _objections_page(
        self, request: Request, session: Session, error: str, status_code: int
    ) -> Response:
        try:
            catalog = await self.pages.catalog()
        except Refused as refused:
            return self.pages.refusal(request, session, refused, "/me/objections")
        choices = [
            (t, f)
            for t in catalog.material_types
            if t.sharing_class != catalog_pb2.NOT_SHARED
            for f in t.fields
        ]
        type_names = {t.id: t.name for t in catalog.material_types}
        filed: list[tuple[exchange_pb2.Objection, str]] = session.data.get("objections", [])
        now_us = int(time.time() * 1e6)
        views = [
            ObjectionView(
                id=o.id,
                material_name=type_names.get(o.material_type, o.material_type),
                field=field,
                state=exchange_pb2.ObjectionState.Name(o.state),
                filed=self.pages.when(from_timestamp(o.filed_at)),
                deadline=self.pages.when(from_timestamp(o.deadline)),
                resolution=o.resolution,
                overdue=o.state == exchange_pb2.OPEN and from_timestamp(o.deadline) < now_us,
            )
            for o, field in filed
        ]
        return self.pages.render(
            request,
            "objections.html",
            session,
            status_code=status_code,
            choices=choices,
            objections=views,
            error=error,
            filed_id=request.query_params.get("filed", "")[:64],
        )

    async def file_objection(self, request: Request) -> Response:
        session = self._person(request)
        if session is None:
            return self.pages.redirect("/me")
        form = await self.pages.form(request, session)
        material_type, _, field = str(form.get("field", "")).partition(":")
        value = str(form.get("value", "")).strip()
        reason = str(form.get("reason", "")).strip()
        if not reason or not material_type or not field:
            return await self._objections_page(
                request, session, error="objection.no_reason", status_code=400
            )
        try:
            answer = await self.pages.client.call(
                "/exchange.v1.Exchange/FileObjection",
                exchange_pb2.FileObjectionRequest(
                    material_type=material_type,
                    subject_id=session.person.subject_id,
                    reason=reason,
                    proposed_fields={field: value} if value else {},
                ),
                exchange_pb2.ObjectionResponse,
            )
        except (Refused, VerificationError) as error:
            return self.pages.refusal(request, session, error, "/me/objections")
        session.data.setdefault("objections", []).append((answer.objection, field))
        return self.pages.redirect(f"/me/objections?filed={answer.objection.id}", session)

    # ------------------------------------------------------------------------ consents

    async def consents(self, request: Request) -> Response:
        session = self._person(request)
        if session is None:
            return self.pages.redirect("/me")
        return self.pages.render(request, "consents.html", session)
