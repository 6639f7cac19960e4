"""``exchange check|submit|request|prefill|grant|catalog``: the exchange flows from a terminal.

Each command acts as one department (``--as``; the hub id means the operator), signing with that
department's key and presenting its certificate from the keystore, through the client SDK
(``adapters.client.HubClient``): the same envelopes, retries and end-to-end verification as any
department system. With ``--hub-verifier`` every receipt is checked against the hub's key.

Exit codes: 0 served; 1 a local failure (keys, verification, the hub not answering); 2 the hub
refused (``refused: CODE REASON: message`` on stderr); 2 also for click's usage errors. Subject
ids are arguments the user typed: they are printed back only where asked, and never logged.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from google.protobuf.message import Message

from adapters.client import HubClient, Identity, Refused, VerificationError
from adapters.identity import IdentityError, parse_assertion
from exchange.cli import flows_output as out
from exchange.cli.main import call_failed, fail, load_config, run, with_options
from exchange.cli.material_file import MaterialFileError, load_material_type
from exchange.clock import now_us, to_timestamp
from exchange.config import Config
from exchange.crypto.keys import KeyFileError
from exchange.crypto.keystore import Keystore, check_department_id
from exchange.ledger import CheckpointError, NoteVerifier
from exchange.v1 import catalog_pb2, envelope_pb2, grants_pb2

T = TypeVar("T")
Response = TypeVar("Response", bound=Message)

EXCHANGE = "/exchange.v1.Exchange"
CATALOG = "/exchange.v1.Catalog"
GRANTS = "/exchange.v1.Grants"
SERVER_NAME = "localhost"  # the name in the hub's certificate, as the registry commands use
DAY_US = 86_400_000_000


# ------------------------------------------------------------------------------ calling


@dataclass(frozen=True, slots=True)
class Caller:
    """Who calls the hub (a department, or the operator as the hub id), where, and whether
    receipts are verified (``hub_verifier``)."""

    config: Config
    department_id: str
    hub_verifier: str | None

    def client(self) -> HubClient:
        """A client signing as the department or the operator. Raises KeyFileError."""
        store = Keystore(self.config.keys_dir)
        if self.department_id == self.config.hub_id:
            key = store.operator_signing_key()
            tls = None if self.config.insecure else store.operator_tls()
        else:
            key = store.department_signing_key(self.department_id)
            tls = None if self.config.insecure else store.department_tls(self.department_id)
        return HubClient(
            self.config.listen,
            Identity(self.department_id, key, tls),
            server_name=SERVER_NAME,
            hub_verifier=self.hub_verifier,
        )

    def perform(self, action: Callable[[HubClient], Awaitable[T]]) -> T:
        """Run ``action`` with a client and return its result.

        Never returns on failure: a refusal prints ``refused: CODE REASON: message`` and exits
        2; a call no hub answered (no reason attached), a failed verification or a key file
        problem prints ``error: …`` and exits 1.
        """

        async def go() -> T:
            async with self.client() as client:
                return await action(client)

        try:
            return run(go())
        except Refused as exc:
            call_failed(exc, self.config.listen)
        except VerificationError as exc:
            _fail(f"verification failed: {exc}")
        except KeyFileError as exc:
            _fail(str(exc))

    def call(self, method: str, body: Message, response: type[Response]) -> Response:
        """Sign ``body`` and call ``method`` ("/exchange.v1.Catalog/ListCatalog"); return the
        answer. Exits as ``perform`` does on failure."""
        return self.perform(lambda client: client.call(method, body, response))


def _fail(message: str) -> NoReturn:
    fail(message)


# ------------------------------------------------------------------------------ options


def _department(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    try:
        return check_department_id(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def _verifier(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        try:
            NoteVerifier.parse(value)
        except CheckpointError as exc:
            raise click.BadParameter(str(exc)) from exc
    return value


CALLER_OPTIONS = (
    click.option(
        "--as",
        "department",
        required=True,
        callback=_department,
        metavar="DEPARTMENT",
        help="The department whose keystore keys sign the call (the hub id: the operator).",
    ),
    click.option("--listen", default=None, help="host:port of the hub."),
    click.option(
        "--keys-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="The keystore root.",
    ),
    click.option(
        "--hub-verifier",
        default=None,
        callback=_verifier,
        help="The hub's verifier key <name>+<hex id>+<base64 key>: receipts are then verified.",
    ),
    click.option("--json", "as_json", is_flag=True, help="Print JSON instead of lines."),
)

Command = Callable[..., None]


def with_caller(function: Command) -> Command:
    """Add --as, --listen, --keys-dir, --hub-verifier and --json to a command, and call it with
    a ``Caller`` (configuration loaded once: file < environment < flags) and ``as_json``."""

    @functools.wraps(function)
    @click.pass_context
    def command(
        ctx: click.Context,
        /,
        *args: Any,
        department: str,
        listen: str | None,
        keys_dir: Path | None,
        hub_verifier: str | None,
        **kwargs: Any,
    ) -> None:
        config = load_config(ctx, listen=listen, keys_dir=keys_dir)
        function(Caller(config, department, hub_verifier), *args, **kwargs)

    decorated: Command = with_options(*CALLER_OPTIONS)(command)
    return decorated


def read_assertion(path: Path) -> envelope_pb2.Envelope:
    """The subject assertion in ``path`` (written by ``exchange person assert`` or a real
    identity provider's bridge). Raises click.BadParameter if it is not one."""
    try:
        return parse_assertion(path.read_bytes())
    except (OSError, IdentityError) as exc:
        raise click.BadParameter(f"{path}: {exc}", param_hint="--assertion") from exc


def assertion_option(required: bool) -> Callable[[Command], Command]:
    """The --assertion FILE option of the calls made for a person."""
    return click.option(
        "--assertion",
        "assertion_path",
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        required=required,
        help="The person's subject assertion (a file from their identity provider; "
        "`exchange person assert` makes one on a development hub).",
    )


# ------------------------------------------------------------------------------ the flows


@click.command()
@click.argument("material_type")
@click.argument("subject_id")
@assertion_option(required=False)
@click.option(
    "--purpose",
    default="",
    help="A legal-basis purpose under which a form tool checks without the person "
    "(it must hold a grant naming it).",
)
@with_caller
def check(
    caller: Caller,
    material_type: str,
    subject_id: str,
    assertion_path: Path | None,
    purpose: str,
    as_json: bool,
) -> None:
    """Is material of MATERIAL_TYPE on file for SUBJECT_ID? Never shows content.

    A form tool checks for a person with their --assertion, or under a granted --purpose."""
    assertion = read_assertion(assertion_path) if assertion_path is not None else None
    result = caller.perform(
        lambda client: client.check(material_type, subject_id, assertion=assertion, purpose=purpose)
    )
    if as_json:
        out.echo_json(out.check_as_dict(material_type, result))
    elif result.on_file:
        click.echo(
            f"on file: {material_type} v{result.version} held by {result.holder} "
            f"(reference {result.reference}; {out.ledger(result.receipt)})"
        )
    else:
        holder = f" at {result.holder}" if result.holder else ""
        click.echo(f"not on file: {material_type}{holder} ({out.ledger(result.receipt)})")


def field_values(values: tuple[str, ...]) -> dict[str, str]:
    """``name=value`` arguments as a mapping. Raises click.BadParameter (a usage error)."""
    fields: dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{item!r} is not name=value", param_hint="FIELD=VALUE")
        if name in fields:
            raise click.BadParameter(f"field {name!r} given twice", param_hint="FIELD=VALUE")
        fields[name] = value
    if not fields:
        raise click.BadParameter("give at least one field", param_hint="FIELD=VALUE")
    return fields


@click.command()
@click.argument("material_type")
@click.argument("subject_id")
@click.argument("values", nargs=-1, metavar="FIELD=VALUE...")
@assertion_option(required=False)
@with_caller
def submit(
    caller: Caller,
    material_type: str,
    subject_id: str,
    values: tuple[str, ...],
    assertion_path: Path | None,
    as_json: bool,
) -> None:
    """Submit material collected from the person (collect once); the holder stores it.

    A form tool submits for the person with their --assertion."""
    fields = field_values(values)
    assertion = read_assertion(assertion_path) if assertion_path is not None else None
    result = caller.perform(
        lambda client: client.submit(material_type, subject_id, fields, assertion=assertion)
    )
    if as_json:
        out.echo_json(out.submit_as_dict(material_type, result))
        return
    click.echo(
        f"{result.outcome}: {material_type} reference {result.reference} v{result.version} "
        f"({out.ledger(result.receipt)})"
    )
    if result.objection_id:
        click.echo(f"objection {result.objection_id} filed with the holder")


@click.command()
@click.argument("material_type")
@click.argument("subject_id")
@click.option("--purpose", required=True, help="The catalogued purpose (legal basis).")
@click.option(
    "--field",
    "fields",
    multiple=True,
    help="A field to receive (repeatable; default every field the grant allows).",
)
@with_caller
def request(
    caller: Caller,
    material_type: str,
    subject_id: str,
    purpose: str,
    fields: tuple[str, ...],
    as_json: bool,
) -> None:
    """Request material from its holder for a purpose, verified end to end."""
    material = caller.perform(
        lambda client: client.request(material_type, subject_id, purpose=purpose, fields=fields)
    )
    if as_json:
        out.echo_json(out.material_as_dict(material))
        return
    click.echo(
        f"served: {material.material_type} v{material.version} signed by {material.holder} "
        f"(reference {material.reference}; {out.ledger(material.receipt)})"
    )
    for name, value in sorted(material.fields.items()):
        click.echo(f"  {name:24} {value}")


@click.command()
@click.argument("form_id")
@click.argument("subject_id")
@assertion_option(required=True)
@with_caller
def prefill(
    caller: Caller, form_id: str, subject_id: str, assertion_path: Path, as_json: bool
) -> None:
    """Prefill a registered form for a person who authenticated to this form tool: each value
    with its source (authoritative or person-provided), and what is left to ask (the preview
    to show the person before the form is used)."""
    assertion = read_assertion(assertion_path)
    result = caller.perform(lambda client: client.prefill(form_id, subject_id, assertion=assertion))
    if as_json:
        out.echo_json(out.prefill_as_dict(form_id, result))
        return
    for value in result.fields:
        source = "authoritative" if value.source_class == "AUTHORITATIVE" else "person-provided"
        click.echo(
            f"  {value.name:24} = {value.value}  <- {value.holder} "
            f"({value.material_type} v{value.version}, {source})"
        )
    for name in result.missing:
        click.echo(f"  {name:24}   (not on file: ask the person)")
    for name in out.prefill_withheld(result):
        click.echo(f"  {name:24}   (on file, not granted to this form: ask the person)")
    for name in out.prefill_unavailable(result):
        click.echo(f"  {name:24}   (holder did not answer: retry later)")
    click.echo(
        f"{form_id}: {len(result.fields)} prefilled, {len(result.missing)} missing "
        f"({out.ledger(result.receipt)})"
    )


# ------------------------------------------------------------------------------ grants


@click.group()
def grant() -> None:
    """Grants: an owner's permission for a consumer to request CONDITIONAL material."""


@grant.command("issue")
@click.argument("consumer")
@click.argument("material_type")
@click.option("--field", "fields", multiple=True, required=True, help="A field (repeatable).")
@click.option("--purpose", "purposes", multiple=True, required=True, help="A purpose (repeatable).")
@click.option("--days", type=click.IntRange(1, 36_500), default=None, help="Valid for N days.")
@click.option(
    "--rate-per-minute", type=click.IntRange(0), default=0, help="Requests a minute; 0: no limit."
)
@with_caller
def grant_issue(
    caller: Caller,
    consumer: str,
    material_type: str,
    fields: tuple[str, ...],
    purposes: tuple[str, ...],
    days: int | None,
    rate_per_minute: int,
    as_json: bool,
) -> None:
    """Issue a grant to CONSUMER for MATERIAL_TYPE, signed as its owner (--as)."""
    body = grants_pb2.IssueGrantRequest(
        grant=grants_pb2.Grant(
            consumer=consumer,
            material_type=material_type,
            fields=list(fields),
            purposes=list(purposes),
            rate_per_minute=rate_per_minute,
        )
    )
    if days is not None:  # valid_from stays unset: the grant starts when the hub records it
        body.grant.valid_until.CopyFrom(to_timestamp(now_us() + days * DAY_US))
    answer = caller.call(f"{GRANTS}/IssueGrant", body, grants_pb2.GrantResponse)
    if as_json:
        out.echo_json(out.grant_as_dict(answer.grant))
        return
    out.show_grant(answer.grant)
    click.echo(f"issued (ledger entry #{answer.receipt.sequence})")


@grant.command("revoke")
@click.argument("grant_id")
@with_caller
def grant_revoke(caller: Caller, grant_id: str, as_json: bool) -> None:
    """Revoke a grant at once (its owner only)."""
    body = grants_pb2.RevokeGrantRequest(grant_id=grant_id)
    answer = caller.call(f"{GRANTS}/RevokeGrant", body, grants_pb2.GrantResponse)
    if as_json:
        out.echo_json(out.grant_as_dict(answer.grant))
        return
    out.show_grant(answer.grant)
    click.echo(f"revoked (ledger entry #{answer.receipt.sequence})")


@grant.command("list")
@with_caller
def grant_list(caller: Caller, as_json: bool) -> None:
    """List the grants the department issued or holds."""
    answer = caller.call(
        f"{GRANTS}/ListGrants", grants_pb2.ListGrantsRequest(), grants_pb2.ListGrantsResponse
    )
    if as_json:
        out.echo_json([out.grant_as_dict(g) for g in answer.grants])
        return
    for item in answer.grants:
        out.show_grant(item)
    if not answer.grants:
        click.echo("no grants")


# ------------------------------------------------------------------------------ catalog


@click.group()
def catalog() -> None:
    """The catalog (数据资源目录): material types, purposes, forms."""


@catalog.command("list")
@with_caller
def catalog_list(caller: Caller, as_json: bool) -> None:
    """List material types, purposes and forms."""
    answer = caller.call(
        f"{CATALOG}/ListCatalog", catalog_pb2.ListCatalogRequest(), catalog_pb2.ListCatalogResponse
    )
    if as_json:
        out.echo_json(out.catalog_as_dict(answer))
        return
    click.echo(f"material types ({len(answer.material_types)})")
    for m in answer.material_types:
        sharing = catalog_pb2.SharingClass.Name(m.sharing_class)
        click.echo(f"  {m.id:32} v{m.version:<3} {sharing:13} {m.owner:32} {m.name}")
    click.echo(f"purposes ({len(answer.purposes)})")
    for p in answer.purposes:
        click.echo(f"  {p.id:32} {p.name} ({p.legal_basis})")
    click.echo(f"forms ({len(answer.forms)})")
    for f in answer.forms:
        click.echo(f"  {f.id:32} {len(f.fields)} fields, for {f.purpose}, by {f.owner}")


@catalog.command("show")
@click.argument("material_type")
@with_caller
def catalog_show(caller: Caller, material_type: str, as_json: bool) -> None:
    """Show one material type: owner, sharing class, retention, fields."""
    body = catalog_pb2.GetMaterialTypeRequest(material_type=material_type)
    answer = caller.call(f"{CATALOG}/GetMaterialType", body, catalog_pb2.MaterialTypeResponse)
    if as_json:
        out.echo_json(out.material_type_as_dict(answer.material_type))
    else:
        out.show_material_type(answer.material_type)


@catalog.command("publish")
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@with_caller
def catalog_publish(caller: Caller, file: Path, as_json: bool) -> None:
    """Publish a material type from a .toml or .json FILE, as its owner (--as)."""
    try:
        definition = load_material_type(file, default_owner=caller.department_id)
    except MaterialFileError as exc:
        raise click.BadParameter(str(exc), param_hint="FILE") from exc
    body = catalog_pb2.PublishMaterialTypeRequest(material_type=definition)
    answer = caller.call(f"{CATALOG}/PublishMaterialType", body, catalog_pb2.MaterialTypeResponse)
    if as_json:
        out.echo_json(out.material_type_as_dict(answer.material_type))
        return
    out.show_material_type(answer.material_type)
    click.echo(f"published (ledger entry #{answer.receipt.sequence})")


@catalog.command("purpose")
@click.argument("purpose_id")
@click.option("--name", required=True, help="Human-readable name.")
@click.option("--legal-basis", required=True, help="The law or regulation that allows it.")
@with_caller
def catalog_purpose(
    caller: Caller, purpose_id: str, name: str, legal_basis: str, as_json: bool
) -> None:
    """Define a purpose: the legal basis requests name (operator: --as the hub id)."""
    body = catalog_pb2.DefinePurposeRequest(
        purpose=catalog_pb2.Purpose(id=purpose_id, name=name, legal_basis=legal_basis)
    )
    answer = caller.call(f"{CATALOG}/DefinePurpose", body, catalog_pb2.PurposeResponse)
    if as_json:
        out.echo_json(out.purpose_as_dict(answer.purpose))
        return
    p = answer.purpose
    click.echo(f"purpose {p.id}: {p.name} ({p.legal_basis})")
    click.echo(f"defined (ledger entry #{answer.receipt.sequence})")


COMMANDS = [check, submit, request, prefill, grant, catalog]
