"""row counts: exact page totals without counting rows

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 23:40:00

A page's `total` is exact (the contract). `SELECT count(*)` over a million tasks or runs scans
them all on every page, so triggers keep the counts, in the same transaction as the change:
`row_counts(name, stripe, n)`, where the count of a name is the sum of its stripes' n. Names:
`tasks`, `tasks|status=S`, `runs`, `runs|status=S`, `runs|task=T`, `runs|task=T|status=S`.
On PostgreSQL the names every write touches (`tasks`, `runs` and their statuses) are spread over
8 stripes picked at random, so concurrent writers rarely wait on one row; a task's own counts
stay on stripe 0 and their rows go when they reach 0 (a deleted task leaves none behind).
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

STRIPES = 8


def _keys(table: str, row: str) -> list[tuple[str, bool]]:
    """(name expression, striped) of the counts a row of `table` is part of."""
    if table == "tasks":
        return [("'tasks'", True), (f"'tasks|status=' || {row}.status", True)]
    return [
        ("'runs'", True),
        (f"'runs|status=' || {row}.status", True),
        (f"'runs|task=' || {row}.task_id", False),
        (f"'runs|task=' || {row}.task_id || '|status=' || {row}.status", False),
    ]


def _add(keys: list[tuple[str, bool]], delta: int, stripe: str, excluded: str) -> str:
    values = ", ".join(f"({name}, {stripe if striped else '0'}, {delta})" for name, striped in keys)
    return (
        f"INSERT INTO row_counts (name, stripe, n) VALUES {values} "
        f"ON CONFLICT (name, stripe) DO UPDATE SET n = {excluded}.n + excluded.n"
    )


def _drop_zeros(keys: list[tuple[str, bool]]) -> str:
    names = ", ".join(name for name, striped in keys if not striped)
    return f"DELETE FROM row_counts WHERE stripe = 0 AND n = 0 AND name IN ({names})"


def _sqlite(table: str) -> list[str]:
    # One writer at a time on SQLite: no stripes.
    new, old = _keys(table, "NEW"), _keys(table, "OLD")
    status_old = [k for k in old if "status" in k[0]]
    status_new = [k for k in new if "status" in k[0]]
    up = f"{_add(status_old, -1, '0', 'row_counts')}; {_add(status_new, 1, '0', 'row_counts')};"
    drop = f" {_drop_zeros(old)};" if table == "runs" else ""
    drop_status = f" {_drop_zeros(status_old)};" if table == "runs" else ""
    return [
        f"CREATE TRIGGER count_{table}_insert AFTER INSERT ON {table} BEGIN {_add(new, 1, '0', 'row_counts')}; END",
        f"CREATE TRIGGER count_{table}_delete AFTER DELETE ON {table} BEGIN "
        f"{_add(old, -1, '0', 'row_counts')};{drop} END",
        f"CREATE TRIGGER count_{table}_status AFTER UPDATE OF status ON {table} "
        f"WHEN OLD.status IS NOT NEW.status BEGIN {up}{drop_status} END",
    ]


def _postgresql(table: str) -> list[str]:
    new, old = _keys(table, "NEW"), _keys(table, "OLD")
    status_old = [k for k in old if "status" in k[0]]
    status_new = [k for k in new if "status" in k[0]]
    drop = f"{_drop_zeros(old)};" if table == "runs" else ""
    drop_status = f"{_drop_zeros(status_old)};" if table == "runs" else ""
    return [
        f"""CREATE FUNCTION count_{table}() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE s integer := floor(random() * {STRIPES})::integer;
BEGIN
  IF TG_OP = 'INSERT' THEN
    {_add(new, 1, "s", "row_counts")};
  ELSIF TG_OP = 'DELETE' THEN
    {_add(old, -1, "s", "row_counts")};
    {drop}
  ELSIF NEW.status IS DISTINCT FROM OLD.status THEN
    {_add(status_old, -1, "s", "row_counts")};
    {_add(status_new, 1, "s", "row_counts")};
    {drop_status}
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
    build = _postgresql if op.get_bind().dialect.name == "postgresql" else _sqlite
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
    op.drop_table("row_counts")
