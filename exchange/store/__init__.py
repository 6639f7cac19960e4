"""SQL storage: one schema for SQLite and PostgreSQL through SQLAlchemy, migrated by Alembic."""
