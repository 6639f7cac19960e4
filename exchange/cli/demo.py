"""``exchange demo``: the whole story on one machine, on the embedded default.

Creates keys, starts a hub on SQLite and three departments' provider adapters over their own
synthetic SQLite databases, registers a township form tool and a development identity provider,
and narrates: 王五 authenticates at the counter; his form prefilled with each field's source
(authoritative or person-provided); the missing field collected and submitted once; the same
submission again (ALREADY_ON_FILE); he confirms the completed form; a conditional request
refused, then granted and served; a NOT_SHARED request refused; a department requests his
material under a legal basis; he gives a consent, it is used, he revokes it and the next request
is refused; his access history; alerts and the burden report; the ledger exported and verified
offline. Everything it started is stopped before it exits 0, unless --keep-running.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
import signal
from collections.abc import Awaitable, Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import click

from adapters import demo_data as data
from adapters.client import HubClient, Identity, Refused
from exchange.cli.main import run
from exchange.config import Config
from exchange.crypto.keystore import Keystore
from exchange.v1 import catalog_pb2, common_pb2, envelope_pb2, grants_pb2, registry_pb2

T = TypeVar("T")

HUB_ID = "hub"
SUBSIDY = "small-business-subsidy"
LICENCE_REVIEW = "licence-review"
SUPERVISION = "demo.supervision"
IDENTITY = "demo.identity-platform"
LOAN = "business-loan-subsidy"
STEP = 0


def say(text: str = "", **style: Any) -> None:
    click.echo(click.style(text, **style) if style else text)


def step(title: str) -> None:
    global STEP
    STEP += 1
    say()
    say(f"[{STEP}] {title}", bold=True, fg="cyan")


def ok(text: str) -> None:
    say(f"    ✔ {text}", fg="green")


def refused(text: str) -> None:
    say(f"    ✘ {text}", fg="yellow")


async def expect_refusal(call: Awaitable[Any]) -> Refused:
    try:
        await call
    except Refused as error:
        return error
    raise click.ClickException("a call the demo expected to be refused was served")


class Story:
    """The demo's parts and its narration."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.port = port
        self.keystore = Keystore(root / "keys")
        self.clients: list[HubClient] = []
        self.adapters: list[Any] = []
        self.hub: Any = None

    def client(self, department_id: str) -> HubClient:
        key = (
            self.keystore.operator_signing_key()
            if department_id == HUB_ID
            else self.keystore.department_signing_key(department_id)
        )
        tls = (
            self.keystore.operator_tls()
            if department_id == HUB_ID
            else self.keystore.department_tls(department_id)
        )
        client = HubClient(
            f"127.0.0.1:{self.hub.port}",
            Identity(department_id, key, tls),
            server_name="localhost",
            hub_verifier=self.hub.hub.ledger.verifier_key,
        )
        self.clients.append(client)
        return client

    async def setup(self) -> None:
        from adapters.demo_data import start_adapters, write_departments
        from exchange.api.server import HubServer

        step("Setting up: keys, a hub on SQLite, three departments behind their adapters")
        self.keystore.init_hub(HUB_ID, ("localhost", "127.0.0.1"))
        data.create_keys(self.keystore)
        self.keystore.add_department(SUPERVISION)
        self.keystore.add_department(IDENTITY)
        ok(f"development CA and keys under {self.keystore.root}")
        config = dataclasses.replace(
            Config(),
            listen=f"127.0.0.1:{self.port}",
            database_url=f"sqlite:///{self.root / 'hub.db'}",
            keys_dir=self.keystore.root,
            checkpoint_interval_ms=200,
            log_level="warning",
        )
        self.hub = HubServer(config)
        await self.hub.start()
        ok(f"hub serving mTLS on 127.0.0.1:{self.hub.port}, ledger in {self.root / 'hub.db'}")
        departments = write_departments(
            self.root / "departments",
            self.keystore.root,
            {},
            hub_id=HUB_ID,
            hub_target=f"127.0.0.1:{self.hub.port}",
        )
        self.adapters = await start_adapters(departments)
        operator = self.client(HUB_ID)
        roles = {
            data.PUBLIC_SECURITY: [common_pb2.PROVIDER],
            data.CIVIL_AFFAIRS: [common_pb2.PROVIDER, common_pb2.CONSUMER],
            data.MARKET_REGULATION: [common_pb2.PROVIDER, common_pb2.CONSUMER],
        }
        for department, adapter in zip(departments, self.adapters, strict=True):
            await self._register(
                operator,
                department.department_id,
                department.name,
                roles[department.department_id],
                f"127.0.0.1:{adapter.port}",
            )
            ok(f"{department.name}: adapter on port {adapter.port} over {department.database.name}")
        await self._register(
            operator,
            data.TOWNSHIP,
            "和平镇便民服务中心 Township service office (demo)",
            [common_pb2.FORM_TOOL, common_pb2.COLLECTOR],
            "",
        )
        await self._register(
            operator,
            "demo.supervision",
            "监察室 Supervision office (demo)",
            [common_pb2.AUDITOR, common_pb2.SUPERVISOR],
            "",
        )
        await self._register(
            operator,
            IDENTITY,
            "统一身份认证平台 Unified identity platform (demo, development provider)",
            [common_pb2.IDENTITY_PROVIDER],
            "",
        )
        ok("township form tool, supervision office and identity platform registered")
        for purpose, name, law, person_basis in (
            (
                SUBSIDY,
                "Small business subsidy",
                "示例省小微经营户补贴办法 (demo) art. 5",
                catalog_pb2.LEGAL_BASIS,
            ),
            (
                LICENCE_REVIEW,
                "Business licence review",
                "示例市市场主体登记条例 (demo) art. 12",
                catalog_pb2.LEGAL_BASIS,
            ),
            (
                LOAN,
                "Business loan interest subsidy",
                "示例市创业担保贷款贴息办法 (demo) art. 8: with the applicant's consent",
                catalog_pb2.PERSON_CONSENT,
            ),
        ):
            await operator.define_purpose(
                purpose=catalog_pb2.Purpose(
                    id=purpose, name=name, legal_basis=law, basis=person_basis
                )
            )
        for entry in data.CATALOG:
            await self.client(entry.owner).publish_material_type(material_type=entry.to_proto())
            say(
                f"    · catalog: {entry.material_type:24} {entry.sharing_class:13} by {entry.owner}"
            )
        from adapters.holdings import publish_holdings

        for department, adapter in zip(departments, self.adapters, strict=True):
            client = self.client(department.department_id)
            for material_type in department.material_types:
                summary = await publish_holdings(client, adapter.backend, material_type)
                say(f"    · {department.department_id} published {summary.total} {material_type}")
        township = self.client(data.TOWNSHIP)
        await township.register_form(
            form=catalog_pb2.Form(
                id=data.FORM_ID,
                name=data.FORM_NAME,
                purpose=SUBSIDY,
                fields=[
                    catalog_pb2.FormField(
                        name=f.name,
                        label=f.label or f.name.replace("_", " "),
                        material_type=f.material_type,
                        material_field=f.material_field,
                    )
                    for f in data.FORM
                ],
            )
        )
        await self._grant(
            data.CIVIL_AFFAIRS,
            data.TOWNSHIP,
            data.MARRIAGE,
            ["marital_status", "spouse_name"],
            [SUBSIDY],
        )
        ok(f"form {data.FORM_ID!r} registered; civil affairs grants the township marital fields")

    async def _register(
        self,
        operator: HubClient,
        department_id: str,
        name: str,
        roles: Sequence[common_pb2.Role.ValueType],
        endpoint: str,
    ) -> None:
        key = self.keystore.department_signing_key(department_id)
        await operator.register_department(
            department=registry_pb2.Department(
                id=department_id,
                name=name,
                roles=roles,
                provider_endpoint=endpoint,
                keys=[registry_pb2.DepartmentKey(public_key=key.public_bytes)],
            )
        )

    async def _grant(
        self, owner: str, consumer: str, material_type: str, fields: list[str], purposes: list[str]
    ) -> grants_pb2.GrantResponse:
        from exchange.clock import now_us, to_timestamp

        now = now_us()
        return await self.client(owner).issue_grant(
            grant=grants_pb2.Grant(
                consumer=consumer,
                material_type=material_type,
                fields=fields,
                purposes=purposes,
                valid_from=to_timestamp(now - 60_000_000),
                valid_until=to_timestamp(now + 365 * 86_400_000_000),
            )
        )

    async def tell(self) -> None:
        from adapters.identity import Assurance, DevelopmentIdentityProvider

        township = self.client(data.TOWNSHIP)
        market = self.client(data.MARKET_REGULATION)
        platform = DevelopmentIdentityProvider(
            IDENTITY, self.keystore.department_signing_key(IDENTITY)
        )

        step("王五 (demo) authenticates at the township counter")
        error = await expect_refusal(
            township.prefill(data.FORM_ID, data.WANG_WU, assertion=envelope_pb2.Envelope())
        )
        refused(f"without him, the form tool gets nothing: {error.code.name} {error.reason}")
        error = await expect_refusal(township.check(data.MARRIAGE, data.WANG_WU))
        refused(f"not even whether his marriage record is on file: {error.reason}")
        unmarried = {"marital_status": "unmarried"}
        error = await expect_refusal(township.submit(data.MARRIAGE, data.WANG_WU, unmarried))
        refused(f'nor by submitting it ("already on file" would tell): {error.reason}')
        counter = platform.issue(data.WANG_WU, data.TOWNSHIP, Assurance.ID_CARD_AT_COUNTER)
        ok(
            f"{IDENTITY} checked his ID card and signed an assertion for {data.TOWNSHIP} "
            "(10 minutes at most; the hub keeps only its hash)"
        )
        person = counter.envelope

        step("王五 (demo) applies for a small business subsidy at the township office")
        prefill = await township.prefill(data.FORM_ID, data.WANG_WU, assertion=person)
        for value in prefill.fields:
            say(
                f"    {value.name:16} = {value.value:28} ← {value.holder} "
                f"({value.material_type} v{value.version}, {value.source_class.lower()})"
            )
        for name in prefill.missing:
            say(f"    {name:16} = (not on file: ask the person)", fg="yellow")
        filled, missing = len(prefill.fields), len(prefill.missing)
        ok(f"{filled} fields prefilled from signed sources, {missing} missing")

        step("Only the missing fields are asked of 王五; his marital status is submitted once")
        collected = {"marital_status": "unmarried"}
        first = await township.submit(data.MARRIAGE, data.WANG_WU, collected, assertion=person)
        say("    王五 answers: unmarried (so there is no spouse name to give)")
        ok(f"{first.outcome}: stored at {data.CIVIL_AFFAIRS} as {first.reference} v{first.version}")

        step("Another counter of the township office collects the same material again")
        again = await township.submit(data.MARRIAGE, data.WANG_WU, collected, assertion=person)
        ok(f"{again.outcome}: nothing stored, existing {again.reference}; a re-collection avoided")

        step("王五 previews the completed form, each value with its source, and confirms")
        preview = await township.prefill(data.FORM_ID, data.WANG_WU, assertion=person)
        for value in preview.fields:
            if value.material_type == data.MARRIAGE:
                say(
                    f"    {value.name:16} = {value.value:28} ← {value.source_class.lower()} "
                    f"(given by him at {value.submitted_by}, not yet confirmed by {value.holder})"
                )
        completed = {**preview.values(), "spouse_name": ""}
        confirmation = await township.confirm_form(
            data.WANG_WU,
            data.FORM_ID,
            completed,
            assertion=person,
            prefill_sequence=preview.receipt.sequence,
        )
        ok(f"confirmation recorded as ledger entry #{confirmation.receipt.sequence}")

        step("Market regulation asks civil affairs for 张三's marriage record (CONDITIONAL)")
        error = await expect_refusal(
            market.request(data.MARRIAGE, data.ZHANG_SAN, purpose=LICENCE_REVIEW)
        )
        refused(f"{error.code.name} {error.reason}: {error.message}")
        await self._grant(
            data.CIVIL_AFFAIRS,
            data.MARKET_REGULATION,
            data.MARRIAGE,
            ["marital_status"],
            [LICENCE_REVIEW],
        )
        ok("civil affairs signs a grant: marital_status only, for licence review")
        material = await market.request(data.MARRIAGE, data.ZHANG_SAN, purpose=LICENCE_REVIEW)
        ok(
            f"served {dict(material.fields)} signed by {material.holder}; signature, request "
            "binding and receipt verified end to end"
        )

        step("Market regulation asks for the biometric archive (NOT_SHARED)")
        error = await expect_refusal(
            market.request(data.BIOMETRICS, data.ZHANG_SAN, purpose=LICENCE_REVIEW)
        )
        refused(f"{error.code.name} {error.reason}: {error.message}")

        step("Market regulation keeps trying to pull the biometric archive")
        for _ in range(5):
            await expect_refusal(
                market.request(data.BIOMETRICS, data.LI_SI, purpose=LICENCE_REVIEW)
            )
        refused("5 more refusals in a row: each one is a ledger entry the supervisors' rules read")

        step("Market regulation requests 王五's marital status under a legal basis")
        material = await market.request(data.MARRIAGE, data.WANG_WU, purpose=LICENCE_REVIEW)
        ok(
            f"served {dict(material.fields)} for {LICENCE_REVIEW} (a legal basis: no consent "
            "needed, and he will see it)"
        )

        step("For a loan subsidy, market regulation needs 王五's consent")
        await self._grant(
            data.CIVIL_AFFAIRS,
            data.MARKET_REGULATION,
            data.MARRIAGE,
            ["marital_status"],
            [LOAN],
        )
        error = await expect_refusal(market.request(data.MARRIAGE, data.WANG_WU, purpose=LOAN))
        refused(f"without his consent: {error.code.name} {error.reason}")
        from exchange.clock import now_us

        consent = await township.give_consent(
            data.WANG_WU,
            assertion=person,
            consumer=data.MARKET_REGULATION,
            material_type=data.MARRIAGE,
            fields=["marital_status"],
            purpose=LOAN,
            valid_until_us=now_us() + 30 * 86_400_000_000,
            max_uses=3,
            data_life_days=90,
        )
        ok(
            f"王五 consents at the counter: {consent.id}, marital_status only, for {LOAN}, "
            f"3 uses within 30 days, data kept at most {consent.data_life_days} days"
        )
        material = await market.request(data.MARRIAGE, data.WANG_WU, purpose=LOAN)
        kept = datetime.fromtimestamp((material.keep_until_us or 0) / 1e6).strftime("%Y-%m-%d")
        ok(f"served {dict(material.fields)} under {material.consent_id}; keep until {kept}")
        await township.revoke_consent(data.WANG_WU, consent.id, assertion=person)
        ok(f"王五 revokes {consent.id}: in effect at once")
        error = await expect_refusal(market.request(data.MARRIAGE, data.WANG_WU, purpose=LOAN))
        refused(f"after the revocation: {error.code.name} {error.reason}")

        step("王五 asks the township office who has used his material (times in UTC)")
        for access in await township.access_history(data.WANG_WU, assertion=person):
            reason = f" ({access.reason})" if access.reason else ""
            when = datetime.fromtimestamp(access.time_us / 1e6, tz=UTC).strftime("%H:%M:%S UTC")
            types = ",".join(access.material_types) or "-"
            say(
                f"    #{access.sequence:<4} {when} {access.actor:24} {access.kind:18} "
                f"{types:40} {access.purpose or '-':22} {access.outcome}{reason}"
            )

    async def oversight(self) -> None:
        step("Supervision: alerts and the burden report (一本账)")
        supervisor = self.client(SUPERVISION)
        try:
            from exchange.v1 import supervision_pb2
        except ImportError:  # pragma: no cover
            return
        try:
            alerts = await supervisor.call(
                "/exchange.v1.Supervision/ListAlerts",
                supervision_pb2.ListAlertsRequest(),
                supervision_pb2.ListAlertsResponse,
            )
            for alert in alerts.alerts:
                level = supervision_pb2.AlertLevel.Name(alert.level)
                category = supervision_pb2.AlertCategory.Name(alert.category)
                say(
                    f"    {level:6} {category:11} {alert.rule}: {alert.message}",
                    fg="red" if level == "RED" else "yellow",
                )
            if not alerts.alerts:
                say("    no alerts")
            say(off_hours_note(self.hub.config if self.hub else Config()))
            report = await supervisor.call(
                "/exchange.v1.Supervision/BurdenReport",
                supervision_pb2.BurdenReportRequest(idle_days=30),
                supervision_pb2.BurdenReportResponse,
            )
        except Refused as error:
            refused(f"supervision unavailable: {error.code.name} {error.reason}")
            return
        say(f"    {'department':24} {'material type':24} stored avoided served refused prefills")
        for row in report.rows:
            say(
                f"    {row.department:24} {row.material_type:24} {row.stored:6} {row.avoided:7} "
                f"{row.served:6} {row.refused:7} {row.prefills:8}"
            )

    async def audit(self) -> None:
        from exchange.audit.verify import verify_export
        from exchange.ledger.export import export_ledger, first_keys

        step("An auditor exports the ledger and verifies it offline")
        hub = self.hub.hub
        key_history = hub.key_history()
        verifier = hub.ledger.verifier_key
        await self.stop_hub()  # the final checkpoint covers every entry
        out = self.root / "ledger-export.jsonl"
        from exchange.store.engines import open_engine

        engine = open_engine(f"sqlite:///{self.root / 'hub.db'}")
        from exchange.store.files import open_private_text

        with open_private_text(out) as handle:
            summary = export_ledger(
                engine,
                handle,
                key_history,
                [verifier],
                operator_keys=first_keys(key_history, HUB_ID),
            )
        engine.dispose()
        ok(f"exported {summary.entries} entries to {out}")
        with out.open() as handle:
            report = verify_export(handle, hub_keys=[verifier], workers=0)
        if not report.ok:
            raise click.ClickException(f"verification failed: {report.first_failure}")
        ok(
            f"verified: {report.entries} entries, {report.signatures} envelope signatures, "
            f"{report.checkpoints} checkpoints, every chain link and Merkle root"
        )
        say(f"    (the same check: exchange audit verify {out} --hub-verifier '{verifier}')")

    async def stop_hub(self) -> None:
        for client in self.clients:
            await client.close()
        self.clients.clear()
        if self.hub is not None:
            await self.hub.stop(grace=2.0)
            self.hub = None

    async def stop(self) -> None:
        await self.stop_hub()
        for adapter in self.adapters:
            await adapter.stop(1.0)
        self.adapters.clear()


