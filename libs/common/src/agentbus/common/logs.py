import logging
import os


def setup_logging(service: str, level: str | None = None) -> None:
    logging.basicConfig(
        level=(level or os.environ.get("LOG_LEVEL", "INFO")).upper(),
        format=f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s",
    )
    # nats.py logs every reconnect attempt at ERROR; our callbacks already say it once.
    logging.getLogger("nats.aio.client").setLevel(logging.CRITICAL)
    logging.getLogger("alembic").setLevel(logging.WARNING)
