"""The web app over real HTTP (httpx against uvicorn), no browser: secure defaults, CSRF,
sessions, languages, and the counter's whole visit with no subject id in URLs, cookies or logs.
"""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import Iterator
from http.cookies import SimpleCookie
from pathlib import Path

import httpx
import pytest

from adapters import demo_data as data
from adapters.web.i18n import MESSAGES
from adapters.web.pages import HERE
from adapters.web.sessions import Realm, SessionStore
from exchange.cli.demo_web import CLERK, CLERK_PASSWORD
from exchange.v1 import common_pb2, ledger_pb2
from tests.web.conftest import WebStack, web_stack

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


class Visitor:
    """A browser stand-in: keeps the app's cookies by name and path prefix, and sends them
    over plain HTTP (httpx's jar would withhold Secure cookies from http://127.0.0.1, which
    browsers treat as a secure context)."""

    def __init__(self, base: str) -> None:
        self.http = httpx.Client(base_url=base, follow_redirects=False, timeout=60)
        self.cookies: dict[str, tuple[str, str]] = {}  # name -> (value, path)
        self.set_cookie_headers: list[str] = []
        self.locations: list[str] = []

    def request(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        sent = {n: v for n, (v, p) in self.cookies.items() if path.startswith(p)}
        headers = {"cookie": "; ".join(f"{n}={v}" for n, v in sent.items())} if sent else {}
        response = self.http.request(method, path, headers=headers, **kwargs)  # type: ignore[arg-type]
        for header in response.headers.get_list("set-cookie"):
            self.set_cookie_headers.append(header)
            for name, morsel in SimpleCookie(header).items():
                if morsel["max-age"] == "0" or not morsel.value:
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = (morsel.value, morsel["path"] or "/")
        if "location" in response.headers:
            self.locations.append(response.headers["location"])
        return response

    def get(self, path: str, **kwargs: object) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, form: dict[str, str], csrf_from: str) -> httpx.Response:
        page = self.get(csrf_from)
        found = CSRF.search(page.text)
        assert found, f"no CSRF token on {csrf_from}"
        return self.request("POST", path, data={**form, "csrf": found.group(1)})


@pytest.fixture
def visitor(stack: WebStack) -> Iterator[Visitor]:
    client = Visitor(stack.url)
    yield client
    client.http.close()


def test_every_page_has_csp_no_store_and_no_script(visitor: Visitor) -> None:
    for path in ("/", "/counter", "/me", "/static/style.css", "/no-such-page"):
        response = visitor.get(path)
        assert response.headers["cache-control"] == "no-store"
        csp = response.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src" not in csp
        assert "frame-ancestors 'none'" in csp
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert "<script" not in response.text
    assert visitor.get("/no-such-page").status_code == 404


def test_session_cookies_are_http_only_secure_strict_and_kept_to_their_face(
    visitor: Visitor,
) -> None:
    visitor.get("/counter")
    visitor.get("/me")
    cookies = {
        name: morsel
        for header in visitor.set_cookie_headers
        for name, morsel in SimpleCookie(header).items()
    }
    for realm in Realm:
        morsel = cookies[realm.cookie]
        assert morsel["httponly"] and morsel["secure"]
        assert morsel["samesite"].lower() == "strict"
        assert morsel["path"] == realm.path
        assert not morsel["max-age"] and not morsel["expires"]  # gone with the browser


def test_a_form_without_its_csrf_token_is_refused_and_changes_nothing(visitor: Visitor) -> None:
    visitor.get("/counter")
    response = visitor.request(
        "POST", "/counter/sign-in", data={"account": CLERK, "password": CLERK_PASSWORD}
    )
    assert response.status_code == 403
    assert "页面已过期或不是从本站提交的" in response.text
    wrong = visitor.request(
        "POST",
        "/counter/sign-in",
        data={"account": CLERK, "password": CLERK_PASSWORD, "csrf": "x" * 43},
    )
    assert wrong.status_code == 403
    assert "staff-sign-in" in visitor.get("/counter").text  # still signed out


def test_wrong_password_is_refused_in_plain_words(visitor: Visitor) -> None:
    response = visitor.post(
        "/counter/sign-in", {"account": CLERK, "password": "not-it"}, "/counter"
    )
    assert response.status_code == 401
    assert "账号或密码不正确" in response.text


