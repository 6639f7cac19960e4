"""``exchange serve``, ``exchange health`` and the operator's ``exchange registry`` commands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from adapters.client import HubClient, Identity, Refused, channel
from exchange.cli.main import call_failed, fail, load_config, run, with_options
from exchange.config import Config, ConfigError
from exchange.crypto.keys import KeyFileError, load_public_key
from exchange.crypto.keystore import Keystore
from exchange.v1 import common_pb2, registry_pb2

hub_options = [
    click.option("--listen", default=None, help="host:port to serve on / of the hub."),
    click.option(
        "--keys-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="The keystore root (default ./keys, or the configuration's keys_dir).",
    ),
]


with_hub_options = with_options(*hub_options)


@click.command()
@with_hub_options
@click.option(
    "--database-url", default=None, help="SQLAlchemy URL (default sqlite:///var/exchange.db)."
)
@click.option(
    "--insecure", is_flag=True, default=None, help="Serve without TLS (development only)."
)
@click.option(
    "--log-format",
    type=click.Choice(["json", "console"]),
    default=None,
    help="json lines (default) or console for people.",
)
@click.option(
    "--metrics-listen",
    default=None,
    help="host:port for /metrics, /healthz and /readyz over plain HTTP (default off; keep it "
    "on loopback or a monitoring network).",
)
@click.option(
    "--shutdown-grace-seconds",
    type=float,
    default=None,
    help="On SIGTERM or SIGINT, how long calls in flight get to finish (default 10); calls not "
    "started are answered UNAVAILABLE SHUTTING_DOWN at once.",
)
@click.pass_context
def serve(
    ctx: click.Context,
    listen: str | None,
    keys_dir: Path | None,
    database_url: str | None,
    insecure: bool | None,
    log_format: str | None,
    metrics_listen: str | None,
    shutdown_grace_seconds: float | None,
) -> None:
    """Run the hub until SIGTERM or SIGINT, then shut down gracefully: health turns
    NOT_SERVING, calls not started get UNAVAILABLE (retryable), calls in flight finish within
    the grace period, the request log and the ledger are closed."""
    from exchange import logs
    from exchange.api.server import serve as serve_hub
    from exchange.ownership import ForeignDatabase
    from exchange.rpc.ports import AddressInUse
    from exchange.store.schema import SchemaError

    config = load_config(
        ctx,
        listen=listen,
        keys_dir=keys_dir,
        database_url=database_url,
        insecure=insecure,
        log_format=log_format,
        metrics_listen=metrics_listen,
        shutdown_grace_seconds=shutdown_grace_seconds,
    )
    logs.configure(config.log_level, config.log_format)
    if config.insecure:
        click.secho(
            "WARNING: --insecure: no TLS, no client authentication. Never use this in production.",
            fg="yellow",
            err=True,
        )
    try:
        run(serve_hub(config))
    except (KeyFileError, AddressInUse, SchemaError, ForeignDatabase, ConfigError) as exc:
        fail(str(exc))


@click.command()
@click.option(
    "--database-url", default=None, help="SQLAlchemy URL (default sqlite:///var/exchange.db)."
)
@click.pass_context
def migrate(ctx: click.Context, database_url: str | None) -> None:
    """Upgrade the database's schema to this exchange's, as a step of its own (before rolling
    hubs to a new version). Safe beside running hubs and other migrations: one at a time."""
    from exchange.store.engines import open_engine
    from exchange.store.schema import SchemaError, upgrade

    config = load_config(ctx, database_url=database_url)
    engine = open_engine(config.database_url)
    try:
        done = upgrade(engine)
    except SchemaError as exc:
        fail(str(exc))
    finally:
        engine.dispose()
    if done.before == done.after:
        click.echo(f"schema already at revision {done.after}")
    else:
        click.echo(f"schema migrated from revision {done.before or '(empty)'} to {done.after}")


def operator_client(config: Config) -> HubClient:
    """A client acting as the hub operator (the operator's key, apart from the hub's, and the
    operator certificate)."""
    store = Keystore(config.keys_dir)
    identity = Identity(config.hub_id, store.operator_signing_key(), store.operator_tls())
    return HubClient(config.listen, identity, server_name="localhost")


@click.command()
@with_hub_options
@click.pass_context
def health(ctx: click.Context, listen: str | None, keys_dir: Path | None) -> None:
    """Ask the hub's gRPC health service; exit 0 if SERVING."""
    config = load_config(ctx, listen=listen, keys_dir=keys_dir)

    async def check() -> str:
        tls = None if config.insecure else Keystore(config.keys_dir).operator_tls()
        async with channel(config.listen, tls, "localhost") as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            answer = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))

    try:
        status = run(check())
    except grpc.aio.AioRpcError as exc:
        fail(f"health check failed: {exc.code().name} {exc.details()}")
    except KeyFileError as exc:
        fail(str(exc))
    click.echo(status)
    if status != "SERVING":
        raise SystemExit(1)


