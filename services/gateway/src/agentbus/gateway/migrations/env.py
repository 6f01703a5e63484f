"""Alembic environment: migrations run on the connection agentbus.common.db.migrate passes in."""

from alembic import context

from agentbus.gateway.store.tables import metadata

config = context.config
connection = config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=config.attributes.get("version_table", "alembic_version_gateway"),
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