def test_a_staff_session_does_not_open_my_data(visitor: Visitor) -> None:
    signed_in = visitor.post(
        "/counter/sign-in", {"account": CLERK, "password": CLERK_PASSWORD}, "/counter"
    )
    assert signed_in.status_code == 303
    staff_token = visitor.cookies[Realm.COUNTER.cookie][0]
    # Presented to my data (as if the browser sent it there), the staff token opens nothing.
    visitor.cookies[Realm.MYDATA.cookie] = (staff_token, "/me")
    page = visitor.get("/me/history")
    assert page.status_code == 303 and page.headers["location"] == "/me"
    assert "me-sign-in" in visitor.get("/me").text


def test_language_choice_and_a_foreign_next_address(visitor: Visitor) -> None:
    assert 'lang="zh-CN"' in visitor.get("/counter").text
    switched = visitor.get("/lang/en", params={"next": "/counter"})
    assert switched.status_code == 303 and switched.headers["location"] == "/counter"
    page = visitor.get("/counter")
    assert 'lang="en"' in page.text and "Staff sign-in" in page.text
    assert visitor.get("/lang/en", params={"next": "//evil.example/"}).headers["location"] == "/"


def test_counter_visit_keeps_the_subject_out_of_urls_cookies_and_logs(
    visitor: Visitor, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="uvicorn.access")
    visitor.post("/counter/sign-in", {"account": CLERK, "password": CLERK_PASSWORD}, "/counter")
    visitor.post("/counter/form", {"form_id": data.FORM_ID}, "/counter")
    visitor.post("/counter/person", {"subject_id": data.ZHANG_SAN}, "/counter/person")
    page = visitor.get("/counter/fill")
    assert page.status_code == 200
    assert "张三 (demo)" in page.text and "已有记录，不再询问" in page.text
    assert data.ZHANG_SAN not in page.text  # the form never shows the ID number either
    preview = visitor.post("/counter/fill", {"action": "preview"}, "/counter/fill")
    assert preview.headers["location"] == "/counter/preview"
    done = visitor.post("/counter/confirm", {}, "/counter/preview")
    assert done.headers["location"] == "/counter/done"
    result = visitor.get("/counter/done")
    assert "办事人的确认已记入账本" in result.text
    seen = " ".join(visitor.locations + visitor.set_cookie_headers + caplog.messages)
    assert caplog.messages, "the access log was not captured"
    assert data.ZHANG_SAN not in seen


