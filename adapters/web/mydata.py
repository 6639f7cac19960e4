"""My data (我的数据): the person signs in through the identity provider, sees every access
to their material with filters, objects to a value and follows the objection, and manages
consents where the exchange offers them.

Filters travel in the query string (who, material, outcome, date); the subject never does: it
lives in the server-side session only.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from adapters.client import Access, Consent, FiledObjection, Refused
from adapters.errors import VerificationError
from adapters.web.identity import Assurance, NotAuthenticated, Person
from adapters.web.pages import Pages
from adapters.web.sessions import Realm, Session
from exchange.v1 import catalog_pb2, common_pb2

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
            and (not self.material or self.material in types_of(access))
            and (not self.outcome or access.outcome == self.outcome)
            and (since_us is None or access.time_us >= since_us)
        )

    @property
    def active(self) -> bool:
        """Whether any filter is set."""
        return bool(self.who or self.material or self.outcome or self.since)


@dataclass(frozen=True, slots=True)
class ObjectionView:
    """One objection to the person's material as shown: filed here (with its id and
    deadline) or found in their history (filed at a counter, or by a department)."""

    id: str
    material_type: str
    filed_by: str
    filed_us: int
    deadline_us: int | None
    answered_us: int | None

    def state(self, now_us: int) -> str:
        """OPEN, ANSWERED or OVERDUE (open past its deadline)."""
        if self.answered_us is not None:
            return "ANSWERED"
        if self.deadline_us is not None and self.deadline_us < now_us:
            return "OVERDUE"
        return "OPEN"


def objection_views(
    accesses: tuple[Access, ...], filed_here: list[FiledObjection], filed_us: dict[str, int]
) -> list[ObjectionView]:
    """Every objection to the person's material, newest first.

    The history holds each filing and each answer (by material type); an objection filed in
    this session also has its id and deadline. An answer is matched to the earliest open
    filing of its material type before it.
    """
    filings = [a for a in accesses if a.kind == "OBJECTION_FILING" and a.outcome == "OK"]
    answers = [a for a in accesses if a.kind == "OBJECTION_RESOLUTION" and a.outcome == "OK"]
    unmatched = list(filed_here)
    views: list[ObjectionView] = []
    for filing in filings:
        mine = next(
            (
                o
                for o in unmatched
                if o.material_type == _type(filing)
                and abs(filed_us[o.id] - filing.time_us) < 60_000_000
            ),
            None,
        )
        if mine is not None:
            unmatched.remove(mine)
        views.append(
            ObjectionView(
                id=mine.id if mine else "",
                material_type=_type(filing),
                filed_by=filing.actor,
                filed_us=filing.time_us,
                deadline_us=mine.deadline_us if mine else None,
                answered_us=None,
            )
        )
    for answer in answers:
        for index, view in enumerate(views):
            if (
                view.answered_us is None
                and view.material_type == _type(answer)
                and view.filed_us <= answer.time_us
            ):
                views[index] = dataclasses.replace(view, answered_us=answer.time_us)
                break
    for objection in unmatched:  # filed here, not yet in the history read
        views.append(
            ObjectionView(
                objection.id,
                objection.material_type,
                "",
                filed_us[objection.id],
                objection.deadline_us,
                None,
            )
        )
    return sorted(views, key=lambda v: v.filed_us, reverse=True)


def _type(access: Access) -> str:
    return access.material_type or (access.material_types[0] if access.material_types else "")


def types_of(access: Access) -> tuple[str, ...]:
    """Every material type an access touched (a prefill reads several)."""
    if access.material_types:
        return access.material_types
    return (access.material_type,) if access.material_type else ()


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
            Route("/me/consents", self.give_consent, methods=["POST"]),
            Route("/me/consents/revoke", self.revoke_consent, methods=["POST"]),
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
            accesses = await self.pages.client.access_history(
                session.person.subject_id, assertion=session.person.assertion
            )
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
            materials=sorted({t for a in accesses for t in types_of(a)}),
            types_of=types_of,
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
        person: Person = session.person
        try:
            catalog = await self.pages.catalog()
            accesses = await self.pages.client.access_history(
                person.subject_id, assertion=person.assertion
            )
            names = await self.pages.holder_names({a.actor for a in accesses if a.actor})
        except (Refused, VerificationError) as refused:
            return self.pages.refusal(request, session, refused, "/me/objections")
        choices = [
            (t, f)
            for t in catalog.material_types
            if t.sharing_class != catalog_pb2.NOT_SHARED
            for f in t.fields
        ]
        views = objection_views(
            accesses, session.data.get("objections", []), session.data.get("filed_us", {})
        )
        return self.pages.render(
            request,
            "objections.html",
            session,
            status_code=status_code,
            choices=choices,
            objections=views,
            now_us=int(time.time() * 1e6),
            type_names={t.id: t.name for t in catalog.material_types},
            names=names,
            when=self.pages.when,
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
        person: Person = session.person
        try:
            filed = await self.pages.client.file_objection(
                material_type,
                person.subject_id,
                reason,
                proposed_fields={field: value} if value else None,
                assertion=person.assertion,
            )
        except (Refused, VerificationError) as error:
            return self.pages.refusal(request, session, error, "/me/objections")
        session.data.setdefault("objections", []).append(filed)
        session.data.setdefault("filed_us", {})[filed.id] = int(time.time() * 1e6)
        return self.pages.redirect(f"/me/objections?filed={filed.id}", session)

    # ------------------------------------------------------------------------ consents

    async def consents(self, request: Request) -> Response:
        session = self._person(request)
        if session is None:
            return self.pages.redirect("/me")
        return await self._consents_page(request, session, error="", status_code=200)

    async def _consents_page(
        self, request: Request, session: Session, error: str, status_code: int
    ) -> Response:
        person: Person = session.person
        try:
            catalog = await self.pages.catalog()
            consents = await self.pages.client.list_consents(
                person.subject_id, assertion=person.assertion
            )
            departments = await self.pages.client.list_departments()
        except (Refused, VerificationError) as refused:
            return self.pages.refusal(request, session, refused, "/me/consents")
        consumers = [d for d in departments.departments if common_pb2.CONSUMER in d.roles]
        names = {d.id: d.name or d.id for d in departments.departments}
        now_us = int(time.time() * 1e6)
        return self.pages.render(
            request,
            "consents.html",
            session,
            status_code=status_code,
            consents=sorted(consents, key=lambda c: c.given_us, reverse=True),
            state=lambda c: consent_state(c, now_us),
            consumers=consumers,
            names=names,
            types=[t for t in catalog.material_types if t.sharing_class != catalog_pb2.NOT_SHARED],
            type_names={t.id: t.name for t in catalog.material_types},
            purposes=[p for p in catalog.purposes if p.basis == catalog_pb2.PERSON_CONSENT],
            purpose_names={p.id: p.name for p in catalog.purposes},
            default_until=(date.today() + timedelta(days=30)).isoformat(),
            when=self.pages.when,
            error=error,
            done=request.query_params.get("done", "")[:16],
        )

    async def give_consent(self, request: Request) -> Response:
        session = self._person(request)
        if session is None:
            return self.pages.redirect("/me")
        form = await self.pages.form(request, session)
        chosen = [str(v) for v in form.getlist("fields")]
        types = {v.partition(":")[0] for v in chosen}
        try:
            until = date.fromisoformat(str(form.get("valid_until", "")))
            max_uses = int(str(form.get("max_uses", "0")) or 0)
            data_life = int(str(form.get("data_life_days", "0")) or 0)
        except ValueError:
            until, max_uses, data_life = None, -1, -1
        consumer = str(form.get("consumer", ""))
        purpose = str(form.get("purpose", ""))
        if (
            len(types) != 1
            or until is None
            or until <= date.today()
            or max_uses < 0
            or data_life < 0
            or not consumer
            or not purpose
        ):
            return await self._consents_page(
                request, session, error="consent.incomplete", status_code=400
            )
        end = datetime.combine(until, datetime.max.time()).replace(tzinfo=self.pages.zone)
        person: Person = session.person
        try:
            await self.pages.client.give_consent(
                person.subject_id,
                assertion=person.assertion,
                consumer=consumer,
                material_type=types.pop(),
                fields=[v.partition(":")[2] for v in chosen],
                purpose=purpose,
                valid_until_us=int(end.timestamp() * 1e6),
                max_uses=max_uses,
                data_life_days=data_life,
            )
        except (Refused, VerificationError) as error:
            return self.pages.refusal(request, session, error, "/me/consents")
        return self.pages.redirect("/me/consents?done=given", session)

    async def revoke_consent(self, request: Request) -> Response:
        session = self._person(request)
        if session is None:
            return self.pages.redirect("/me")
        form = await self.pages.form(request, session)
        person: Person = session.person
        try:
            await self.pages.client.revoke_consent(
                person.subject_id, str(form.get("consent_id", ""))[:64], assertion=person.assertion
            )
        except (Refused, VerificationError) as error:
            return self.pages.refusal(request, session, error, "/me/consents")
        return self.pages.redirect("/me/consents?done=revoked", session)


def consent_state(consent: Consent, now_us: int) -> str:
    """IN_FORCE, REVOKED, EXPIRED or USED_UP."""
    if consent.revoked_us is not None:
        return "REVOKED"
    if consent.valid_until_us <= now_us:
        return "EXPIRED"
    if consent.max_uses and consent.uses >= consent.max_uses:
        return "USED_UP"
    return "IN_FORCE"
