"""``herald serve`` with one store read made to fail: an unhandled error on demand.

``python -m tests.support.faulty_serve --port N`` in a directory holding herald.toml runs what
`herald serve` runs (the same configuration, logging and container), except that
``GET /v1/users/boom`` raises inside the store read, in a frame whose local variables hold every
provider credential (a traceback that printed locals would print them) and with a message that
names one (drivers put connection strings in their errors).
"""

from __future__ import annotations

import argparse
from typing import Any

import uvicorn

from herald.bootstrap import Container, build
from herald.config import load_settings
from herald.entrypoints.api.app import create_app
from herald.logs import configure


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    settings = load_settings()
    configure(settings.logging.level, json=settings.logging.json_logs)

    async def make() -> Container:
        container = await build(settings)
        original = container.store.get_user

        async def get_user(user_id: str) -> Any:
            if user_id == "boom":
                raw_tables = dict(settings.providers.model_extra or {})
                plain_password = raw_tables["smtp"]["password"]
                twilio_token = raw_tables["twilio"]["auth_token"]
                raise RuntimeError(
                    f"database exploded at postgresql://herald:{plain_password}@db.internal/herald "
                    f"({len(raw_tables)} provider tables, twilio {len(twilio_token)} chars)"
                )
            return await original(user_id)

        container.store.get_user = get_user  # type: ignore[method-assign]  # the induced fault
        return container

    app = create_app(
        make, roles={"router", "worker", "scheduler"}, max_body_bytes=settings.server.max_body_bytes
    )
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_config=None, access_log=False, lifespan="on")


if __name__ == "__main__":
    main()
