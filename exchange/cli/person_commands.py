"""``exchange person …``: the calls a form tool or portal makes for a person, from a terminal.

``person assert`` signs a subject assertion as a development identity provider (a member with
the IDENTITY_PROVIDER role whose keys are in the keystore) and writes it to a file readable by
its owner only: it names the person. Every other command sends such a file (``--assertion``)
with the call: the person's access history, an objection, consents, and the confirmation of a
completed form. Exit codes as for the other flow commands (0 served, 1 local failure, 2 refused).
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from adapters.client import Consent
from adapters.identity import Assurance, DevelopmentIdentityProvider
from exchange.cli import flows_output as out
from exchange.cli.flows_commands import Caller, assertion_option, read_assertion, with_caller
from exchange.cli.main import fail, load_config
from exchange.cli.records_commands import file_objection, objection_arguments
from exchange.clock import from_timestamp, now_us
from exchange.crypto.keys import KeyFileError
from exchange.crypto.keystore import Keystore, check_department_id
from exchange.v1 import exchange_pb2

DAY_US = 86_400_000_000
ASSURANCES = {a.name.lower().replace("_", "-"): a for a in Assurance}


def _pairs(values: tuple[str, ...], option: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{item!r} is not NAME=VALUE", param_hint=option)
        found[name] = value
    return found


@click.group()
def person() -> None:
    """The person in the loop: assertions, history, objections, consents, confirmation."""


@person.command("assert")
@click.argument("subject_id")
@click.option("--as", "provider", required=True, help="The identity provider's member id.")
@click.option("--audience", required=True, help="The form tool or portal it is issued to.")
@click.option(
    "--assurance",
    type=click.Choice(sorted(ASSURANCES)),
    default="id-card-at-counter",
    show_default=True,
    help="How the person was authenticated.",
)
@click.option(
    "--lifetime", type=click.IntRange(1, 600), default=300, show_default=True, help="Seconds."
)
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Where to write the assertion (created readable by its owner only).",
)
@click.option(
    "--keys-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Keystore."
)
@click.pass_context
def assert_subject(
    ctx: click.Context,
    subject_id: str,
    provider: str,
    audience: str,
    assurance: str,
    lifetime: int,
    out_path: Path,
    keys_dir: Path | None,
) -> None:
    """Sign a subject assertion for SUBJECT_ID as a DEVELOPMENT identity provider.

    It authenticates nobody: use it on a development hub only. A real identity provider signs
    the same message after its own authentication (docs/identity.md).
    """
    config = load_config(ctx, keys_dir=keys_dir)
    try:
        check_department_id(provider)
        key = Keystore(config.keys_dir).department_signing_key(provider)
        issued = DevelopmentIdentityProvider(provider, key).issue(
            subject_id, audience, ASSURANCES[assurance], lifetime_seconds=lifetime
        )
    except (ValueError, KeyFileError) as exc:  # IdentityError is a ValueError
        fail(str(exc))
    # The file names the person: owner-readable only, as every private file the CLI writes.
    descriptor = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(issued.to_bytes())
    os.chmod(out_path, 0o600)
    click.echo(
        f"assertion for {audience} by {provider} ({assurance}), valid until "
        f"{out.iso(issued.expires_us)}: {out_path}"
    )


@person.command("history")
@click.argument("subject_id")
@assertion_option(required=False)
@with_caller
def history(caller: Caller, subject_id: str, assertion_path: Path | None, as_json: bool) -> None:
    """Every access to the person's material: who, when, which types, why, how it ended.

    A form tool passes the person's --assertion; a supervisor may leave it out.
    """
    assertion = read_assertion(assertion_path) if assertion_path else None
    records = caller.perform(lambda client: client.access_history(subject_id, assertion=assertion))
    if as_json:
        out.echo_json(
            [
                {
                    "sequence": r.sequence,
                    "time": out.iso(r.time_us),
                    "actor": r.actor,
                    "kind": r.kind,
                    "material_types": list(r.material_types),
                    "counterparty": r.counterparty,
                    "purpose": r.purpose,
                    "outcome": r.outcome,
                    "reason": r.reason,
                    "identity_provider": r.identity_provider,
                    "assurance_level": r.assurance_level,
                    "consent_id": r.consent_id,
                }
                for r in records
            ]
        )
        return
    for r in records:
        types = ",".join(r.material_types) or "-"
        ended = r.outcome + (f" {r.reason}" if r.reason else "")
        why = r.purpose or "-"
        click.echo(f"  #{r.sequence:<6} {out.iso(r.time_us)}  {r.actor:28} {r.kind:20} {types}")
        click.echo(f"          purpose {why}; {ended}")
    click.echo(f"{len(records)} accesses")


@person.command("object")
@objection_arguments(assertion_required=True)
@with_caller
def objection(
    caller: Caller,
    material_type: str,
    subject_id: str,
    reason: str,
    proposed: tuple[str, ...],
    assertion_path: Path,
    as_json: bool,
) -> None:
    """File the person's objection to the material on file; its owner must answer.

    The call of ``exchange objection file`` with the person's assertion, printed for the person.
    """
    filed, receipt = file_objection(
        caller, material_type, subject_id, reason, proposed, assertion_path
    )
    deadline = out.iso(from_timestamp(filed.deadline))
    if as_json:
        out.echo_json(
            {
                "id": filed.id,
                "owner": filed.owner,
                "state": exchange_pb2.ObjectionState.Name(filed.state),
                "deadline": deadline,
                "ledger_sequence": receipt.sequence,
            }
        )
        return
    click.echo(
        f"objection {filed.id} filed with {filed.owner}; answer due {deadline} "
        f"({out.ledger(receipt)})"
    )


@person.group()
def consent() -> None:
    """The person's consents: give, list, revoke."""