@click.group()
def registry() -> None:
    """Register departments and manage their keys (hub operator)."""


def operator_call(config: Config, method: str, body: Any, response: Any) -> Any:
    """Call ``method`` ("/exchange.v1.Registry/ListDepartments") as the operator. A refusal
    prints ``refused: …`` and exits 2, like every command; a hub that does not answer or a key
    problem prints one ``error:`` line and exits 1."""

    async def go() -> Any:
        async with operator_client(config) as client:
            return await client.call(method, body, response)

    try:
        return run(go())
    except Refused as exc:
        call_failed(exc, config.listen)
    except KeyFileError as exc:
        fail(str(exc))


def _call(config: Config, method: str, body: Any, response: Any) -> Any:
    return operator_call(config, f"/exchange.v1.Registry/{method}", body, response)


def _key_state(key: registry_pb2.DepartmentKey) -> str:
    if key.HasField("revoked_at"):
        return "revoked"
    if key.HasField("valid_until"):
        return "rotated"
    return "current"


def _show(department: registry_pb2.Department, *, detail: bool = False) -> None:
    roles = ",".join(common_pb2.Role.Name(r) for r in department.roles)
    state = registry_pb2.DepartmentState.Name(department.state)
    keys = ",".join(
        k.keyid[:16] + ("" if _key_state(k) == "current" else f"({_key_state(k)})")
        for k in department.keys
    )
    click.echo(f"{department.id:32} {state:9} {roles:40} keys={keys}")
    if detail:
        endpoint = department.provider_endpoint or "-"
        owner = f"  owner {department.owner}" if department.owner else ""
        click.echo(f"  {department.name}  endpoint {endpoint}{owner}")


def _show_change(answer: registry_pb2.DepartmentResponse, what: str) -> None:
    _show(answer.department, detail=True)
    click.echo(f"{what} (ledger entry #{answer.receipt.sequence})")


ROLES = (
    "provider",
    "consumer",
    "collector",
    "form-tool",
    "auditor",
    "identity-provider",
    "supervisor",
)


def _role_values(roles: tuple[str, ...]) -> list[common_pb2.Role.ValueType]:
    return [common_pb2.Role.Value(r.upper().replace("-", "_")) for r in roles]


@registry.command("register")
@click.argument("department_id")
@click.option("--name", required=True, help="The department's human-readable name.")
@click.option(
    "--role",
    "roles",
    multiple=True,
    required=True,
    type=click.Choice(ROLES),
    help="A role (repeatable).",
)
@click.option("--endpoint", default="", help="host:port of the provider adapter.")
@click.option("--owner", default="", help="Owning department (form tools).")
@click.option("--public-key", default=None, help="Hex public key (default: from the keystore).")
@with_hub_options
@click.pass_context
def register(
    ctx: click.Context,
    department_id: str,
    name: str,
    roles: tuple[str, ...],
    endpoint: str,
    owner: str,
    public_key: str | None,
    listen: str | None,
    keys_dir: Path | None,
) -> None:
    """Register a department with its public key."""
    config = load_config(ctx, listen=listen, keys_dir=keys_dir)
    store = Keystore(config.keys_dir)
    try:
        raw = (
            bytes.fromhex(public_key)
            if public_key
            else load_public_key(store.department_dir(department_id) / "signing.pub")
        )
    except (ValueError, KeyFileError) as exc:
        fail(str(exc))
    from exchange.crypto.certificates import certificate_sha256

    tls_pem = store.department_dir(department_id) / "tls.pem"
    body = registry_pb2.RegisterDepartmentRequest(
        department=registry_pb2.Department(
            id=department_id,
            name=name,
            roles=_role_values(roles),
            provider_endpoint=endpoint,
            owner=owner,
            certificate_sha256=certificate_sha256(tls_pem.read_bytes()) if tls_pem.exists() else "",
            keys=[registry_pb2.DepartmentKey(public_key=raw)],
        )
    )
    answer = _call(config, "RegisterDepartment", body, registry_pb2.DepartmentResponse)
    _show_change(answer, "registered")


