"""Alembic's environment for the conversation store: the caller hands over an open
connection (see ``voice_agent.store.migrate``); nothing is read from an ini file."""

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
