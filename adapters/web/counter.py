"""The counter (基层窗口): a clerk signs in, chooses a registered form, the person
authenticates, the form comes back prefilled with each value's source, only what is missing is
asked, the person previews and confirms, and the new values are submitted once.

"Once" holds across double clicks, reloads and lost answers: each material type's submission
gets its request id when the preview is made, and a repeated confirmation sends the same id,
which the hub answers with its first answer instead of acting twice.
"""

from __future__ import annotations

import asyncio
import enum
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from adapters.client import Prefill, Refused, SubmitResult
from adapters.errors import VerificationError
from adapters.web.identity import Assurance, NotAuthenticated, Person
from adapters.web.pages import Pages
from adapters.web.sessions import Realm, Session
from exchange.v1 import catalog_pb2, envelope_pb2

INPUT_TYPES = {catalog_pb2.DATE: "date", catalog_pb2.INTEGER: "number"}


class FieldState(enum.Enum):
    """What the prefill made of one form field."""

    FILLED = "filled"
    MISSING = "missing"
    WITHHELD = "withheld"
    UNAVAILABLE = "unavailable"
    PERSON_ONLY = "person_only"

    @property
    def asked(self) -> bool:
        """Whether the person is asked for this field."""
        return self in (FieldState.MISSING, FieldState.WITHHELD, FieldState.PERSON_ONLY)


@dataclass(frozen=True, slots=True)
class FieldView:
    """One field of the counter's form as shown: its value and source, or what to ask."""

    name: str
    label: str
    material_type: str
    material_field: str
    state: FieldState
    value: str = ""
    holder: str = ""
    holder_name: str = ""
    version: int = 0
    source_class: str = ""
    input_type: str = "text"
    required: bool = False


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one material type's submission did, for the result page."""

    material_type: str
    outcome: str
    holder_name: str
    version: int
    sequence: int


def field_views(
    form: catalog_pb2.Form,
    prefill: Prefill,
    types: Mapping[str, catalog_pb2.MaterialType],
    names: Mapping[str, str],
) -> list[FieldView]:
    """The form's fields in form order, each with what the prefill found for it."""
    filled = {f.name: f for f in prefill.fields}
    withheld = set(prefill.withheld)
    unavailable = set(prefill.unavailable)
    views = []
    for field in form.fields:
        spec = (
            next(
                (s for s in types[field.material_type].fields if s.name == field.material_field),
                None,
            )
            if field.material_type in types
            else None
        )
        common = {
            "name": field.name,
            "label": field.label or field.name,
            "material_type": field.material_type,
            "material_field": field.material_field,
            "input_type": INPUT_TYPES.get(spec.type, "text") if spec is not None else "text",
            "required": bool(spec.required) if spec is not None else False,
        }
        value = filled.get(field.name)
        if value is not None:
            views.append(
                FieldView(
                    state=FieldState.FILLED,
                    value=value.value,
                    holder=value.holder,
                    holder_name=names.get(value.holder, value.holder),
                    version=value.version,
                    source_class=value.source_class.lower(),
                    **common,  # type: ignore[arg-type]
                )
            )
            continue
        if field.name in unavailable:
            state = FieldState.UNAVAILABLE
        elif field.name in withheld:
            state = FieldState.WITHHELD
        elif not field.material_type:
            state = FieldState.PERSON_ONLY
        else:
            state = FieldState.MISSING
        views.append(FieldView(state=state, **common))  # type: ignore[arg-type]
    return views


def submissions(
    views: Sequence[FieldView], entered: Mapping[str, str]
) -> dict[str, dict[str, str]]:
    """Material type -> the fields to submit to it: the values given now, with the values on
    file from the same material (so the holder gets the material whole). Types given nothing
    new are not submitted."""
    groups: dict[str, dict[str, str]] = {}
    for view in views:
        value = entered.get(view.name, "")
        if view.material_type and view.state.asked and value:
            groups.setdefault(view.material_type, {})[view.material_field] = value
    for view in views:
        if view.state is FieldState.FILLED and view.material_type in groups:
            groups[view.material_type].setdefault(view.material_field, view.value)
    return groups