def test_connections_send_without_waiting_for_acks(stack: WebStack) -> None:
    """Every accepted connection has Nagle's algorithm off (TCP_NODELAY): with it on, a page's
    body waited for the browser's delayed ACK of its headers, some 40 ms a page."""
    host, port = stack.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as browser:
        browser.sendall(f"GET /counter HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        assert browser.recv(65536).startswith(b"HTTP/1.1 200")

        async def nodelay() -> list[int]:
            server = stack.web.server._server
            assert server is not None
            return [
                connection.transport.get_extra_info("socket").getsockopt(
                    socket.IPPROTO_TCP, socket.TCP_NODELAY
                )
                for connection in server.server_state.connections
                if connection.transport is not None
            ]

        options = stack.run(nodelay())
    assert options and all(options), options


def test_a_malformed_id_number_is_refused_in_plain_words(visitor: Visitor) -> None:
    response = visitor.post("/me/sign-in", {"subject_id": "12345"}, "/me")
    assert response.status_code == 400
    assert "身份证号码格式不正确" in response.text


def test_sessions_expire_and_sign_in_replaces_the_token() -> None:
    store = SessionStore(idle_seconds=0.0)
    session = store.create(Realm.MYDATA)
    assert store.get(Realm.MYDATA, session.token) == (None, True)
    lasting = SessionStore(idle_seconds=3600.0)
    before = lasting.create(Realm.COUNTER)
    after = lasting.replace(before)
    assert after.token != before.token and after.csrf != before.csrf
    assert lasting.get(Realm.COUNTER, before.token) == (None, False)
    assert lasting.get(Realm.MYDATA, after.token) == (None, False)  # the other realm's token


def test_every_message_a_template_names_exists_in_both_languages() -> None:
    used = set()
    for template in (HERE / "templates").glob("*.html"):
        used |= set(re.findall(r"""\bt\(["']([a-z_.]+)["']\s*[,)]""", template.read_text()))
    assert used, "no message keys found"
    missing = used - set(MESSAGES)
    assert not missing
    assert all(zh and en for zh, en in MESSAGES.values())


def test_every_explained_refusal_is_a_contract_reason() -> None:
    from adapters.web.i18n import REFUSALS
    from exchange.v1 import common_pb2

    unknown = set(REFUSALS) - set(common_pb2.Reason.keys()) - {"VERIFICATION_FAILED"}
    assert not unknown
    assert {"NO_GRANT", "CONSENT_REQUIRED", "ASSERTION_EXPIRED", "NOT_ON_FILE"} <= set(REFUSALS)


NEWCOMER = "990101199505050049"  # nothing on file anywhere: every material type is collected


def test_confirming_again_after_a_refusal_answers_each_submit_as_the_first_time(
    tmp_path: Path,
) -> None:
    """One material type of a confirmation is refused (the licence holder's adapter takes no
    collected licences) after the others were stored. Confirming again gets each Submit's first
    answer: the counter resends the bytes it signed rather than a new signature under the same
    request id (which the hub refuses REQUEST_ID_REUSED), and nothing is submitted twice."""
    with web_stack(tmp_path) as stack:
        visitor = Visitor(stack.url)
        try:
            visitor.post(
                "/counter/sign-in", {"account": CLERK, "password": CLERK_PASSWORD}, "/counter"
            )
            visitor.post("/counter/form", {"form_id": data.FORM_ID}, "/counter")
            visitor.post("/counter/person", {"subject_id": NEWCOMER}, "/counter/person")
            entered = {
                "f_applicant_name": "赵六 (demo)",
                "f_birth_date": "1995-05-05",
                "f_address": "示例省示例县和平村 9 号 (demo)",
                "f_marital_status": "unmarried",
                "f_enterprise_name": "赵六小吃店 (demo)",
                "f_credit_code": "91990000DEMO00009X",
                "action": "preview",
            }
            preview = visitor.post("/counter/fill", entered, "/counter/fill")
            assert preview.headers["location"] == "/counter/preview"
            pages = [visitor.post("/counter/confirm", {}, "/counter/preview") for _ in range(2)]
        finally:
            visitor.http.close()
        for page in pages:
            assert page.status_code == 400
            assert "INVALID_ARGUMENT_FIELD" in page.text and "REQUEST_ID_REUSED" not in page.text

        hub = stack.story.hub.hub
        subject_ref = hub.content_keys.subject_ref(NEWCOMER)
        entries = [s.decode() for s in hub.ledger.entries(0, hub.ledger.size())]
        submits = [
            e for e in entries if e.kind == ledger_pb2.SUBMIT and e.subject_ref == subject_ref
        ]
        assert sorted(
            (e.material_type, e.attributes["submit"]) for e in submits if e.outcome == ledger_pb2.OK
        ) == [(data.HOUSEHOLD, "STORED"), (data.MARRIAGE, "STORED")]
        # The licence's refusal was recorded once; the second confirmation got it back.
        assert [
            (e.material_type, common_pb2.Reason.Name(e.reason))
            for e in submits
            if e.outcome != ledger_pb2.OK
        ] == [(data.LICENCE, "INVALID_ARGUMENT_FIELD")]


def test_values_posted_again_end_the_plan_made_from_the_earlier_ones(
    visitor: Visitor, stack: WebStack
) -> None:
    """Back on the form, values posted again (here with a required one left out) end the
    previewed plan: confirming then submits nothing, neither the earlier values nor the new."""
    visitor.post("/counter/sign-in", {"account": CLERK, "password": CLERK_PASSWORD}, "/counter")
    visitor.post("/counter/form", {"form_id": data.FORM_ID}, "/counter")
    visitor.post("/counter/person", {"subject_id": data.WANG_WU}, "/counter/person")
    first = {"f_marital_status": "single", "action": "preview"}
    assert visitor.post("/counter/fill", first, "/counter/fill").headers["location"] == (
        "/counter/preview"
    )
    again = visitor.post(
        "/counter/fill", {"f_marital_status": "", "action": "preview"}, "/counter/fill"
    )
    assert again.status_code == 400
    hub = stack.story.hub.hub
    size = hub.ledger.size()
    confirm = visitor.post("/counter/confirm", {}, "/counter/fill")
    assert confirm.status_code == 303 and confirm.headers["location"] == "/counter"
    added = [s.decode() for s in hub.ledger.entries(size, hub.ledger.size())]
    assert [e for e in added if e.kind == ledger_pb2.SUBMIT] == []