def _consent_dict(value: Consent) -> dict[str, object]:
    return {
        "id": value.id,
        "consumer": value.consumer,
        "material_type": value.material_type,
        "fields": list(value.fields),
        "purpose": value.purpose,
        "valid_from": out.iso(value.valid_from_us),
        "valid_until": out.iso(value.valid_until_us),
        "max_uses": value.max_uses,
        "min_interval_seconds": value.min_interval_seconds,
        "data_life_days": value.data_life_days,
        "uses": value.uses,
        "revoked_at": out.iso(value.revoked_us) if value.revoked_us is not None else None,
        "given_through": value.given_through,
    }


def _consent_line(value: Consent) -> str:
    state = "revoked" if value.revoked_us is not None else "in force"
    if value.revoked_us is None and value.valid_until_us <= now_us():
        state = "expired"
    return (
        f"  {value.id}  {value.consumer} may request {value.material_type} "
        f"[{','.join(value.fields)}] for {value.purpose} until {out.iso(value.valid_until_us)}; "
        f"used {value.uses}" + (f"/{value.max_uses}" if value.max_uses else "") + f"; {state}"
    )


@consent.command("give")
@click.argument("subject_id")
@click.option("--consumer", required=True, help="The department allowed to request.")
@click.option("--type", "material_type", required=True, help="The material type.")
@click.option("--field", "fields", multiple=True, required=True, help="A field (repeatable).")
@click.option("--purpose", required=True, help="The purpose the consumer must declare.")
@click.option(
    "--days",
    type=click.IntRange(1, 366),
    default=30,
    show_default=True,
    help="Days the consent stays in force (at most a year).",
)
@click.option(
    "--max-uses",
    type=click.IntRange(0),
    default=1,
    show_default=True,
    help="Requests the consent allows (0: no limit).",
)
@click.option("--min-interval", type=click.IntRange(0), default=0, help="Seconds between uses.")
@click.option(
    "--data-life-days",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Days the consumer may keep what it gets.",
)
@assertion_option(required=True)
@with_caller
def consent_give(
    caller: Caller,
    subject_id: str,
    consumer: str,
    material_type: str,
    fields: tuple[str, ...],
    purpose: str,
    days: int,
    max_uses: int,
    min_interval: int,
    data_life_days: int,
    assertion_path: Path,
    as_json: bool,
) -> None:
    """Record the person's consent for CONSUMER to request a material type for a purpose."""
    assertion = read_assertion(assertion_path)
    given = caller.perform(
        lambda client: client.give_consent(
            subject_id,
            assertion=assertion,
            consumer=consumer,
            material_type=material_type,
            fields=fields,
            purpose=purpose,
            valid_until_us=now_us() + days * DAY_US,
            max_uses=max_uses,
            min_interval_seconds=min_interval,
            data_life_days=data_life_days,
        )
    )
    if as_json:
        out.echo_json(_consent_dict(given))
        return
    click.echo(_consent_line(given))
    click.echo(f"consent {given.id} given ({out.ledger(given.receipt)})")


@consent.command("revoke")
@click.argument("subject_id")
@click.argument("consent_id")
@assertion_option(required=True)
@with_caller
def consent_revoke(
    caller: Caller, subject_id: str, consent_id: str, assertion_path: Path, as_json: bool
) -> None:
    """Revoke one of the person's consents, with effect at once."""
    assertion = read_assertion(assertion_path)
    revoked = caller.perform(
        lambda client: client.revoke_consent(subject_id, consent_id, assertion=assertion)
    )
    if as_json:
        out.echo_json(_consent_dict(revoked))
        return
    click.echo(f"consent {revoked.id} revoked ({out.ledger(revoked.receipt)})")


@consent.command("list")
@click.argument("subject_id")
@assertion_option(required=True)
@with_caller
def consent_list(caller: Caller, subject_id: str, assertion_path: Path, as_json: bool) -> None:
    """The person's consents, in force or not."""
    assertion = read_assertion(assertion_path)
    found = caller.perform(lambda client: client.list_consents(subject_id, assertion=assertion))
    if as_json:
        out.echo_json([_consent_dict(c) for c in found])
        return
    for value in found:
        click.echo(_consent_line(value))
    click.echo(f"{len(found)} consents")


@person.command("confirm")
@click.argument("form_id")
@click.argument("subject_id")
@click.option("--value", "values", multiple=True, help="A completed field NAME=VALUE.")
@click.option("--prefill-sequence", type=click.IntRange(0), default=0, help="The prefill's entry.")
@assertion_option(required=True)
@with_caller
def confirm(
    caller: Caller,
    form_id: str,
    subject_id: str,
    values: tuple[str, ...],
    prefill_sequence: int,
    assertion_path: Path,
    as_json: bool,
) -> None:
    """Record the person's confirmation of the completed form (only a salted hash is sent)."""
    assertion = read_assertion(assertion_path)
    completed = _pairs(values, "--value")
    done = caller.perform(
        lambda client: client.confirm_form(
            subject_id,
            form_id,
            completed,
            assertion=assertion,
            prefill_sequence=prefill_sequence,
        )
    )
    if as_json:
        out.echo_json(
            {
                "form": form_id,
                "salt": done.salt.hex(),
                "completed_sha256": done.completed_sha256.hex(),
                "ledger_sequence": done.receipt.sequence,
            }
        )
        return
    click.echo(
        f"{form_id}: confirmed by the person ({out.ledger(done.receipt)}); keep the salt "
        f"{done.salt.hex()} with the form"
    )


COMMANDS = [person]
