"""row counts: exact page totals without counting rows

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 23:40:00

A page's `total` is exact (docs/api.md, Pages). `SELECT count(*)` over a million tasks or runs scans
them all on every page, so triggers keep the counts, in the same transaction as the change.
Names: `tasks`, `tasks|status=S`, `runs`, `runs|status=S`, `runs|task=T`, `runs|task=T|status=S`.

- SQLite (one writer at a time): `row_counts(name, stripe, n)` is updated in place (stripe 0);
  a task's rows go when they reach 0, so a deleted task leaves none behind.
- PostgreSQL: concurrent transactions updating shared count rows in place wait on each other
  and, taking them in different orders, deadlock (measured: event batches against run
  creation). So a change only appends its deltas to `row_count_deltas`, which takes no lock
  another writer waits on; a count is `row_counts` plus the deltas of its name, and the gateway
  folds the deltas into `row_counts` every second (`GatewayStore`, one copy at a time).
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _keys(table: str, row: str) -> list[tuple[str, bool]]:
    """(name expression, whether it is one task's) of the counts a row of `table` is part of."""
    if table == "tasks":
        return [("'tasks'", False), (f"'tasks|status=' || {row}.status", False)]
    return [
        ("'runs'", False),
        (f"'runs|status=' || {row}.status", False),
        (f"'runs|task=' || {row}.task_id", True),
        (f"'runs|task=' || {row}.task_id || '|status=' || {row}.status", True),
    ]


def _add(keys: list[tuple[str, bool]], delta: int) -> str:
    values = ", ".join(f"({name}, 0, {delta})" for name, _ in keys)
    return (
        f"INSERT INTO row_counts (name, stripe, n) VALUES {values} "
        "ON CONFLICT (name, stripe) DO UPDATE SET n = row_counts.n + excluded.n"
    )


def _drop_zeros(keys: list[tuple[str, bool]]) -> str:
    names = ", ".join(name for name, one_task in keys if one_task)
    return f"DELETE FROM row_counts WHERE n = 0 AND name IN ({names})"


def _sqlite(table: str) -> list[str]:
    new, old = _keys(table, "NEW"), _keys(table, "OLD")
    status_old = [k for k in old if "status" in k[0]]
    status_new = [k for k in new if "status" in k[0]]
    drop = f" {_drop_zeros(old)};" if table == "runs" else ""
    drop_status = f" {_drop_zeros(status_old)};" if table == "runs" else ""
    return [
        f"CREATE TRIGGER count_{table}_insert AFTER INSERT ON {table} BEGIN {_add(new, 1)}; END",
        f"CREATE TRIGGER count_{table}_delete AFTER DELETE ON {table} BEGIN {_add(old, -1)};{drop} END",
        f"CREATE TRIGGER count_{table}_status AFTER UPDATE OF status ON {table} "
        f"WHEN OLD.status IS NOT NEW.status BEGIN {_add(status_old, -1)}; {_add(status_new, 1)};{drop_status} END",
    ]


def _append(keys: list[tuple[str, bool]], delta: int) -> str:
    values = ", ".join(f"({name}, {delta})" for name, _ in keys)
    return f"INSERT INTO row_count_deltas (name, n) VALUES {values}"


def _postgresql(table: str) -> list[str]:
    new, old = _keys(table, "NEW"), _keys(table, "OLD")
    status_old = [k for k in old if "status" in k[0]]
    status_new = [k for k in new if "status" in k[0]]
    return [
        f"""CREATE FUNCTION count_{table}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    {_append(new, 1)};
  ELSIF TG_OP = 'DELETE' THEN
    {_append(old, -1)};
  ELSIF NEW.status IS DISTINCT FROM OLD.status THEN
    {_append(status_old, -1)};
    {_append(status_new, 1)};
  END IF;
  RETURN NULL;
END $$""",
        f"CREATE TRIGGER count_{table} AFTER INSERT OR DELETE OR UPDATE OF status ON {table} "
        f"FOR EACH ROW EXECUTE FUNCTION count_{table}()",
    ]


def upgrade() -> None:
    op.create_table(
        "row_counts",
        sa.Column("name", sa.String(300), nullable=False),
        sa.Column("stripe", sa.Integer(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", "stripe"),
    )
    # What is stored already.
    op.execute(
        "INSERT INTO row_counts (name, stripe, n) "
        "SELECT 'tasks', 0, count(*) FROM tasks "
        "UNION ALL SELECT 'tasks|status=' || status, 0, count(*) FROM tasks GROUP BY status "
        "UNION ALL SELECT 'runs', 0, count(*) FROM runs "
        "UNION ALL SELECT 'runs|status=' || status, 0, count(*) FROM runs GROUP BY status "
        "UNION ALL SELECT 'runs|task=' || task_id, 0, count(*) FROM runs GROUP BY task_id "
        "UNION ALL SELECT 'runs|task=' || task_id || '|status=' || status, 0, count(*) FROM runs "
        "GROUP BY task_id, status"
    )
    postgresql = op.get_bind().dialect.name == "postgresql"
    if postgresql:
        op.create_table(
            "row_count_deltas",
            sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
            sa.Column("name", sa.String(300), nullable=False),
            sa.Column("n", sa.Integer(), nullable=False),
        )
        op.create_index("ix_row_count_deltas_name", "row_count_deltas", ["name"])
    build = _postgresql if postgresql else _sqlite
    for table in ("tasks", "runs"):
        for statement in build(table):
            op.execute(statement)


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    for table in ("tasks", "runs"):
        if postgresql:
            op.execute(f"DROP TRIGGER count_{table} ON {table}")
            op.execute(f"DROP FUNCTION count_{table}()")
        else:
            for kind in ("insert", "delete", "status"):
                op.execute(f"DROP TRIGGER count_{table}_{kind}")
    if postgresql:
        op.drop_table("row_count_deltas")
    op.drop_table("row_counts")
