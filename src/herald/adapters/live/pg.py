"""Wake-ups of live inbox streams across processes through PostgreSQL ``LISTEN``/``NOTIFY``.

The process that sends an in-app item (a ``herald worker``) numbers it in the feed, commits,
then ``NOTIFY herald_inbox, '<user id>'``; every process listening (each ``herald api``) wakes
the streams it holds for that user, which read the new items from the database. The payload is
only the user id: nothing personal travels, and resume never depends on the signal.

Sending is coalesced: the user ids woken while one round trip is under way go in the next one.
The listener reconnects with backoff and, once back, wakes every stream (whatever was sent while
nobody listened is then read from the feed). Both are
:class:`herald.adapters.pg_channel.PgChannel`'s, as for the queue's wake-ups.
"""

from __future__ import annotations

from herald.adapters.live.local import LocalLiveSignals, log
from herald.adapters.pg_channel import PgChannel, database_dsn, schema_channel
from herald.adapters.store.database import Database


class PgLiveSignals(LocalLiveSignals):
    def __init__(self, dsn: str, *, channel: str = "herald_inbox") -> None:
        super().__init__()
        self.pg = PgChannel(dsn, channel, self.deliver, kind="live", log=log)

    @classmethod
    async def for_database(cls, db: Database) -> PgLiveSignals:
        """On the channel of ``db``'s schema: deployments sharing a database do not wake each
        other's streams."""
        return cls(database_dsn(db), channel=await schema_channel(db, "herald_inbox"))

    async def start(self, timeout: float = 5.0) -> None:
        await self.pg.start(timeout)

    async def close(self) -> None:
        await self.pg.close()
        await super().close()

    def notify(self, user_id: str) -> None:
        if self.pg.closed:
            return
        # This process's own streams hear it from the database like everyone else's; waking
        # them here as well costs nothing and keeps one-process latency free of the round trip.
        self.deliver(user_id)
        self.pg.send(user_id)