def demo_ids() -> list[str]:
    """The ids the demo uses, to copy into other commands."""
    return [
        "Ids to use with the CLI:",
        f"  departments  {data.PUBLIC_SECURITY}, {data.CIVIL_AFFAIRS}, "
        f"{data.MARKET_REGULATION}, {data.TOWNSHIP} (form tool, collector), {SUPERVISION} "
        f"(auditor, supervisor), {IDENTITY} (development identity provider), "
        f"{HUB_ID} (the operator)",
        f"  subjects     {data.ZHANG_SAN} (张三), {data.LI_SI} (李四), {data.WANG_WU} (王五)",
        f"  types        {data.HOUSEHOLD}, {data.MARRIAGE}, {data.LICENCE}, {data.BIOMETRICS}",
        f"  purposes     {SUBSIDY}, {LICENCE_REVIEW}",
        f"  form         {data.FORM_ID}",
    ]


def off_hours_note(config: Config, now: datetime | None = None) -> str:
    """Why the off-hours alert is, or is not, in the list: it depends on the time of day."""
    rules = config.supervision
    offset = timedelta(minutes=rules.utc_offset_minutes)
    local = (now or datetime.now(UTC)).astimezone(timezone(offset))
    hours = f"{rules.office_hours_start:02d}:00–{rules.office_hours_end:02d}:00"
    within = rules.office_hours_start <= local.hour < rules.office_hours_end and not (
        rules.weekends_off and local.weekday() >= 5
    )
    zone = (
        f"UTC{'+' if rules.utc_offset_minutes >= 0 else '-'}{abs(rules.utc_offset_minutes) // 60}"
    )
    return f"    (it is {local:%a %H:%M} {zone}: " + (
        f"within office hours {hours}, so no off-hours alert for the conditional request)"
        if within
        else f"outside office hours {hours}, so the conditional request raised an off-hours alert)"
    )


