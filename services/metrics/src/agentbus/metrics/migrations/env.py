"""Alembic environment: runs on the connection `agentbus.common.db.migrate` hands over."""

from alembic import context

from agentbus.metrics.models import metadata

config = context.config
connection = config.attributes.get("connection")
if connection is None or context.is_offline_mode():
    raise RuntimeError(
        "metrics migrations run through agentbus.common.db.migrate (online, with a connection)"
    )

context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=config.attributes["version_table"],
    # SQLite cannot ALTER most things: batch mode rebuilds the table instead.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
