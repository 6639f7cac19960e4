"""``exchange history``, ``exchange objection file|list|resolve`` and ``exchange form
register|show``: the flows around a person and the forms asked of them.

Like the other flow commands (flows_commands.py), each acts as one department (``--as``) through
the client SDK, and shares its options, output and exit codes (docs/cli.md).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from adapters.client import HubClient
from exchange.cli import flows_output as out
from exchange.cli.flows_commands import (
    EXCHANGE,
    Caller,
    Command,
    assertion_option,
    field_values,
    read_assertion,
    with_caller,
)
from exchange.cli.main import with_options
from exchange.cli.material_file import MaterialFileError, load_form
from exchange.ledger import Receipt
from exchange.v1 import catalog_pb2, exchange_pb2

CATALOG = "/exchange.v1.Catalog"


# ------------------------------------------------------------------------------ objections


def objection_as_dict(objection: exchange_pb2.Objection) -> dict[str, Any]:
    """An objection as the JSON output."""
    return {
        "id": objection.id,
        "material_type": objection.material_type,
        "reference": objection.reference,
        "owner": objection.owner,
        "filed_by": objection.filed_by,
        "reason": objection.reason,
        "proposed_fields": dict(sorted(objection.proposed_fields.items())),
        "state": exchange_pb2.ObjectionState.Name(objection.state),
        "filed_at": out.iso(objection.filed_at.seconds * 1_000_000),
        "deadline": out.iso(objection.deadline.seconds * 1_000_000),
        "resolution": objection.resolution,
    }


def show_objection(objection: exchange_pb2.Objection) -> None:
    value = objection_as_dict(objection)
    click.echo(
        f"{value['id']}  {value['state']:9} {value['material_type']} held by {value['owner']}, "
        f"filed by {value['filed_by']} {value['filed_at']}, answer due {value['deadline']}"
    )
    click.echo(f"  reason: {value['reason']}")
    for name, proposed in value["proposed_fields"].items():
        click.echo(f"  proposed {name} = {proposed}")
    if value["resolution"]:
        click.echo(f"  answer: {value['resolution']}")


@click.group()
def objection() -> None:
    """Objections to material on file: file one, list them, answer one (the holder)."""


def objection_arguments(*, assertion_required: bool) -> Callable[[Command], Command]:
    """MATERIAL_TYPE SUBJECT_ID --reason --propose --assertion: ``objection file`` and
    ``person object`` take the same arguments (the person's assertion required there)."""

    return with_options(
        click.argument("material_type"),
        click.argument("subject_id"),
        click.option("--reason", required=True, help="Why the material is wrong."),
        click.option(
            "--propose",
            "proposed",
            multiple=True,
            metavar="FIELD=VALUE",
            help="A corrected value to propose (repeatable).",
        ),
        assertion_option(required=assertion_required),
    )


def file_objection(
    caller: Caller,
    material_type: str,
    subject_id: str,
    reason: str,
    proposed: tuple[str, ...],
    assertion_path: Path | None,
) -> tuple[exchange_pb2.Objection, Receipt]:
    """File one objection (FileObjection); the objection filed and its checked receipt."""
    body = exchange_pb2.FileObjectionRequest(
        material_type=material_type,
        subject_id=subject_id,
        reason=reason,
        proposed_fields=field_values(proposed) if proposed else {},
    )
    if assertion_path is not None:
        body.assertion.CopyFrom(read_assertion(assertion_path))

    async def file(client: HubClient) -> tuple[exchange_pb2.Objection, Receipt]:
        filed = await client.call(f"{EXCHANGE}/FileObjection", body, exchange_pb2.ObjectionResponse)
        return filed.objection, client.verify_receipt(filed.receipt)

    return caller.perform(file)


@objection.command("file")
@objection_arguments(assertion_required=False)
@with_caller
def objection_file(
    caller: Caller,
    material_type: str,
    subject_id: str,
    reason: str,
    proposed: tuple[str, ...],
    assertion_path: Path | None,
    as_json: bool,
) -> None:
    """File an objection against SUBJECT_ID's MATERIAL_TYPE; its holder must answer.

    A form tool filing for the person passes their --assertion; a consumer objecting on its
    own account leaves it out.
    """
    filed, receipt = file_objection(
        caller, material_type, subject_id, reason, proposed, assertion_path
    )
    if as_json:
        out.echo_json(objection_as_dict(filed))
        return
    show_objection(filed)
    click.echo(f"filed ({out.ledger(receipt)})")


@objection.command("list")
@click.option("--open", "open_only", is_flag=True, help="Only objections still waiting.")
@with_caller
def objection_list(caller: Caller, open_only: bool, as_json: bool) -> None:
    """List the objections the department filed or must answer."""
    body = exchange_pb2.ListObjectionsRequest(open_only=open_only)
    answer = caller.call(f"{EXCHANGE}/ListObjections", body, exchange_pb2.ListObjectionsResponse)
    if as_json:
        out.echo_json([objection_as_dict(o) for o in answer.objections])
        return
    for item in answer.objections:
        show_objection(item)
    if not answer.objections:
        click.echo("no objections")


@objection.command("resolve")
@click.argument("objection_id")
@click.option(
    "--state",
    type=click.Choice(["corrected", "rejected"]),
    required=True,
    help="corrected: a new version with --field values; rejected: --answer says why.",
)
@click.option("--answer", "resolution", default="", help="The holder's answer (for rejected).")
@click.option(
    "--field",
    "corrected",
    multiple=True,
    metavar="FIELD=VALUE",
    help="A corrected value (repeatable; for corrected).",
)
@with_caller
def objection_resolve(
    caller: Caller,
    objection_id: str,
    state: str,
    resolution: str,
    corrected: tuple[str, ...],
    as_json: bool,
) -> None:
    """Answer an objection as the material's holder: correct it or reject it with a reason."""
    body = exchange_pb2.ResolveObjectionRequest(
        objection_id=objection_id,
        state=exchange_pb2.ObjectionState.Value(state.upper()),
        resolution=resolution,
        corrected_fields=field_values(corrected) if corrected else {},
    )
    answer = caller.call(f"{EXCHANGE}/ResolveObjection", body, exchange_pb2.ObjectionResponse)
    if as_json:
        out.echo_json(objection_as_dict(answer.objection))
        return
    show_objection(answer.objection)
    click.echo(f"resolved ({'ledger entry #' + str(answer.receipt.sequence)})")


# ------------------------------------------------------------------------------ forms


def form_as_dict(form: catalog_pb2.Form) -> dict[str, Any]:
    """A form as the JSON output."""
    return {
        "id": form.id,
        "name": form.name,
        "owner": form.owner,
        "purpose": form.purpose,
        "fields": [
            {
                "name": f.name,
                "label": f.label,
                "material_type": f.material_type,
                "material_field": f.material_field,
            }
            for f in form.fields
        ],
    }


def show_form(form: catalog_pb2.Form) -> None:
    click.echo(f"{form.id}: {form.name} (by {form.owner}, for {form.purpose})")
    for f in form.fields:
        source = (
            f"{f.material_type}.{f.material_field}" if f.material_type else "asked of the person"
        )
        click.echo(f"  {f.name:24} {source:48} {f.label}")


@click.group()
def form() -> None:
    """Forms (一表通): the unit of prefill, registered by a form tool or the operator."""


@form.command("register")
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@with_caller
def form_register(caller: Caller, file: Path, as_json: bool) -> None:
    """Register or update a form from a .toml or .json FILE (docs/cli.md shows one)."""
    try:
        definition = load_form(file)
    except MaterialFileError as exc:
        raise click.BadParameter(str(exc), param_hint="FILE") from exc
    body = catalog_pb2.RegisterFormRequest(form=definition)
    answer = caller.call(f"{CATALOG}/RegisterForm", body, catalog_pb2.FormResponse)
    if as_json:
        out.echo_json(form_as_dict(answer.form))
        return
    show_form(answer.form)
    click.echo(f"registered ({'ledger entry #' + str(answer.receipt.sequence)})")


@form.command("show")
@click.argument("form_id")
@with_caller
def form_show(caller: Caller, form_id: str, as_json: bool) -> None:
    """Show a registered form: each field and the material field it is prefilled from."""
    body = catalog_pb2.GetFormRequest(form_id=form_id)
    answer = caller.call(f"{CATALOG}/GetForm", body, catalog_pb2.FormResponse)
    if as_json:
        out.echo_json(form_as_dict(answer.form))
    else:
        show_form(answer.form)