@registry.command("update")
@click.argument("department_id")
@click.option("--name", default=None, help="The department's new human-readable name.")
@click.option(
    "--role",
    "roles",
    multiple=True,
    type=click.Choice(ROLES),
    help="A role (repeatable); the roles given replace the department's roles.",
)
@click.option(
    "--endpoint", default=None, help="New host:port of the provider adapter ('' to clear)."
)
@click.option("--owner", default=None, help="New owning department (form tools; '' to clear).")
@click.option(
    "--certificate-sha256",
    default=None,
    help="Pin the department's client certificate by its DER SHA-256 in hex ('' accepts any "
    "certificate the CA issued to the department id).",
)
@with_hub_options
@click.pass_context
def update(
    ctx: click.Context,
    department_id: str,
    name: str | None,
    roles: tuple[str, ...],
    endpoint: str | None,
    owner: str | None,
    certificate_sha256: str | None,
    listen: str | None,
    keys_dir: Path | None,
) -> None:
    """Change a registered department's name, roles, provider endpoint, owner or pinned
    certificate; what is not given stays. A ledger entry the operator signs; keys change by
    `registry rotate` and `registry revoke`, the state by `registry set-state`."""
    given = {
        "name": name,
        "roles": roles or None,
        "provider_endpoint": endpoint,
        "owner": owner,
        "certificate_sha256": certificate_sha256,
    }
    paths = [field for field, value in given.items() if value is not None]
    if not paths:
        raise click.UsageError(
            "give at least one of --name, --role, --endpoint, --owner, --certificate-sha256"
        )
    config = load_config(ctx, listen=listen, keys_dir=keys_dir)
    body = registry_pb2.UpdateDepartmentRequest(
        department_id=department_id,
        department=registry_pb2.Department(
            name=name or "",
            roles=_role_values(roles),
            provider_endpoint=endpoint or "",
            owner=owner or "",
            certificate_sha256=certificate_sha256 or "",
        ),
    )
    body.update_mask.paths.extend(paths)
    answer = _call(config, "UpdateDepartment", body, registry_pb2.DepartmentResponse)
    _show_change(answer, f"updated {', '.join(paths)}")


@registry.command("list")
@with_hub_options
@click.pass_context
def list_departments(ctx: click.Context, listen: str | None, keys_dir: Path | None) -> None:
    """List registered departments: id, state, roles, keys (rotated and revoked ones marked),
    name, provider endpoint and owner."""
    config = load_config(ctx, listen=listen, keys_dir=keys_dir)
    answer = _call(
        config,
        "ListDepartments",
        registry_pb2.ListDepartmentsRequest(),
        registry_pb2.ListDepartmentsResponse,
    )
    for department in answer.departments:
        _show(department, detail=True)


@registry.command("revoke")
@click.argument("department_id")
@click.argument("keyid")
@with_hub_options
@click.pass_context
def revoke(
    ctx: click.Context, department_id: str, keyid: str, listen: str | None, keys_dir: Path | None
) -> None:
    """Revoke a department's signing key KEYID (hex, as `registry list` shows) at once."""
    config = load_config(ctx, listen=listen, keys_dir=keys_dir)
    body = registry_pb2.RevokeKeyRequest(department_id=department_id, keyid=keyid)
    _show_change(_call(config, "RevokeKey", body, registry_pb2.DepartmentResponse), "revoked")


@registry.command("rotate")
@click.argument("department_id")
@click.argument("public_key_hex", required=False)
@click.option(
    "--next",
    "use_next",
    is_flag=True,
    help="Rotate to the key `exchange keys next` made in the keystore, and make it the "
    "department's signing key there once the hub accepted it.",
)
@click.option(
    "--grace-seconds",
    default=0,
    type=click.IntRange(0),
    help="How long the old key keeps verifying (default 0: it ends at once).",
)
@with_hub_options
@click.pass_context
def rotate(
    ctx: click.Context,
    department_id: str,
    public_key_hex: str | None,
    use_next: bool,
    grace_seconds: int,
    listen: str | None,
    keys_dir: Path | None,
) -> None:
    """Replace a department's signing key by PUBLIC_KEY_HEX (or --next); the old one stays
    valid for --grace-seconds."""
    config = load_config(ctx, listen=listen, keys_dir=keys_dir)
    if (public_key_hex is None) == (not use_next):
        raise click.UsageError("give PUBLIC_KEY_HEX or --next (one of them)")
    store = Keystore(config.keys_dir)
    try:
        raw = (
            store.next_key(department_id).public_bytes
            if use_next
            else bytes.fromhex(public_key_hex or "")
        )
    except ValueError:
        fail("the public key must be hex")
    except KeyFileError as exc:
        fail(f"{exc} (make one with `exchange keys next {department_id}`)")
    body = registry_pb2.RotateKeyRequest(
        department_id=department_id, new_public_key=raw, grace_seconds=grace_seconds
    )
    _show_change(_call(config, "RotateKey", body, registry_pb2.DepartmentResponse), "rotated")
    if use_next:
        retired = store.promote_next_key(department_id)
        click.echo(f"keystore: the next key now signs; the old one is kept as {retired}")


