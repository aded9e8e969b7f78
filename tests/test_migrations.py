"""The amocrm_* tables as Alembic migrations: ``flask amocrm upgrade-db`` on an empty
database, on tables made by ``init-db`` (adopted and stamped), on older tables, the
refused downgrade of the baseline, the SQL for a DBA, and the filter that keeps a
site's own autogenerate off our tables. SQLite and PostgreSQL."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from flask import Flask
from sqlalchemy import (
    Column,
    Connection,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    insert,
    inspect,
    select,
    text,
)

from flask_amocrm import AmoCRM
from flask_amocrm.migrations import (
    VERSION_TABLE,
    head,
    include_name,
    include_object,
    only_ours_name,
    only_ours_object,
)
from flask_amocrm.models import Event, metadata


def _app(tmp_path: Any, uri: str, *, db: Any = None) -> Flask:
    app = Flask("site", instance_path=str(tmp_path))
    app.config.update(
        AMOCRM_BASE_URL="https://example.amocrm.ru",
        AMOCRM_TOKEN="t",
        AMOCRM_DATABASE_URI=uri,
        SQLALCHEMY_DATABASE_URI=uri,
        AMOCRM_DELIVERY="deferred",
    )
    if db is not None:
        db.init_app(app)
    AmoCRM(app, db=db)
    return app


@pytest.fixture()
def engine(database_uri: str) -> Iterator[Any]:
    engine = create_engine(database_uri)
    yield engine
    engine.dispose()


def _cli(app: Flask, *args: str) -> Any:
    result = app.test_cli_runner().invoke(args=["amocrm", *args])
    try:
        return result
    finally:
        app.extensions["amocrm"].dispose()


def _differences(connection: Connection, target: MetaData = metadata) -> list[Any]:
    """What Alembic's autogenerate finds between the database and ``target`` (only
    the amocrm_* tables)."""
    context = MigrationContext.configure(
        connection,
        opts={
            "compare_type": True,
            "version_table": VERSION_TABLE,
            "include_object": only_ours_object,
            "include_name": only_ours_name,
        },
    )
    with warnings.catch_warnings():
        # SQLite cannot reflect the expression index (it exists on PostgreSQL only)
        warnings.filterwarnings("ignore", "autogenerate skipping", UserWarning)
        return list(compare_metadata(context, target))


def _revision(engine: Any) -> str | None:
    with engine.connect() as connection:
        if not inspect(connection).has_table(VERSION_TABLE):
            return None
        return connection.execute(
            text(f"SELECT version_num FROM {VERSION_TABLE}")
        ).scalar()


def test_upgrade_on_an_empty_database_gives_exactly_the_models(
    tmp_path: Any, engine: Any, database_uri: str
) -> None:
    app = _app(tmp_path, database_uri)
    result = _cli(app, "upgrade-db")
    assert result.exit_code == 0, result.output
    assert "Applied: 0001" in result.output
    assert f"the amocrm_* tables are at revision {head()}" in result.output
    with engine.connect() as connection:
        # a column, index or table added to models.py without a revision shows here
        assert _differences(connection) == []
        indexes = {i["name"] for i in inspect(connection).get_indexes("amocrm_events")}
    assert _revision(engine) == head()
    if engine.dialect.name == "postgresql":
        assert "ix_amocrm_events_search" in indexes
    again = _cli(app, "upgrade-db")
    assert again.exit_code == 0, again.output
    assert f"already at revision {head()}" in again.output


def test_the_drift_check_sees_a_column_models_has_and_no_revision_makes(
    tmp_path: Any, engine: Any, database_uri: str
) -> None:
    """The check above can fail: a column the models would have and the revisions
    do not make is a difference."""
    assert _cli(_app(tmp_path, database_uri), "upgrade-db").exit_code == 0
    grown = MetaData(naming_convention=metadata.naming_convention)
    for table in metadata.sorted_tables:
        table.to_metadata(grown)
    grown.tables["amocrm_events"].append_column(Column("priority", Integer))
    with engine.connect() as connection:
        found = _differences(connection, grown)
    assert [d[0] for d in found] == ["add_column"]
    assert found[0][3].name == "priority"


def test_tables_made_by_init_db_without_a_stamp_are_adopted(
    tmp_path: Any, engine: Any, database_uri: str
) -> None:
    # what 'flask amocrm init-db' made before the migrations: the tables, no revision
    metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(
            insert(Event).values(uid="a" * 32, kind="form", source="callback", data={})
        )
    assert _revision(engine) is None
    result = _cli(_app(tmp_path, database_uri), "upgrade-db")
    assert result.exit_code == 0, result.output
    assert "adopted" in result.output and head() in result.output
    assert _revision(engine) == head()
    with engine.connect() as connection:
        assert _differences(connection) == []
        assert connection.execute(select(Event.uid)).scalars().all() == ["a" * 32]


def test_older_tables_missing_a_later_column_are_upgraded(
    tmp_path: Any, engine: Any, database_uri: str
) -> None:
    metadata.create_all(engine)
    with engine.begin() as connection:
        # amocrm_events.search and amocrm_tokens.refreshed_at came later
        connection.execute(text("DROP INDEX IF EXISTS ix_amocrm_events_search"))
        connection.execute(text("ALTER TABLE amocrm_events DROP COLUMN search"))
        connection.execute(text("ALTER TABLE amocrm_tokens DROP COLUMN refreshed_at"))
        connection.execute(text("DROP TABLE amocrm_entity_index"))
        assert _differences(connection) != []
    result = _cli(_app(tmp_path, database_uri), "upgrade-db")
    assert result.exit_code == 0, result.output
    assert "amocrm_events.search" in result.output
    assert "amocrm_tokens.refreshed_at" in result.output
    with engine.connect() as connection:
        assert _differences(connection) == []
    assert _revision(engine) == head()


def test_init_db_stamps_the_head_and_upgrade_finds_nothing_to_do(
    tmp_path: Any, engine: Any, database_uri: str
) -> None:
    app = _app(tmp_path, database_uri)
    assert _cli(app, "init-db").exit_code == 0
    assert _revision(engine) == head()
    with engine.connect() as connection:
        assert _differences(connection) == []
    result = _cli(app, "upgrade-db")
    assert f"already at revision {head()}" in result.output


def test_the_baseline_is_not_downgraded(
    tmp_path: Any, engine: Any, database_uri: str
) -> None:
    app = _app(tmp_path, database_uri)
    assert _cli(app, "upgrade-db").exit_code == 0
    result = _cli(app, "downgrade-db", "base")
    assert result.exit_code == 1
    assert "baseline" in result.output and "drop the amocrm_* tables" in result.output
    assert _revision(engine) == head()
    assert inspect(engine).has_table("amocrm_events")
    unknown = _cli(app, "downgrade-db", "nosuch")
    assert unknown.exit_code == 1 and "nosuch" in unknown.output


def test_sql_is_printed_for_a_dba_and_nothing_runs(
    tmp_path: Any, engine: Any, database_uri: str
) -> None:
    app = _app(tmp_path, database_uri)
    result = _cli(app, "upgrade-db", "--sql")
    assert result.exit_code == 0, result.output
    assert "CREATE TABLE amocrm_events" in result.output
    assert f"INSERT INTO {VERSION_TABLE}" in result.output
    assert not inspect(engine).has_table("amocrm_events")
    # tables made without migrations are adopted by a real run first
    metadata.create_all(engine)
    refused = _cli(app, "upgrade-db", "--sql")
    assert refused.exit_code == 1 and "without --sql" in refused.output


def test_without_alembic_init_db_works_and_upgrade_db_names_the_extra(
    tmp_path: Any, engine: Any, database_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = _app(tmp_path, database_uri)
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "alembic", None)  # import alembic fails
        result = _cli(app, "upgrade-db")
        assert result.exit_code == 1
        assert "pip install 'Flask-AmoCRM[migrate]'" in result.output
        assert _cli(app, "init-db").exit_code == 0
    assert inspect(engine).has_table("amocrm_events")
    assert _revision(engine) is None
    # Alembic installed later: the tables are adopted
    adopted = _cli(app, "upgrade-db")
    assert "adopted" in adopted.output
    assert _revision(engine) == head()


def test_a_sites_autogenerate_leaves_our_tables_to_us(
    tmp_path: Any, engine: Any, database_uri: str
) -> None:
    """``AmoCRM(app, db=db)``: our tables sit in the site's database and in its
    ``db.metadata``; the site's own Alembic, with our filter, sees only its own."""
    from flask_sqlalchemy import SQLAlchemy

    db = SQLAlchemy()
    site_table = Table("articles", db.metadata, Column("id", Integer, primary_key=True))
    app = _app(tmp_path, database_uri, db=db)
    assert "amocrm_events" in db.metadata.tables
    result = _cli(app, "upgrade-db")
    assert result.exit_code == 0, result.output
    with engine.begin() as connection:
        # an amoCRM table of an older version the models no longer have
        connection.execute(text("CREATE TABLE amocrm_legacy (id INTEGER)"))
        # the site's own table, one column short of its model
        Table("articles", MetaData(), Column("title", String(10))).create(connection)
    site_table.append_column(Column("title", String(10)))

    def site_differences(**filters: Any) -> list[Any]:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts=filters)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "autogenerate skipping", UserWarning)
                return list(compare_metadata(context, db.metadata))

    def tables(found: list[Any]) -> set[str]:
        names = set()
        for diff in found:
            for part in diff if isinstance(diff, list) else [diff]:
                names.update(str(p.name) for p in part if isinstance(p, Table))
                names.update(str(p) for p in part if isinstance(p, str))
        return {n for n in names if n.startswith(("amocrm_", "articles"))}

    try:
        unfiltered = tables(site_differences())
        assert {"amocrm_legacy", VERSION_TABLE} <= unfiltered  # what the filter is for
        for filters in (
            {"include_object": include_object},
            {"include_object": include_object, "include_name": include_name},
        ):
            found = site_differences(**filters)
            assert tables(found) == {"articles"}, found
        # include_name alone hides the database's tables, not db.metadata's: the
        # site's autogenerate would then create ours again (the docs say so)
        alone = site_differences(include_name=include_name)
        assert "amocrm_events" in tables(alone)
    finally:
        with engine.begin() as connection:
            connection.execute(text("DROP TABLE amocrm_legacy"))
            connection.execute(text("DROP TABLE articles"))
        with app.app_context():
            db.engine.dispose()


def test_first_use_leaves_tables_at_another_revision_to_upgrade_db(
    tmp_path: Any, engine: Any, database_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Completing tables that a revision still has to change would make that
    revision fail: they are left alone, and the log says what to run."""
    app = _app(tmp_path, database_uri)
    assert _cli(app, "init-db").exit_code == 0
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE amocrm_events DROP COLUMN search"))
        connection.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = 'older'"))
    with caplog.at_level("WARNING", logger="flask_amocrm"):
        assert _cli(app, "init-db").exit_code == 0
    assert "run 'flask amocrm upgrade-db'" in caplog.text
    columns = {c["name"] for c in inspect(engine).get_columns("amocrm_events")}
    assert "search" not in columns
    assert _revision(engine) == "older"
