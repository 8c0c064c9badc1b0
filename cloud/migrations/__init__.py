"""Alembic migrations of the coordinator store (run by :func:`cloud.store_database.migrate` at start-up)."""
