"""Alembic environment: migrations run on the connection :func:`cloud.store_database.migrate` hands over.

There is no ``alembic.ini`` and no URL here: the coordinator (or a test) opens the database and puts
the connection in ``config.attributes["connection"]``, already inside a transaction that it commits.
"""

from __future__ import annotations

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("the coordinator store's migrations run through cloud.store_database.migrate(), "
                       "which passes an open connection; the alembic command line is not set up")
sqlite = connection.dialect.name == "sqlite"
# SQLite's DDL is transactional too: the whole upgrade is the caller's one transaction on either back end
context.configure(connection=connection, target_metadata=None, render_as_batch=sqlite, transactional_ddl=True)
with context.begin_transaction():
    context.run_migrations()