async def _demo(root: Path, port: int, keep_running: bool, web_port: int | None) -> None:
    story = Story(root, port)
    web = None
    try:
        await story.setup()
        await story.tell()
        await story.oversight()
        if keep_running:
            say()
            say(f"Hub on 127.0.0.1:{story.hub.port}, keys in {story.keystore.root}.", bold=True)
            for line in demo_ids():
                say(line)
            say(
                f"Try: exchange registry list --listen 127.0.0.1:{story.hub.port} "
                f"--keys-dir {story.keystore.root}"
            )
            say(
                f"     exchange person assert {data.ZHANG_SAN} --as {IDENTITY} "
                f"--audience {data.TOWNSHIP} --out zhang-san.assertion "
                f"--keys-dir {story.keystore.root}"
            )
            say(
                f"     exchange prefill {data.FORM_ID} {data.ZHANG_SAN} "
                f"--assertion zhang-san.assertion --as {data.TOWNSHIP} "
                f"--listen 127.0.0.1:{story.hub.port} --keys-dir {story.keystore.root}"
            )
            if web_port is not None:
                from exchange.cli import demo_web

                web = await demo_web.start_web(
                    story.client(HUB_ID),
                    story.keystore,
                    f"127.0.0.1:{story.hub.port}",
                    story.hub.hub.ledger.verifier_key,
                    root,
                    web_port,
                    IDENTITY,
                )
                url = web.server.url
                say("The web pages (open in a browser):", bold=True)
                say(f"    counter (基层窗口): {url}/counter   clerk / {demo_web.CLERK_PASSWORD}")
                say(f"    my data (我的数据): {url}/me        e.g. 王五 {data.WANG_WU}")
            say("Ctrl-C (or SIGTERM) stops everything.")
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            with contextlib.suppress(asyncio.CancelledError):
                await stop.wait()
            return
        await story.audit()
    finally:
        if web is not None:
            await web.stop()
        await story.stop()
    say()
    say("Demo complete: everything it started has stopped.", bold=True)


@click.command()
@click.option(
    "--dir",
    "root",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("var/demo"),
    show_default=True,
    help="Where the demo writes its keys and databases (replaced on each run).",
)
@click.option("--port", default=0, help="Hub port (0: any free port).")
@click.option("--keep-running", is_flag=True, help="Leave the hub and adapters up for the CLI.")
@click.option(
    "--web-port",
    default=8080,
    show_default=True,
    help="With --keep-running: serve the counter and my data pages here (0: any free port).",
)
@click.option("--no-web", is_flag=True, help="With --keep-running: do not serve the web pages.")
def demo(root: Path, port: int, keep_running: bool, web_port: int, no_web: bool) -> None:
    """Run the whole story: prefill, collect once, grants, refusals, history, audit."""
    from exchange import logs

    logs.configure("error", "console")
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    say("gov-exchange demo — collect once, share many times; every access on the ledger", bold=True)
    try:
        run(_demo(root, port, keep_running, None if no_web else web_port))
    except KeyboardInterrupt:
        say("stopped")


COMMANDS = [demo]
