"""The demo's web pages: ``exchange demo --keep-running`` also serves the counter and my data.

The web app is a member of its own: the township's web counter (``demo.township-web``), a form
tool and collector owned by the township office, so it prefills under the township's grants
while signing with its own keys. A demo clerk account is written to a staff file beside the
demo's keys; the person signs in through the demo's development identity provider, which
signs their subject assertion for the web counter.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from adapters import demo_data as data
from adapters.client import HubClient, Identity
from adapters.identity import DevelopmentIdentityProvider
from adapters.web.identity import SigningIdentityProvider
from adapters.web.pages import WebSettings
from adapters.web.server import WebServer
from adapters.web.staff import StaffAccounts, add_account
from exchange.crypto.keystore import Keystore
from exchange.v1 import common_pb2, registry_pb2

WEB_FORM_TOOL = "demo.township-web"
CLERK, CLERK_PASSWORD = "clerk", "demo-clerk"


@dataclass(frozen=True, slots=True)
class DemoWeb:
    """The running web app and how to sign in to it."""

    server: WebServer
    client: HubClient
    staff_file: Path

    async def stop(self) -> None:
        """Stop serving and close the hub connection."""
        await self.server.stop()
        await self.client.close()


async def register_web_form_tool(operator: HubClient, keystore: Keystore) -> None:
    """Create the web counter's keys and register it: form tool and collector, owned by the
    township office (whose grants it prefills under)."""
    key = keystore.add_department(WEB_FORM_TOOL)
    await operator.register_department(
        department=registry_pb2.Department(
            id=WEB_FORM_TOOL,
            name="和平镇网上窗口 Township web counter (demo)",
            roles=[common_pb2.FORM_TOOL, common_pb2.COLLECTOR],
            owner=data.TOWNSHIP,
            keys=[registry_pb2.DepartmentKey(public_key=key.public_bytes)],
        )
    )


def web_client(keystore: Keystore, hub_target: str, hub_verifier: str) -> HubClient:
    """A hub client signing as the web counter member, verifying every receipt."""
    return HubClient(
        hub_target,
        Identity(
            WEB_FORM_TOOL,
            keystore.department_signing_key(WEB_FORM_TOOL),
            keystore.department_tls(WEB_FORM_TOOL),
        ),
        server_name="localhost",
        hub_verifier=hub_verifier,
    )


async def start_web(
    operator: HubClient,
    keystore: Keystore,
    hub_target: str,
    hub_verifier: str,
    root: Path,
    port: int,
    identity_member: str,
    *,
    secure_cookies: bool = True,
) -> DemoWeb:
    """Register the web counter, write the demo clerk's account, and serve the pages on
    127.0.0.1:``port`` (0: any free port). Raises Refused, OSError."""
    await register_web_form_tool(operator, keystore)
    staff_file = root / "web-staff.toml"
    add_account(staff_file, CLERK, "窗口一 (demo clerk)", CLERK_PASSWORD)
    client = web_client(keystore, hub_target, hub_verifier)
    server = WebServer(
        WebSettings(WEB_FORM_TOOL, StaffAccounts.load(staff_file), secure_cookies=secure_cookies),
        client,
        SigningIdentityProvider(
            DevelopmentIdentityProvider(
                identity_member, keystore.department_signing_key(identity_member)
            )
        ),
        port=port,
        access_log=True,
    )
    try:
        await server.start()
    except BaseException:
        await client.close()
        raise
    return DemoWeb(server, client, staff_file)
