"""Apply the event log's migrations and exit: the one-shot job of a DDL user (compose: clickhouse-migrate)."""

from __future__ import annotations

import logging
import sys

from services.recorder.settings import MIGRATIONS_DIR
from swarm.eventlog import EventLog
from swarm.settings import ClickHouseSettings


def main() -> int:
    """Create the database if missing and apply pending migrations as SWARM_CLICKHOUSE_USER."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s migrate %(levelname)s %(message)s")
    with EventLog.open(ClickHouseSettings(), MIGRATIONS_DIR) as eventlog:
        print(f"{eventlog.database}: applied {len(eventlog.migrate(MIGRATIONS_DIR))} more; schema current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
