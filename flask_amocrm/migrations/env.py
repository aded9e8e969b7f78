"""The Alembic environment of Flask-AmoCRM's own tables.

Run by :mod:`flask_amocrm.migrations` (``flask amocrm upgrade-db``), which hands it
the connection in ``config.attributes["connection"]`` (or, to print SQL, the
dialect's name in ``config.attributes["dialect"]``); a maintainer's script may give
``sqlalchemy.url`` instead. Only the ``amocrm_*`` tables are looked at, and the
revision is kept in ``amocrm_alembic_version``, apart from the site's own history.
"""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy import Connection, create_engine

from flask_amocrm.migrations import VERSION_TABLE, only_ours_name, only_ours_object
from flask_amocrm.models import metadata

config = context.config
options: dict[str, Any] = {
    "target_metadata": metadata,
    "version_table": VERSION_TABLE,
    "include_name": only_ours_name,
    "include_object": only_ours_object,
    "compare_type": True,
}


def run(connection: Connection) -> None:
    context.configure(connection=connection, **options)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    dialect = config.attributes.get("dialect")
    if dialect:
        context.configure(dialect_name=dialect, literal_binds=True, **options)
    else:
        context.configure(
            url=config.get_main_option("sqlalchemy.url"), literal_binds=True, **options
        )
    with context.begin_transaction():
        context.run_migrations()
elif config.attributes.get("connection") is not None:
    run(config.attributes["connection"])
else:
    engine = create_engine(str(config.get_main_option("sqlalchemy.url")))
    with engine.begin() as connection:
        run(connection)
    engine.dispose()
