"""``exchange web``: the reference web form tool and portal, a member of the exchange like any
other form tool, on the department side.

Two faces, server-rendered (Starlette + Jinja2, no script, no front-end build):

- the counter (基层窗口, ``/counter``): a clerk prefills a registered form for a person who
  authenticated through the identity provider; only what is missing is asked, previewed,
  confirmed and submitted once;
- my data (我的数据, ``/me``): the person sees every access to their material, objects to a
  value and follows it, and manages consents.

It talks to the hub only through the client SDK (``adapters.client``) with its own keys, and
imports nothing of the hub's insides.
"""

from adapters.web.app import create_app
from adapters.web.pages import Pages, WebSettings
from adapters.web.server import WebServer

__all__ = ["Pages", "WebServer", "WebSettings", "create_app"]
