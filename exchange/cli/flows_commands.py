"""``exchange check|submit|request|prefill|grant|catalog``: the exchange flows from a terminal.

Each command acts as one department (``--as``; the hub id means the operator), signing with that
department's key and presenting its certificate from the keystore, through the client SDK
(``adapters.client.HubClient``): the same envelopes, retries and end-to-end verification as any
department system. With ``--hub-verifier`` every receipt is checked against the hub's key.

Exit codes: 0 served; 1 a local error (keys, verification, the hub unreachable); 2 the hub
refused (``refused: CODE REASON: message`` on stderr); click's usage error for bad arguments.
Subject ids are arguments the user typed; nothing here logs them.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from adapters.client import (
    CheckResult,
    HubClient,
    Identity,
    Material,
    Prefill,
    Refused,
    SubmitResult,
    VerificationError,
)
from exchange.cli.main import fail, load_config, run
from exchange.cli.material_file import MaterialFileError, load_material_type
from exchange.clock import from_timestamp, now_us, to_timestamp
from exchange.config import Config
from exchange.crypto.keys import KeyFileError
from exchange.crypto.keystore import Keystore, check_department_id
from exchange.ledger import CheckpointError, NoteVerifier, Receipt
from exchange.v1 import catalog_pb2, grants_pb2

T = TypeVar("T")

CATALOG = "/exchange.v1.Catalog"
GRANTS = "/exchange.v1.Grants"
SERVER_NAME = "localhost"  # the name the hub's certificate carries (as the registry commands)
DAY_US = 86_400_000_000

REFUSED_EXIT = 2


# ------------------------------------------------------------------------------ options


def _department(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    try:
        return check_department_id(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def _verifier(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        NoteVerifier.parse(value)
    except CheckpointError as exc:
        raise click.BadParameter(str(exc)) from exc
    return value


caller_options = [
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
        help="The hub's verifier key <name>+<hex id>+<base64 key>; receipts are then verified.",
    ),
]

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def with_caller_options(function: Any) -> Any:
    """Add --as, --listen, --keys-dir and --hub-verifier to a command."""
    for option in reversed(caller_options):
        function = option(function)
    return function


# ------------------------------------------------------------------------------ calling


@dataclass(frozen=True, slots=True)
class Caller:
    """Who calls the hub, where, and whether receipts are verified."""

    config: Config
    department_id: str
    hub_verifier: str | None

    def client(self) -> HubClient:
        """A client signing as the department (or the operator). Raises KeyFileError."""
        store = Keystore(self.config.keys_dir)
        if self.department_id == self.config.hub_id:
            key = store.hub_signing_key()
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
        """Run ``action`` with a client; turn refusals and local failures into exits 2 and 1."""

        async def go() -> T:
            async with self.client() as client:
                return await action(client)

        try:
            return run(go())
        except Refused as exc:
            if not exc.reason:  # no ErrorInfo: the call never reached a hub that answered
                _fail(f"the hub at {self.config.listen} did not answer: {exc}")
            click.secho(
                f"refused: {exc.code.name} {exc.reason}: {exc.message}", fg="yellow", err=True
            )
            sys.exit(REFUSED_EXIT)
        except VerificationError as exc:
            _fail(f"verification failed: {exc}")
        except KeyFileError as exc:
            _fail(str(exc))


def _fail(message: str) -> NoReturn:
    fail(message)
    raise SystemExit(1)  # fail() exits; this informs the type checker


def _caller(
    ctx: click.Context,
    department: str,
    listen: str | None,
    keys_dir: Path | None,
    hub_verifier: str | None,
) -> Caller:
    return Caller(load_config(ctx, listen=listen, keys_dir=keys_dir), department, hub_verifier)


def _echo_json(value: object) -> None:
    click.echo(json.dumps(value, ensure_ascii=False, indent=2))


def _iso(us: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(us / 1e6, tz=UTC).isoformat(timespec="seconds")


def _ledger(receipt: Receipt | None) -> str:
    return f"ledger entry #{receipt.sequence}" if receipt is not None else ""


# ------------------------------------------------------------------------------ the flows


@click.command()
@click.argument("material_type")
@click.argument("subject_id")
@with_caller_options
@json_option
@click.pass_context
def check(
    ctx: click.Context,
    material_type: str,
    subject_id: str,
    department: str,
    listen: str | None,
    keys_dir: Path | None,
    hub_verifier: str | None,
    as_json: bool,
) -> None:
    """Is material of MATERIAL_TYPE on file for SUBJECT_ID? Never shows content."""
    caller = _caller(ctx, department, listen, keys_dir, hub_verifier)
    result = caller.perform(lambda client: client.check(material_type, subject_id))
    if as_json:
        _echo_json(check_as_dict(material_type, result))
    elif result.on_file:
        click.echo(
            f"on file: {material_type} v{result.version} held by {result.holder} "
            f"(reference {result.reference}; {_ledger(result.receipt)})"
        )
    else:
        click.echo(f"not on file: {material_type} ({_ledger(result.receipt)})")


def _field_values(values: tuple[str, ...]) -> dict[str, str]:
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
@with_caller_options
@json_option
@click.pass_context
def submit(
    ctx: click.Context,
    material_type: str,
    subject_id: str,
    values: tuple[str, ...],
    department: str,
    listen: str | None,
    keys_dir: Path | None,
    hub_verifier: str | None,
    as_json: bool,
) -> None:
    """Submit material collected from the person (collect once): stored at its holder."""
    fields = _field_values(values)
    caller = _caller(ctx, department, listen, keys_dir, hub_verifier)
    result = caller.perform(lambda client: client.submit(material_type, subject_id, fields))
    if as_json:
        _echo_json(submit_as_dict(material_type, result))
        return
    click.echo(
        f"{result.outcome}: {material_type} reference {result.reference} v{result.version} "
        f"({_ledger(result.receipt)})"
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
@with_caller_options
@json_option
@click.pass_context
def request(
    ctx: click.Context,
    material_type: str,
    subject_id: str,
    purpose: str,
    fields: tuple[str, ...],
    department: str,
    listen: str | None,
    keys_dir: Path | None,
    hub_verifier: str | None,
    as_json: bool,
) -> None:
    """Request material from its holder for a purpose; the answer is verified end to end."""
    caller = _caller(ctx, department, listen, keys_dir, hub_verifier)
    material = caller.perform(
        lambda client: client.request(material_type, subject_id, purpose=purpose, fields=fields)
    )
    if as_json:
        _echo_json(material_as_dict(material))
        return
    click.echo(
        f"served: {material.material_type} v{material.version} signed by {material.holder} "
        f"(reference {material.reference}; {_ledger(material.receipt)})"
    )
    for name, value in sorted(material.fields.items()):
        click.echo(f"  {name:24} {value}")


@click.command()
@click.argument("form_id")
@click.argument("subject_id")
@with_caller_options
@json_option
@click.pass_context
def prefill(
    ctx: click.Context,
    form_id: str,
    subject_id: str,
    department: str,
    listen: str | None,
    keys_dir: Path | None,
    hub_verifier: str | None,
    as_json: bool,
) -> None:
    """Prefill a registered form: each value with its source, and what is left to ask."""
    caller = _caller(ctx, department, listen, keys_dir, hub_verifier)
    result = caller.perform(lambda client: client.prefill(form_id, subject_id))
    if as_json:
        _echo_json(prefill_as_dict(form_id, result))
        return
    for value in result.fields:
        click.echo(
            f"  {value.name:24} = {value.value}  <- {value.holder} "
            f"({value.material_type} v{value.version})"
        )
    for name in result.missing:
        click.echo(f"  {name:24}   (not on file: ask the person)")
    click.echo(
        f"{form_id}: {len(result.fields)} prefilled, {len(result.missing)} missing "
        f"({_ledger(result.receipt)})"
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
@click.option("--rate-per-minute", type=click.IntRange(0), default=0, help="0: no limit.")
@with_caller_options
@json_option
@click.pass_context
def grant_issue(
    ctx: click.Context,
    consumer: str,
    material_type: str,
    fields: tuple[str, ...],
    purposes: tuple[str, ...],
    days: int | None,
    rate_per_minute: int,
    department: str,
    listen: str | None,
    keys_dir: Path | None,
    hub_verifier: str | None,
    as_json: bool,
) -> None:
    """Issue a grant, signed as the owner (--as) of MATERIAL_TYPE."""
    caller = _caller(ctx, department, listen, keys_dir, hub_verifier)
    body = grants_pb2.IssueGrantRequest(
        grant=grants_pb2.Grant(
            consumer=consumer,
            material_type=material_type,
            fields=list(fields),
            purposes=list(purposes),
            rate_per_minute=rate_per_minute,
        )
    )
    if days is not None:  # validity starts when the hub records it
        body.grant.valid_until.CopyFrom(to_timestamp(now_us() + days * DAY_US))
    answer = caller.perform(
        lambda client: client.call(f"{GRANTS}/IssueGrant", body, grants_pb2.GrantResponse)
    )
    if as_json:
        _echo_json(grant_as_dict(answer.grant))
        return
    _show_grant(answer.grant)
    click.echo(f"issued: ledger entry #{answer.receipt.sequence}")


@grant.command("revoke")
@click.argument("grant_id")
@with_caller_options
@json_option
@click.pass_context
def grant_revoke(
    ctx: click.Context,
    grant_id: str,
    department: str,
    listen: str | None,
    keys_dir: Path | None,
    hub_verifier: str | None,
    as_json: bool,
) -> None:
    """Revoke a grant at once (its owner only)."""
    caller = _caller(ctx, department, listen, keys_dir, hub_verifier)
    body = grants_pb2.RevokeGrantRequest(grant_id=grant_id)
    answer = caller.perform(
        lambda client: client.call(f"{GRANTS}/RevokeGrant", body, grants_pb2.GrantResponse)
    )
    if as_json:
        _echo_json(grant_as_dict(answer.grant))
        return
    _show_grant(answer.grant)
    click.echo(f"revoked: ledger entry #{answer.receipt.sequence}")


@grant.command("list")
@with_caller_options
@json_option
@click.pass_context
def grant_list(
    ctx: click.Context,
    department: str,
    listen: str | None,
    keys_dir: Path | None,
    hub_verifier: str | None,
    as_json: bool,
) -> None:
    """List the grants the department issued or holds."""
    caller = _caller(ctx, department, listen, keys_dir, hub_verifier)
    answer = caller.perform(
        lambda client: client.call(
            f"{GRANTS}/ListGrants", grants_pb2.ListGrantsRequest(), grants_pb2.ListGrantsResponse
        )
    )
    if as_json:
        _echo_json([grant_as_dict(g) for g in answer.grants])
        return
    for item in answer.grants:
        _show_grant(item)
    if not answer.grants:
        click.echo("no grants")


# ------------------------------------------------------------------------------ catalog


@click.group()
def catalog() -> None:
    """The catalog (数据资源目录): material types, purposes, forms."""


@catalog.command("list")
@with_caller_options
@json_option
@click.pass_context
def catalog_list(
    ctx: click.Context,
    department: str,
    listen: str | None,
    keys_dir: Path | None,
    hub_verifier: str | None,
    as_json: bool,
) -> None:
    """List material types, purposes and forms."""
    caller = _caller(ctx, department, listen, keys_dir, hub_verifier)
    answer = caller.perform(
        lambda client: client.call(
            f"{CATALOG}/ListCatalog",
            catalog_pb2.ListCatalogRequest(),
            catalog_pb2.ListCatalogResponse,
        )
    )
    if as_json:
        _echo_json(catalog_as_dict(answer))
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


def _material_type_call(caller: Caller, method: str, body: Any) -> catalog_pb2.MaterialType:
    answer = caller.perform(
        lambda client: client.call(f"{CATALOG}/{method}", body, catalog_pb2.MaterialTypeResponse)
    )
    return answer.material_type


@catalog.command("show")
@click.argument("material_type")
@with_caller_options
@json_option
@click.pass_context
def catalog_show(
    ctx: click.Context,
    material_type: str,
    department: str,
    listen: str | None,
    keys_dir: Path | None,
    hub_verifier: str | None,
    as_json: bool,
) -> None:
    """Show one material type: owner, sharing class, fields."""
    caller = _caller(ctx, department, listen, keys_dir, hub_verifier)
    body = catalog_pb2.GetMaterialTypeRequest(material_type=material_type)
    value = _material_type_call(caller, "GetMaterialType", body)
    if as_json:
        _echo_json(material_type_as_dict(value))
    else:
        _show_material_type(value)


@catalog.command("publish")
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@with_caller_options
@json_option
@click.pass_context
def catalog_publish(
    ctx: click.Context,
    file: Path,
    department: str,
    listen: str | None,
    keys_dir: Path | None,
    hub_verifier: str | None,
    as_json: bool,
) -> None:
    """Publish a material type from a .toml or .json definition, as its owner (--as)."""
    try:
        definition = load_material_type(file, default_owner=department)
    except MaterialFileError as exc:
        raise click.BadParameter(str(exc), param_hint="FILE") from exc
    caller = _caller(ctx, department, listen, keys_dir, hub_verifier)
    body = catalog_pb2.PublishMaterialTypeRequest(material_type=definition)
    value = _material_type_call(caller, "PublishMaterialType", body)
    if as_json:
        _echo_json(material_type_as_dict(value))
    else:
        click.echo(f"published {value.id} v{value.version}")
        _show_material_type(value)


@catalog.command("purpose")
@click.argument("purpose_id")
@click.option("--name", required=True, help="Human-readable name.")
@click.option("--legal-basis", required=True, help="The law or regulation that allows it.")
@with_caller_options
@json_option
@click.pass_context
def catalog_purpose(
    ctx: click.Context,
    purpose_id: str,
    name: str,
    legal_basis: str,
    department: str,
    listen: str | None,
    keys_dir: Path | None,
    hub_verifier: str | None,
    as_json: bool,
) -> None:
    """Define a purpose (operator: --as the hub id)."""
    caller = _caller(ctx, department, listen, keys_dir, hub_verifier)
    body = catalog_pb2.DefinePurposeRequest(
        purpose=catalog_pb2.Purpose(id=purpose_id, name=name, legal_basis=legal_basis)
    )
    answer = caller.perform(
        lambda client: client.call(f"{CATALOG}/DefinePurpose", body, catalog_pb2.PurposeResponse)
    )
    purpose: Mapping[str, str] = {
        "id": answer.purpose.id,
        "name": answer.purpose.name,
        "legal_basis": answer.purpose.legal_basis,
    }
    if as_json:
        _echo_json(dict(purpose))
    else:
        click.echo(
            f"purpose {purpose['id']}: {purpose['name']} ({purpose['legal_basis']}); "
            f"ledger entry #{answer.receipt.sequence}"
        )


COMMANDS = [check, submit, request, prefill, grant, catalog]
