"""Alembic migrations of Flask-AmoCRM's own tables (the ``amocrm_*`` tables).

The revisions live in ``versions/`` beside this file and keep their place in their
own version table, :data:`VERSION_TABLE`, so they never meet the site's own Alembic
or Flask-Migrate history, even in the site's database (``AmoCRM(app, db=db)``).
``flask amocrm upgrade-db`` runs them (:func:`upgrade`); they need Alembic, the
``migrate`` extra: ``pip install 'Flask-AmoCRM[migrate]'``.

Tables made without migrations (``flask amocrm init-db`` of an earlier version, the
first use of the embedded database, a site's ``db.create_all()``) are *adopted* on the
first upgrade: the columns and indexes they lack are added
(:func:`~flask_amocrm.models.upgrade_tables`), then they are stamped with the head
revision. That holds while every revision after the baseline only adds tables,
nullable columns and indexes, which ``upgrade_tables`` can replay; a revision that
does more must also teach :func:`adopt` about it.

A site whose own migrations see our tables (Flask-SQLAlchemy's ``db.metadata`` holds
them) leaves them out of its autogenerate with :func:`include_object` (or
:func:`include_name`): ``Migrate(app, db, include_object=include_object)``.

A maintainer who changes :mod:`flask_amocrm.models` writes the revision that goes
with it (``tests/test_migrations.py`` fails until the two agree)::

    from alembic import command
    from flask_amocrm.migrations import alembic_config
    config = alembic_config(url="sqlite:////tmp/head.sqlite3")
    command.upgrade(config, "head")
    command.revision(config, "what changed", autogenerate=True, rev_id="0002")
"""

from __future__ import annotations

import functools
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from sqlalchemy import Connection, Engine, inspect, text

from ..models import metadata, upgrade_tables

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

log = logging.getLogger("flask_amocrm")

#: Where Flask-AmoCRM's revision is kept (the site's own Alembic keeps its
#: ``alembic_version``).
VERSION_TABLE = "amocrm_alembic_version"
#: Every table of Flask-AmoCRM, past and present, starts with it.
TABLE_PREFIX = "amocrm_"
#: The folder of the environment and the revisions.
SCRIPTS = Path(__file__).parent
#: The extra that brings Alembic.
EXTRA = "migrate"


class MigrationsUnavailable(RuntimeError):
    """Alembic is not installed (the ``migrate`` extra)."""


class BaselineRefused(RuntimeError):
    """The baseline revision is not undone: it would drop every table."""


class NotAdopted(RuntimeError):
    """SQL was asked for tables made without migrations: they are adopted by a real
    upgrade first."""


class MigrationError(RuntimeError):
    """Alembic refused the command (an unknown revision ...); the message is
    Alembic's."""


def ours(table_name: str | None) -> bool:
    """Whether ``table_name`` is one of Flask-AmoCRM's tables (or its version
    table)."""
    return bool(table_name) and str(table_name).startswith(TABLE_PREFIX)


def _table_of(object_: Any, name: str | None, type_: str) -> str | None:
    if type_ == "table":
        return name
    table = getattr(object_, "table", None)
    return getattr(table, "name", None)


