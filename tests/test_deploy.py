"""The deployment files keep to the code: every command of ours in the systemd
units, the Procfile and compose.yaml is a real ``flask amocrm`` command with real
options; compose.yaml parses and keeps Redis's jobs safe; the settings and indexes
the deployment pages name exist; the PostgreSQL tuning applies to the tables."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import create_engine, text

from flask_amocrm import AmoCRM
from flask_amocrm.config import DEFAULTS
from flask_amocrm.models import metadata
from tests.conftest import POSTGRES_URL, _postgres_available, drop_tables
from tests.helpers.process import child_env

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
PAGES = [ROOT / "docs" / "deployment.md", ROOT / "docs" / "ru" / "deployment.md"]
COMPOSE = DEPLOY / "compose.yaml"
#: The Redis settings that keep jobs: on disk every second, never evicted.
REDIS_SETTINGS = {
    "appendonly": "yes",
    "appendfsync": "everysec",
    "maxmemory-policy": "noeviction",
}


def _unit_commands() -> list[list[str]]:
    commands = []
    for unit in sorted((DEPLOY / "systemd").glob("*.service")):
        for line in unit.read_text().splitlines():
            key, _, value = line.partition("=")
            if key in ("ExecStart", "ExecStartPre", "ExecStartPost", "ExecReload"):
                commands.append(shlex.split(value))
    return commands


def _procfile_commands() -> list[list[str]]:
    commands = []
    for line in (DEPLOY / "Procfile").read_text().splitlines():
        name, _, command = line.partition(":")
        if name.strip() and command.strip():
            commands.append(shlex.split(command))
    return commands


def _compose() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed")
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def _compose_commands() -> list[list[str]]:
    services = _compose()["services"]
    commands = []
    for service in services.values():
        command = service.get("command")
        if isinstance(command, str):
            command = shlex.split(command)
        if command:
            commands.append([str(part) for part in command])
    return commands


def _ours(command: list[str]) -> list[str] | None:
    """The arguments after ``amocrm`` of a ``flask ... amocrm ...`` command."""
    names = [Path(part).name for part in command]
    if "flask" not in names or "amocrm" not in command:
        return None
    return command[command.index("amocrm") + 1 :]


def _app(tmp_path: Any) -> Flask:
    app = Flask("site", instance_path=str(tmp_path))
    app.config.update(
        AMOCRM_BASE_URL="https://example.amocrm.ru",
        AMOCRM_TOKEN="t",
        AMOCRM_DATABASE_URI=f"sqlite:///{tmp_path}/events.sqlite3",
    )
    AmoCRM(app)
    return app


@pytest.mark.parametrize(
    "where", ["systemd", "Procfile", "compose.yaml"], ids=lambda w: w
)
def test_every_command_of_ours_in_the_deploy_files_is_real(
    tmp_path: Any, where: str
) -> None:
    commands = {
        "systemd": _unit_commands,
        "Procfile": _procfile_commands,
        "compose.yaml": _compose_commands,
    }[where]()
    ours = [args for args in map(_ours, commands) if args is not None]
    # each place runs the workers and the migrations
    assert {args[0] for args in ours} >= {"worker", "upgrade-db"}, commands
    runner = _app(tmp_path).test_cli_runner()
    for args in ours:
        # the options given are checked too: an unknown one fails before --help
        result = runner.invoke(args=["amocrm", *args, "--help"])
        assert result.exit_code == 0, (args, result.output)
        assert "Usage:" in result.output
    gunicorn = [c for c in commands if Path(c[0]).name == "gunicorn"]
    assert gunicorn, "no gunicorn command for the site"
    known = subprocess.run(
        [sys.executable, "-m", "gunicorn", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for command in gunicorn:
        for option in command[1:]:
            if option.startswith("--"):
                assert re.search(rf"{re.escape(option)}\b", known), option


#: What the person running compose exports (the ``${NAME:?...}`` variables).
EXPORTED = {
    "SECRET_KEY": "a-secret-for-the-test-only",
    "AMOCRM_BASE_URL": "https://example.amocrm.ru",
    "AMOCRM_TOKEN": "t",
    "POSTGRES_PASSWORD": "secret",
}


def _interpolated(value: str) -> str:
    """``value`` as compose fills it in: ``${NAME:?...}`` from :data:`EXPORTED`,
    ``${NAME:-default}`` as its default."""

    def fill(match: re.Match[str]) -> str:
        name, kind, default = match.groups()
        return EXPORTED[name] if kind == "?" else default

    return re.sub(r"\$\{(\w+):([?-])([^}]*)\}", fill, value)


def test_the_compose_site_is_an_app_its_commands_load(tmp_path: Any) -> None:
    """compose.yaml's environment, as compose fills it in, makes a site that loads,
    and ``flask amocrm upgrade-db`` runs on it (on SQLite here, in a folder of the
    test's: the rest of the environment is compose's own)."""
    environment = {
        name: _interpolated(str(value))
        for name, value in _compose()["x-site"]["environment"].items()
    }
    assert environment["AMOCRM_DATABASE_URI"].startswith("postgresql+psycopg://site:")
    # example_app reads every AMOCRM_* variable: only compose's reach it
    env = {k: v for k, v in child_env().items() if not k.startswith("AMOCRM_")}
    env.update(environment)
    env.update(
        EXAMPLE_INSTANCE_PATH=str(tmp_path),
        AMOCRM_DATABASE_URI=f"sqlite:///{tmp_path}/events.sqlite3",
    )
    done = subprocess.run(
        [sys.executable, "-m", "flask", "amocrm", "upgrade-db"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "0001" in done.stdout
    site = _compose()["services"]["site"]["command"]
    module, _, factory = site[-1].partition(":")
    assert factory.endswith("()") and module == environment["FLASK_APP"].split(":")[0]


def test_compose_keeps_redis_jobs_and_shares_the_instance_folder() -> None:
    text_ = COMPOSE.read_text()
    conf = (DEPLOY / "redis-amocrm.conf").read_text()
    for name, value in REDIS_SETTINGS.items():
        assert re.search(rf"^{re.escape(name)} {value}$", conf, re.M), name
        assert f"--{name}" in text_ and value in text_, name
    services = _compose()["services"]
    command = [str(part) for part in services["redis"]["command"]]
    for name, value in REDIS_SETTINGS.items():
        assert command[command.index(f"--{name}") + 1] == value
    assert {"postgres", "redis", "site", "worker", "upgrade-db"} <= set(services)
    # the spool and the uploads: the workers see the site's instance folder
    assert services["site"]["volumes"] == services["worker"]["volumes"]
    assert services["worker"]["stop_signal"] == "SIGTERM"


def test_the_worker_unit_is_a_template_and_the_units_start_after_upgrade_db() -> None:
    units = {p.name: p.read_text() for p in (DEPLOY / "systemd").glob("*.service")}
    assert "amocrm-worker@.service" in units
    assert "%i" in units["amocrm-worker@.service"]
    for name in ("amocrm-worker@.service", "amocrm-site.service"):
        assert "Requires=amocrm-upgrade-db.service" in units[name]
        assert "After=amocrm-upgrade-db.service" in units[name]
    assert "Type=oneshot" in units["amocrm-upgrade-db.service"]


def _mentioned_keys() -> set[str]:
    files = [*PAGES, *sorted(p for p in DEPLOY.rglob("*") if p.is_file())]
    found: set[str] = set()
    for path in files:
        found.update(re.findall(r"AMOCRM_[A-Z0-9_]*[A-Z0-9]", path.read_text()))
    return found


def test_the_settings_the_deployment_pages_name_exist() -> None:
    for page in PAGES:
        assert page.exists(), page
    keys = _mentioned_keys()
    assert {"AMOCRM_REDIS_URL", "AMOCRM_RETENTION_DAYS"} <= keys
    assert sorted(keys - set(DEFAULTS)) == []


def test_the_indexes_the_deployment_pages_list_are_the_models() -> None:
    models = {
        str(index.name) for table in metadata.sorted_tables for index in table.indexes
    }
    for page in PAGES:
        listed = set(re.findall(r"\bix_amocrm_\w+", page.read_text()))
        assert listed == models, page


def test_the_postgresql_tuning_applies_to_the_tables(tmp_path: Any) -> None:
    reason = _postgres_available()
    if reason:
        pytest.skip(reason)
    engine = create_engine(POSTGRES_URL)
    drop_tables(engine)
    try:
        app = Flask("pg", instance_path=str(tmp_path))
        app.config.update(
            AMOCRM_BASE_URL="https://example.amocrm.ru",
            AMOCRM_TOKEN="t",
            AMOCRM_DATABASE_URI=POSTGRES_URL,
        )
        AmoCRM(app)
        result = app.test_cli_runner().invoke(args=["amocrm", "upgrade-db"])
        assert result.exit_code == 0, result.output
        app.extensions["amocrm"].dispose()
        sql = (DEPLOY / "postgresql-tuning.sql").read_text()
        tables = set(re.findall(r"ALTER TABLE (\w+)", sql))
        assert tables <= set(metadata.tables)
        with engine.begin() as connection:
            raw = connection.connection.driver_connection
            assert raw is not None
            for _ in range(2):  # it may be run again; as psql runs it, unparsed
                raw.execute(sql)
            options = dict(
                connection.execute(
                    text(
                        "SELECT relname, reloptions FROM pg_class "
                        "WHERE relname LIKE 'amocrm_%' AND reloptions IS NOT NULL"
                    )
                ).all()
            )
        assert set(options) == tables
        assert "fillfactor=80" in options["amocrm_events"]
        assert "autovacuum_vacuum_scale_factor=0.02" in options["amocrm_events"]
    finally:
        drop_tables(engine)
        engine.dispose()


def test_systemd_reads_the_units_without_a_complaint(tmp_path: Any) -> None:
    """``systemd-analyze verify`` on the units, their commands pointed at this
    environment's ``flask`` and ``gunicorn``: no unknown key, no bad value."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    bin_dir = Path(sys.executable).parent
    for unit in (DEPLOY / "systemd").glob("*.service"):
        body = unit.read_text().replace("/srv/site/.venv/bin/", f"{bin_dir}/")
        name = unit.name.replace("@.service", "@1.service")
        (tmp_path / name).write_text(body)
    units = sorted(str(p) for p in tmp_path.glob("*.service"))
    assert len(units) == 3
    done = subprocess.run(
        [analyze, "verify", "--man=no", *units],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), (
        done.stdout + done.stderr
    )