class Counter:
    """The counter's pages."""

    def __init__(self, pages: Pages) -> None:
        self.pages = pages

    def routes(self) -> list[Route]:
        """The counter's routes, under /counter."""
        return [
            Route("/counter", self.home, methods=["GET"]),
            Route("/counter/sign-in", self.sign_in, methods=["POST"]),
            Route("/counter/sign-out", self.sign_out, methods=["POST"]),
            Route("/counter/form", self.choose_form, methods=["POST"]),
            Route("/counter/person", self.person_page, methods=["GET"]),
            Route("/counter/person", self.authenticate, methods=["POST"]),
            Route("/counter/fill", self.fill_page, methods=["GET"]),
            Route("/counter/fill", self.fill, methods=["POST"]),
            Route("/counter/preview", self.preview_page, methods=["GET"]),
            Route("/counter/confirm", self.confirm, methods=["POST"]),
            Route("/counter/done", self.done_page, methods=["GET"]),
            Route("/counter/next", self.next_person, methods=["POST"]),
        ]

    # ------------------------------------------------------------------------ staff

    async def home(self, request: Request) -> Response:
        session = self.pages.session(request, Realm.COUNTER)
        if not session.staff:
            return self.pages.render(request, "staff_sign_in.html", session, failed=False)
        try:
            catalog = await self.pages.catalog()
        except Refused as error:
            return self.pages.refusal(request, session, error, "/counter")
        return self.pages.render(request, "forms.html", session, forms=list(catalog.forms))

    async def sign_in(self, request: Request) -> Response:
        session = self.pages.session(request, Realm.COUNTER)
        form = await self.pages.form(request, session)
        # scrypt takes tens of milliseconds by design: in a worker thread (it releases the
        # GIL), every other counter's page is served meanwhile.
        account = await asyncio.to_thread(
            self.pages.settings.staff.authenticate,
            str(form.get("account", "")),
            str(form.get("password", "")),
        )
        if account is None:
            return self.pages.render(
                request, "staff_sign_in.html", session, status_code=401, failed=True
            )
        session = self.pages.sessions.replace(session)
        session.staff = account.name
        return self.pages.redirect("/counter", session)

    async def sign_out(self, request: Request) -> Response:
        session = self.pages.session(request, Realm.COUNTER)
        await self.pages.form(request, session)
        self.pages.sessions.drop(session)
        return self.pages.forget(self.pages.redirect("/counter"), Realm.COUNTER)

    def _staff(self, request: Request) -> Session | None:
        session = self.pages.session(request, Realm.COUNTER)
        return session if session.staff else None

    async def choose_form(self, request: Request) -> Response:
        session = self._staff(request)
        if session is None:
            return self.pages.redirect("/counter")
        form = await self.pages.form(request, session)
        form_id = str(form.get("form_id", ""))
        catalog = await self.pages.catalog()
        chosen = next((f for f in catalog.forms if f.id == form_id), None)
        if chosen is None:
            return self.pages.refusal(
                request,
                session,
                Refused(grpc.StatusCode.NOT_FOUND, "UNKNOWN_FORM", "", None),
                "/counter",
            )
        self._clear_person(session)
        session.data["form"] = chosen
        return self.pages.redirect("/counter/person", session)

    # ------------------------------------------------------------------------ the person

    async def person_page(self, request: Request) -> Response:
        session = self._staff(request)
        if session is None or "form" not in session.data:
            return self.pages.redirect("/counter")
        return self.pages.render(
            request, "person.html", session, form=session.data["form"], error=""
        )

    async def authenticate(self, request: Request) -> Response:
        session = self._staff(request)
        if session is None or "form" not in session.data:
            return self.pages.redirect("/counter")
        form = await self.pages.form(request, session)
        chosen = str(form.get("assurance", ""))
        assurance = Assurance.FACE_MATCH if chosen == "FACE_MATCH" else Assurance.ID_CARD_AT_COUNTER
        try:
            person = await self.pages.identity_provider.authenticate(
                str(form.get("subject_id", "")), assurance, self.pages.settings.department_id
            )
        except NotAuthenticated as failed:
            return self.pages.render(
                request,
                "person.html",
                session,
                status_code=400,
                form=session.data["form"],
                error=failed.key,
            )
        self._clear_person(session)
        session.person = person
        return self.pages.redirect("/counter/fill", session)

    def _clear_person(self, session: Session) -> None:
        session.person = None
        for key in (
            "views",
            "entered",
            "plan",
            "signed",
            "submitted",
            "outcomes",
            "receipt",
            "confirmation",
            "confirmed",
        ):
            session.data.pop(key, None)

    def _serving(self, request: Request) -> Session | None:
        """The staff session if it is serving an authenticated person on a chosen form."""
        session = self._staff(request)
        if session is None or "form" not in session.data or session.person is None:
            return None
        if session.person.expired:
            self._clear_person(session)
            return None
        return session

    # ------------------------------------------------------------------------ the form

    async def fill_page(self, request: Request) -> Response:
        session = self._serving(request)
        if session is None:
            return self.pages.redirect("/counter/person" if self._staff(request) else "/counter")
        form: catalog_pb2.Form = session.data["form"]
        try:
            prefill = await self.pages.client.prefill(
                form.id, session.person.subject_id, assertion=session.person.assertion
            )
            catalog = await self.pages.catalog()
            names = await self.pages.holder_names({f.holder for f in prefill.fields})
        except (Refused, VerificationError) as error:
            return self.pages.refusal(request, session, error, "/counter/fill")
        types = {t.id: t for t in catalog.material_types}
        views = field_views(form, prefill, types, names)
        session.data["views"] = views
        session.data["receipt"] = prefill.receipt.sequence
        return self.pages.render(
            request,
            "fill.html",
            session,
            form=form,
            fields=views,
            entered=session.data.get("entered", {}),
            errors={},
        )

    async def fill(self, request: Request) -> Response:
        session = self._serving(request)
        if session is None or "views" not in session.data:
            return self.pages.redirect("/counter")
        posted = await self.pages.form(request, session)
        if posted.get("action") == "retry":
            return self.pages.redirect("/counter/fill", session)
        views: list[FieldView] = session.data["views"]
        entered = {
            v.name: str(posted.get(f"f_{v.name}", "")).strip() for v in views if v.state.asked
        }
        errors = {
            v.name: v.label for v in views if v.state.asked and v.required and not entered[v.name]
        }
        session.data["entered"] = entered
        # Values posted again end the plan made from the earlier ones (and what it signed).
        for key in ("plan", "signed", "submitted"):
            session.data.pop(key, None)
        if errors:
            return self.pages.render(
                request,
                "fill.html",
                session,
                status_code=400,
                form=session.data["form"],
                fields=views,
                entered=entered,
                errors=errors,
            )
        # One request id per material type, fixed now: confirming twice submits once.
        session.data["plan"] = {
            material_type: (uuid.uuid4().hex, fields)
            for material_type, fields in submissions(views, entered).items()
        }
        return self.pages.redirect("/counter/preview", session)

    async def preview_page(self, request: Request) -> Response:
        session = self._serving(request)
        if session is None or "plan" not in session.data:
            return self.pages.redirect("/counter/fill" if session else "/counter")
        return self.pages.render(
            request,
            "preview.html",
            session,
            form=session.data["form"],
            fields=session.data["views"],
            entered=session.data["entered"],
        )

    async def confirm(self, request: Request) -> Response:
        session = self._serving(request)
        if session is None or "plan" not in session.data:
            return self.pages.redirect("/counter")
        await self.pages.form(request, session)
        plan: dict[str, tuple[str, dict[str, str]]] = session.data["plan"]
        person: Person = session.person
        form: catalog_pb2.Form = session.data["form"]
        views: list[FieldView] = session.data["views"]
        entered: dict[str, str] = session.data["entered"]
        results: list[tuple[str, SubmitResult]] = []
        try:
            for material_type, (request_id, fields) in plan.items():
                result = await self._submit(session, person, material_type, request_id, fields)
                results.append((material_type, result))
            # The person's confirmation of the whole form, as previewed, goes on the record
            # with their assertion (only a salted hash of the values reaches the hub).
            confirmation = session.data.get("confirmation")
            if confirmation is None:
                completed = {
                    v.name: v.value if v.state is FieldState.FILLED else entered.get(v.name, "")
                    for v in views
                }
                confirmation = await self.pages.client.confirm_form(
                    person.subject_id,
                    form.id,
                    completed,
                    assertion=person.assertion,
                    prefill_sequence=session.data.get("receipt") or 0,
                )
                session.data["confirmation"] = confirmation
        except (Refused, VerificationError) as error:
            # The plan (and its request ids) stays: confirming again retries the same calls.
            return self.pages.refusal(request, session, error, "/counter/preview")
        catalog = await self.pages.catalog()
        owners = {t.id: t.owner for t in catalog.material_types}
        names = await self.pages.holder_names({owners.get(m, m) for m, _ in results})
        outcomes = [
            Outcome(
                material_type=m,
                outcome=r.outcome,
                holder_name=names.get(owners.get(m, m), m),
                version=r.version,
                sequence=r.receipt.sequence,
            )
            for m, r in results
        ]
        self._clear_person(session)  # the person's part is over: nothing of theirs stays
        session.data["outcomes"] = outcomes
        session.data["confirmed"] = confirmation.receipt.sequence
        return self.pages.redirect("/counter/done", session)

    async def _submit(
        self,
        session: Session,
        person: Person,
        material_type: str,
        request_id: str,
        fields: dict[str, str],
    ) -> SubmitResult:
        """One Submit of the confirmed plan, answered once. Its answer is kept in the session:
        confirming again (after a refusal of another material type, a reload) does not send a
        Submit that was answered. Its signed bytes are kept too, so one whose answer was lost
        (a deadline) is sent again unchanged and the hub answers with its first answer, if it
        took it. Bytes the hub finds too old to accept (STALE_REQUEST, refused before the
        request id is claimed) are signed anew under the same id."""
        answered: dict[str, SubmitResult] = session.data.setdefault("submitted", {})
        if material_type in answered:
            return answered[material_type]
        client = self.pages.client
        signed: dict[str, envelope_pb2.Envelope] = session.data.setdefault("signed", {})

        def sign() -> envelope_pb2.Envelope:
            signed[material_type] = client.submission(
                material_type,
                person.subject_id,
                fields,
                request_id=request_id,
                assertion=person.assertion,
            )
            return signed[material_type]

        try:
            kept = signed.get(material_type)
            result = await client.submit_signed(kept if kept is not None else sign())
        except Refused as error:
            if error.reason != "STALE_REQUEST":
                raise
            result = await client.submit_signed(sign())
        answered[material_type] = result
        return result

    async def done_page(self, request: Request) -> Response:
        session = self._staff(request)
        if session is None or "outcomes" not in session.data:
            return self.pages.redirect("/counter")
        return self.pages.render(
            request,
            "done.html",
            session,
            form=session.data["form"],
            outcomes=session.data["outcomes"],
            confirmed=session.data.get("confirmed"),
        )

    async def next_person(self, request: Request) -> Response:
        session = self._staff(request)
        if session is None:
            return self.pages.redirect("/counter")
        await self.pages.form(request, session)
        self._clear_person(session)
        return self.pages.redirect("/counter/person", session)