def include_object(
    object_: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """For the site's Alembic ``env.py`` (``context.configure(include_object=...)``)
    or ``Migrate(app, db, include_object=include_object)``: leave Flask-AmoCRM's
    tables, their columns, indexes and constraints, and its version table out of the
    site's autogenerate. ``flask amocrm upgrade-db`` takes care of them."""
    return not ours(_table_of(object_, name, type_))


def include_name(name: str | None, type_: str, parent_names: dict[str, Any]) -> bool:
    """For ``context.configure(include_name=...)`` beside :func:`include_object`:
    Flask-AmoCRM's tables in the database are not even reflected. Not enough alone
    where ``db.metadata`` holds our tables (``AmoCRM(app, db=db)``): the site's
    autogenerate would then create them again; :func:`include_object` is what
    leaves them out."""
    if type_ == "table":
        return not ours(name)
    return not ours(parent_names.get("table_name"))


def only_ours_object(
    object_: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """The filter of our own environment: Flask-AmoCRM's tables only."""
    return ours(_table_of(object_, name, type_))


def only_ours_name(name: str | None, type_: str, parent_names: dict[str, Any]) -> bool:
    """The filter of our own environment, on reflected names."""
    if type_ == "schema":
        return True
    if type_ == "table":
        return ours(name)
    return ours(parent_names.get("table_name"))


def available() -> bool:
    """Whether Alembic is installed."""
    try:
        import alembic  # noqa: F401
    except ImportError:
        return False
    return True


def _require() -> None:
    if not available():
        raise MigrationsUnavailable(
            "Migrating the amocrm_* tables needs Alembic: "
            f"pip install 'Flask-AmoCRM[{EXTRA}]'."
        )


def alembic_config(
    *,
    connection: Connection | None = None,
    url: str | None = None,
    dialect: str | None = None,
    output: TextIO | None = None,
) -> Config:
    """An Alembic configuration of our revisions: on ``connection``, on ``url``,
    or, to print SQL (``sql=True``), for ``dialect``; SQL goes to ``output``."""
    _require()
    from alembic.config import Config

    config = Config(output_buffer=output, stdout=output or sys.stdout)
    config.set_main_option("script_location", str(SCRIPTS))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["connection"] = connection
    config.attributes["dialect"] = dialect
    return config


@functools.cache
def _scripts() -> ScriptDirectory:
    """Our revisions, read once per process."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config())


def head() -> str:
    """The newest revision."""
    found = _scripts().get_current_head()
    assert found is not None
    return found


def revision_of(connection: Connection) -> str | None:
    """The revision the database is stamped with, ``None`` when it is not (read
    without Alembic)."""
    if not inspect(connection).has_table(VERSION_TABLE):
        return None
    found = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))
    return found.scalar()


def tables_of(connection: Connection) -> list[str]:
    """Which of the current tables exist."""
    inspector = inspect(connection)
    return [t.name for t in metadata.sorted_tables if inspector.has_table(t.name)]


def _stamp(connection: Connection, revision: str) -> None:
    from alembic.runtime.migration import MigrationContext

    context = MigrationContext.configure(
        connection, opts={"version_table": VERSION_TABLE}
    )
    context.stamp(_scripts(), revision)


def adopt(connection: Connection) -> list[str]:
    """Take tables made without migrations under them: create the missing ones, add
    the columns and indexes older ones lack, stamp the head revision. Return what
    was added to existing tables (``"amocrm_events.search"``, index names)."""
    _require()
    metadata.create_all(connection)
    added = upgrade_tables(connection)
    _stamp(connection, head())
    return added


def ensure_tables(connection: Connection) -> list[str]:
    """What ``flask amocrm init-db`` and the first use of the embedded database do:
    make the tables ready, and return what was added to existing ones.

    Tables under no migrations are made or completed as always, and stamped with the
    head when Alembic is installed. Tables at the head get back a table, column or
    index that is missing. Tables at an older revision are left alone for
    ``upgrade-db`` (completing them here would make its revisions fail)."""
    revision = revision_of(connection)
    if revision is None:
        if available():
            return adopt(connection)
        metadata.create_all(connection)
        return upgrade_tables(connection)
    if available() and revision == head():
        # at the head the models are the schema: whatever is missing is put back
        metadata.create_all(connection)
        return upgrade_tables(connection)
    log.warning(
        "The amocrm_* tables are at revision %s, not at this version's: run "
        "'flask amocrm upgrade-db' (pip install 'Flask-AmoCRM[%s]').",
        revision,
        EXTRA,
    )
    return []


@dataclass
class Upgrade:
    """What :func:`upgrade` did."""

    #: The revision before and after.
    before: str | None
    after: str | None
    #: Tables made without migrations were adopted (:func:`adopt`): what was added.
    adopted: list[str] | None = None
    #: The revisions applied, oldest first.
    applied: list[str] = field(default_factory=list)


def _applied(before: str | None, after: str | None) -> list[str]:
    if before == after or after is None:
        return []
    steps = _scripts().iterate_revisions(after, before or "base")
    return [s.revision for s in reversed(list(steps))]


def upgrade(
    engine: Engine, *, sql: bool = False, output: TextIO | None = None
) -> Upgrade:
    """Bring the ``amocrm_*`` tables in ``engine``'s database to the head revision,
    in one transaction where the database allows it; adopt tables made without
    migrations. ``sql=True`` writes the SQL to ``output`` instead of running it
    (it still reads the current revision)."""
    _require()
    from alembic import command

    if sql:
        with engine.connect() as connection:
            before = revision_of(connection)
            existing = tables_of(connection)
        if before is None and existing:
            raise NotAdopted(
                "The amocrm_* tables were made without migrations: run "
                "'flask amocrm upgrade-db' once without --sql to adopt them."
            )
        config = alembic_config(dialect=engine.dialect.name, output=output)
        command.upgrade(config, f"{before}:head" if before else "head", sql=True)
        return Upgrade(before=before, after=before)
    with engine.begin() as connection:
        before = revision_of(connection)
        existing = tables_of(connection)
        if before is None and existing:
            adopted = adopt(connection)
            return Upgrade(before=None, after=revision_of(connection), adopted=adopted)
        if before is not None and not existing:
            # The tables were dropped and their revision left behind: start afresh.
            connection.execute(text(f"DELETE FROM {VERSION_TABLE}"))
            before = None
        command.upgrade(alembic_config(connection=connection), "head")
        after = revision_of(connection)
    return Upgrade(before=before, after=after, applied=_applied(before, after))


def downgrade(
    engine: Engine, revision: str, *, sql: bool = False, output: TextIO | None = None
) -> str | None:
    """Take the ``amocrm_*`` tables back to ``revision``; return the revision they
    are at. The baseline is never undone (:class:`BaselineRefused`)."""
    _require()
    from alembic import command
    from alembic.util import CommandError

    try:
        if sql:
            with engine.connect() as connection:
                before = revision_of(connection) or head()
            config = alembic_config(dialect=engine.dialect.name, output=output)
            command.downgrade(config, f"{before}:{revision}", sql=True)
            return before
        with engine.begin() as connection:
            command.downgrade(alembic_config(connection=connection), revision)
            return revision_of(connection)
    except CommandError as exc:
        raise MigrationError(str(exc)) from None
