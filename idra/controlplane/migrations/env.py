"""Alembic's environment: runs the migrations on the connection ``migrations.upgrade``
hands over (already holding the migration lock)."""

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, transactional_ddl=True)
with context.begin_transaction():
    context.run_migrations()
