"""Reading herald's PostgreSQL tables from a test that runs herald as separate processes."""

from __future__ import annotations

# The delivery statuses a delivery does not leave.
FINAL = ("sent", "delivered", "read", "failed", "dead", "skipped", "cancelled")


class Db:
    """One autocommit connection whose search path is the test's own schema."""

    def __init__(self, schema: str) -> None:
        import psycopg

        from tests.contract.conftest import PG_URL

        self.conn = psycopg.connect(PG_URL, autocommit=True)
        self.conn.execute(f'SET search_path TO "{schema}"')

    def one(self, sql: str, *args: object) -> object:
        row = self.conn.execute(sql, args).fetchone()
        return row[0] if row else None

    def close(self) -> None:
        self.conn.close()
