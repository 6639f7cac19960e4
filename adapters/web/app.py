"""The ASGI application: routes of both faces, static files, and secure defaults on every
response.

Every response carries a Content-Security-Policy that allows nothing but this origin's own
style sheet (no script at all: the pages work without JavaScript), ``Cache-Control: no-store``
(pages hold personal data; nothing is kept in the browser's or a proxy's cache), and the usual
hardening headers.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from adapters.web.counter import Counter
from adapters.web.i18n import Catalog, Language
from adapters.web.mydata import MyData
from adapters.web.pages import HERE, LANG_COOKIE, CsrfRefused, Pages, SessionExpired

CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"cache-control", b"no-store"),
    (b"pragma", b"no-cache"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
]


class SecureHeaders:
    """ASGI middleware adding ``HEADERS`` to every HTTP response (plain ASGI: no per-request
    task or body buffering, unlike Starlette's BaseHTTPMiddleware)."""

    def __init__(self, app: ASGIApp, https: bool) -> None:
        self.app = app
        self.headers = HEADERS + (
            [(b"strict-transport-security", b"max-age=31536000")] if https else []
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name for name, _ in self.headers}
                kept = [(n, v) for n, v in message.get("headers", []) if n.lower() not in names]
                message["headers"] = kept + self.headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(pages: Pages, *, https: bool = False) -> ASGIApp:
    """The web form tool's ASGI app over ``pages`` (settings, hub client, identity provider)."""

    async def root(request: Request) -> Response:
        return pages.render(request, "home.html", None)

    async def language(request: Request) -> Response:
        chosen = Language.parse(request.path_params["code"])
        target = request.query_params.get("next", "/")
        if not target.startswith("/") or target.startswith("//") or "\\" in target:
            target = "/"
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            LANG_COOKIE,
            chosen.value,
            max_age=365 * 86400,
            path="/",
            httponly=True,
            secure=pages.settings.secure_cookies,
            samesite="lax",
        )
        return response

    async def csrf_refused(request: Request, _exc: Exception) -> Response:
        words = Catalog(pages.language(request))
        return pages.render(
            request, "message.html", None, status_code=403, message=words.text("error.csrf")
        )

    async def expired(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, SessionExpired)
        words = Catalog(pages.language(request))
        response = pages.render(
            request,
            "message.html",
            None,
            status_code=401,
            message=words.text("error.expired"),
            again=exc.realm.path,
        )
        return pages.forget(response, exc.realm)

    async def not_found(request: Request, exc: Exception) -> Response:
        words = Catalog(pages.language(request))
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        key = "error.not_found" if status == 404 else "error.start_over"
        return pages.render(
            request, "message.html", None, status_code=status, message=words.text(key)
        )

    counter, mydata = Counter(pages), MyData(pages)
    app = Starlette(
        routes=[
            Route("/", root, methods=["GET"]),
            Route("/lang/{code}", language, methods=["GET"]),
            *counter.routes(),
            *mydata.routes(),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ],
        exception_handlers={
            CsrfRefused: csrf_refused,
            SessionExpired: expired,
            HTTPException: not_found,
        },
    )
    return SecureHeaders(app, https)
