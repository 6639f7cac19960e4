"""``exchange reconcile``: compare a holder's adapter, the hub's index and the ledger, and
repair what can be repaired, each repair a ledger entry (exchange.flows.reconcile).

Run by the hub operator on a machine with the hub's configuration and keystore: the hub's key
signs the calls to the adapter and the ledger's checkpoints, the operator's key the request
stored beside each repair's entry. Hubs may keep serving meanwhile.
"""

from __future__ import annotations

from pathlib import Path

import click

from exchange.cli.main import fail, load_config, refused, run

KIND_HELP = {
    "PENDING_WITH_ENTRY": "a pending Store whose entry committed",
    "PENDING_WITHOUT_ENTRY": "a pending Store with no committed entry",
    "ENTRY_WITHOUT_INDEX_ROW": "held and recorded, but not on the index",
    "HELD_WITHOUT_ENTRY": "held at the adapter, recorded by no entry",
    "INDEXED_NOT_HELD": "on the index, not held at the adapter",
    "HELD_NOT_CONFORMING": "held, but not valid for the type's schema",
}


@click.command()
@click.argument("department")
@click.option("--dry-run", is_flag=True, help="Report the differences; repair nothing.")
@click.option(
    "--keys-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The keystore root (default ./keys, or the configuration's keys_dir).",
)
@click.option(
    "--database-url", default=None, help="SQLAlchemy URL (default sqlite:///var/exchange.db)."
)
@click.option("--insecure", is_flag=True, default=None, help="Call the adapter without TLS.")
@click.pass_context
def reconcile(
    ctx: click.Context,
    department: str,
    dry_run: bool,
    keys_dir: Path | None,
    database_url: str | None,
    insecure: bool | None,
) -> None:
    """Compare DEPARTMENT's adapter (what it holds and holds pending), the hub's index and the
    ledger; print every difference and repair what can be repaired (exit 0), or print what
    could not be repaired (exit 1)."""
    from exchange import errors
    from exchange.crypto.keys import KeyFileError
    from exchange.crypto.keystore import Keystore
    from exchange.flows.reconcile import reconcile as compare
    from exchange.hub import Hub

    config = load_config(ctx, keys_dir=keys_dir, database_url=database_url, insecure=insecure)
    try:
        # Each repair's entry carries a request the operator signs (docs/cli.md).
        operator_key = Keystore(config.keys_dir).operator_signing_key()
    except KeyFileError as exc:
        fail(f"reconcile signs its repairs with the operator's key: {exc}")

    async def go() -> object:
        hub = Hub.open(config)
        try:
            await hub.ledger.start()
            try:
                return await compare(hub, department, operator_key, dry_run=dry_run)
            finally:
                await hub.ledger.close()
        finally:
            await hub.providers.close()
            hub.index.close()
            hub.engine.dispose()
            hub.write_behind.dispose()

    try:
        report = run(go())
    except errors.ExchangeError as exc:
        refused(exc.code.name, exc.reason_name, exc.message)
    from exchange.flows.reconcile import Report

    assert isinstance(report, Report)
    click.echo(
        f"{report.department}: {len(report.material_types)} material type(s), "
        f"{report.held} held, {report.pending} pending at the adapter, "
        f"{report.indexed} on the index"
    )
    unrepaired = 0
    for found in report.differences:
        where = f"{found.material_type} {found.reference} v{found.version}"
        subject = f"subject {found.subject_ref.hex()[:16]}"
        if not found.repair:
            state = "not repairable"
            unrepaired += 1
        elif dry_run:
            state = f"would be {found.repair}"
        elif found.repaired:
            state = f"{found.repair} (entry {found.sequence})"
        else:
            state = f"repair failed: {found.error}"
            unrepaired += 1
        click.echo(f"{found.kind}: {where} {subject}: {KIND_HELP[found.kind]}; {state}")
    if not report.differences:
        click.echo("no differences")
    if unrepaired:
        fail(f"{unrepaired} difference(s) not repaired")
