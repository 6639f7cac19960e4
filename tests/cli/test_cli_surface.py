"""The CLI as a whole: every command's --help, help text on every option, lazy start-up, and
startup or connection errors printed as one ``error:`` line with no traceback, in a real
process (``python -m exchange.cli``)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from exchange.cli.main import COMMANDS, main


def walk(
    group: click.Group, ctx: click.Context, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, name
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from walk(command, ctx, (*path, name))


def every_command() -> list[tuple[tuple[str, ...], click.Command]]:
    with click.Context(main) as ctx:
        return list(walk(main, ctx))


def test_every_lazy_command_resolves_to_its_name() -> None:
    with click.Context(main) as ctx:
        for name in COMMANDS:
            command = main.get_command(ctx, name)
            assert command is not None and command.name == name


@pytest.mark.parametrize("path", [p for p, _ in every_command()], ids=" ".join)
def test_every_command_has_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(main, [*path, "--help"], env={})
    assert result.exit_code == 0, result.output
    assert "Usage: " in result.output


def test_every_option_has_help_text() -> None:
    missing = [
        f"{' '.join(path)} {param.opts[0]}"
        for path, command in every_command()
        for param in command.params
        if isinstance(param, click.Option) and not param.help and param.opts != ["--help"]
    ]
    assert missing == []


def test_verifier_options_have_one_name() -> None:
    names = {
        opt
        for _, command in every_command()
        for param in command.params
        if isinstance(param, click.Option)
        for opt in param.opts
        if "verifier" in opt
    }
    assert names <= {"--hub-verifier", "--hub-verifier-key"}
    for path, command in every_command():
        opts = {o for p in command.params if isinstance(p, click.Option) for o in p.opts}
        if "--hub-verifier-key" in opts:
            assert "--hub-verifier" in opts, path  # the old spelling is only an alias


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exchange.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "HOME": str(cwd)},
    )


def one_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [
        line for line in result.stderr.splitlines() if not line.startswith("WARNING: --insecure")
    ]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_help_does_not_load_grpc_or_sqlalchemy(tmp_path: Path) -> None:
    code = (
        "import sys; from exchange.cli.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = ('grpc', 'sqlalchemy', 'exchange.ledger.writer')\n"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert result.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("mysql://u@127.0.0.1/x", "use mysql+pymysql://"),
        ("notaurl", "cannot parse the database URL"),
        ("postgresql+psycopg://postgres@127.0.0.1:1/x", "cannot use the database: connection"),
        ("nosuchdialect://x/y", "dialect or driver"),
    ],
)
def test_serve_with_a_bad_database_prints_one_line(tmp_path: Path, url: str, says: str) -> None:
    assert run("keys", "init", "--dir", "keys", cwd=tmp_path).returncode == 0
    result = run(
        "serve", "--insecure", "--listen", "127.0.0.1:0", "--database-url", url, cwd=tmp_path
    )
    assert says in one_error(result)


def test_audit_export_never_creates_a_database(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong" / "path.db"
    result = run(
        "audit", "export", "--out", "x.export", "--database-url", f"sqlite:///{wrong}", cwd=tmp_path
    )
    assert "no SQLite database" in one_error(result)
    assert not wrong.parent.exists()


def test_audit_export_without_the_hub_key_prints_one_line(tmp_path: Path) -> None:
    assert run("keys", "init", "--dir", "keys", cwd=tmp_path).returncode == 0
    assert (
        run("backup", "b.db", "--database-url", "sqlite:///none.db", cwd=tmp_path).returncode == 1
    )
    (tmp_path / "keys" / "hub" / "signing.key").unlink()
    config = tmp_path / "hub.toml"
    config.write_text('database_url = "sqlite:///var/hub.db"\n')
    (tmp_path / "var").mkdir()
    # An empty but real database: the hub's schema, no checkpoint.
    from exchange.store.engines import open_engine
    from exchange.store.schema import upgrade

    engine = open_engine(f"sqlite:///{tmp_path / 'var' / 'hub.db'}")
    upgrade(engine)
    engine.dispose()
    result = run("--config", str(config), "audit", "export", "--out", "x.export", cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr


def test_commands_without_a_keystore_or_hub_print_one_line(tmp_path: Path) -> None:
    assert "exchange keys init" in one_error(run("registry", "list", cwd=tmp_path))
    assert run("keys", "init", "--dir", "keys", cwd=tmp_path).returncode == 0
    assert run("keys", "department", "js.nj.one", "--dir", "keys", cwd=tmp_path).returncode == 0
    refused = run("registry", "list", "--listen", "127.0.0.1:1", cwd=tmp_path)
    assert "did not answer" in one_error(refused)
    checked = run("check", "t", "s", "--as", "js.nj.one", "--listen", "127.0.0.1:1", cwd=tmp_path)
    assert "did not answer" in one_error(checked)


def test_witness_serve_without_its_key_says_how_to_make_one(tmp_path: Path) -> None:
    log = "exchange.local/hub+4ba9df3e+AcZuvKDco6mI/My67MY/avZJCtzUEDwkACBbFx9PrwbN"
    args = ("witness", "serve", "--dir", "w", "--name", "witness.test/w", "--log", log)
    line = one_error(run(*args, cwd=tmp_path))
    assert "exchange witness init --dir w --name witness.test/w" in line
    assert not (tmp_path / "w").exists()  # nothing made where nothing was


def test_adapter_check_with_a_missing_driver_prints_one_line(tmp_path: Path) -> None:
    assert run("keys", "init", "--dir", "keys", cwd=tmp_path).returncode == 0
    adapter = tmp_path / "adapter.toml"
    adapter.write_text(
        '[department]\nid = "js.nj.one"\nkeys_dir = "keys"\nhub_target = "127.0.0.1:1"\n'
        '[backend]\nkind = "sql"\nurl = "mysql://u@127.0.0.1/db"\n'
        '[materials.t]\nsource = "t"\nsubject_column = "id"\nfields = { a = "a" }\n'
    )
    result = run("adapter", "check", "--config", str(adapter), cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ")


def test_adapter_check_never_creates_the_departments_database(tmp_path: Path) -> None:
    assert run("keys", "init", "--dir", "keys", cwd=tmp_path).returncode == 0
    adapter = tmp_path / "adapter.toml"
    adapter.write_text(
        '[department]\nid = "js.nj.one"\nkeys_dir = "keys"\nhub_target = "127.0.0.1:1"\n'
        f'[backend]\nkind = "sql"\nurl = "sqlite:///{tmp_path / "typo.db"}"\n'
        '[materials.t]\ntable = "t"\nsubject_column = "id"\nfields = { a = "a" }\n'
    )
    line = one_error(run("adapter", "check", "--config", str(adapter), cwd=tmp_path))
    assert f"no SQLite database at {tmp_path / 'typo.db'}" in line
    assert not (tmp_path / "typo.db").exists()


def test_config_check_shows_values_sources_and_paths_relative_to_the_file(tmp_path: Path) -> None:
    etc = tmp_path / "etc" / "exchange"
    etc.mkdir(parents=True)
    (etc / "hub.toml").write_text(
        'keys_dir = "keys"\ndatabase_url = "sqlite:///var/hub.db"\n'
        'metrics_listen = "127.0.0.1:9464"\n[supervision]\nidle_days = 30\n'
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = run("--config", str(etc / "hub.toml"), "config", "check", "--json", cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["keys_dir"] == {"value": str(etc / "keys"), "source": str(etc / "hub.toml")}
    assert shown["database_url"]["value"] == f"sqlite:///{etc / 'var' / 'hub.db'}"
    assert shown["supervision.idle_days"] == {
        "value": 30,
        "source": f"{etc / 'hub.toml'} [supervision]",
    }
    assert shown["listen"]["source"] == "default"


def test_config_check_hides_a_database_password(tmp_path: Path) -> None:
    (tmp_path / "hub.toml").write_text('database_url = "postgresql://op:s3cret@db/x"\n')
    result = run("--config", "hub.toml", "config", "check", cwd=tmp_path)
    assert result.returncode == 0 and "s3cret" not in result.stdout
    assert "postgresql://op:***@db/x" in result.stdout