@registry.command("rotate-operator-key")
@click.option(
    "--grace-seconds",
    default=0,
    type=click.IntRange(min=0),
    help="How long the current operator key stays valid (other operator terminals switch).",
)
@with_hub_options
@click.pass_context
def rotate_operator_key(
    ctx: click.Context, grace_seconds: int, listen: str | None, keys_dir: Path | None
) -> None:
    """Replace the operator's signing key: a new key, introduced by a rotation the current key
    signs (a ledger entry); then <keys>/operator/signing.key is the new key."""
    from exchange.crypto.keys import SigningKey, save_signing_key

    config = load_config(ctx, listen=listen, keys_dir=keys_dir)
    store = Keystore(config.keys_dir)
    new = SigningKey.generate()
    pending = store.operator_dir / "signing.next.key"
    # Kept on disk before the call: if the answer is lost, the new key is not.
    save_signing_key(pending, new)
    body = registry_pb2.RotateKeyRequest(
        department_id=config.hub_id, new_public_key=new.public_bytes, grace_seconds=grace_seconds
    )
    answer = _call(config, "RotateKey", body, registry_pb2.DepartmentResponse)
    pending.replace(store.operator_dir / "signing.key")
    pending.with_suffix(".pub").replace(store.operator_dir / "signing.pub")
    click.echo(f"operator key {new.keyid[:16]}… in {store.operator_dir}")
    click.echo(f"ledger entry #{answer.receipt.sequence}")


@registry.command("rotate-log-key")
@click.option(
    "--public-key",
    default=None,
    help="Hex public key of the hub's next log key (default: <keys>/hub/signing.next.pub).",
)
@with_hub_options
@click.pass_context
def rotate_log_key(
    ctx: click.Context, public_key: str | None, listen: str | None, keys_dir: Path | None
) -> None:
    """Approve the hub's next log key (made by `exchange keys rotate-hub-key` on the hub's
    host): a ledger entry; from then on every checkpoint carries both keys' signatures."""
    config = load_config(ctx, listen=listen, keys_dir=keys_dir)
    try:
        raw = (
            bytes.fromhex(public_key)
            if public_key
            else load_public_key(Path(config.keys_dir) / "hub" / "signing.next.pub")
        )
    except (ValueError, KeyFileError) as exc:
        fail(str(exc))
    body = registry_pb2.RotateKeyRequest(department_id=config.origin, new_public_key=raw)
    answer = _call(config, "RotateKey", body, registry_pb2.DepartmentResponse)
    click.echo(f"log key {raw.hex()[:16]}… approved; ledger entry #{answer.receipt.sequence}")


STATES = ("active", "suspended", "retired")


@registry.command("set-state")
@click.argument("department_id")
@click.argument("state", type=click.Choice(STATES))
@click.option("--reason", required=True, help="Why, for the record (no personal data).")
@with_hub_options
@click.pass_context
def set_state(
    ctx: click.Context,
    department_id: str,
    state: str,
    reason: str,
    listen: str | None,
    keys_dir: Path | None,
) -> None:
    """Set a department's life-cycle state: active, suspended (refused for now) or retired."""
    config = load_config(ctx, listen=listen, keys_dir=keys_dir)
    body = registry_pb2.SetStateRequest(
        department_id=department_id,
        state=registry_pb2.DepartmentState.Value(state.upper()),
        reason=reason,
    )
    _show_change(_call(config, "SetState", body, registry_pb2.DepartmentResponse), "state set")


@registry.command("show")
@click.argument("department_id")
@with_hub_options
@click.pass_context
def show(ctx: click.Context, department_id: str, listen: str | None, keys_dir: Path | None) -> None:
    """Show one department with every key and its validity."""
    config = load_config(ctx, listen=listen, keys_dir=keys_dir)
    body = registry_pb2.GetDepartmentRequest(department_id=department_id)
    department = _call(config, "GetDepartment", body, registry_pb2.DepartmentResponse).department
    _show(department, detail=True)
    for key in department.keys:
        click.echo(f"  key {key.keyid}  {_key_state(key)}")
