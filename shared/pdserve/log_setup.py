"""structlog configuration shared by every service: JSON lines on stderr, request ids bound
through contextvars so that every line logged while serving a request carries its id."""

from __future__ import annotations

import logging
import os
import sys

import structlog


def configure_logging(service: str, level: str | None = None, json_logs: bool | None = None) -> None:
    level_name = (level or os.environ.get("PDSERVE_LOG_LEVEL", "info")).upper()
    if json_logs is None:
        json_logs = os.environ.get("PDSERVE_LOG_FORMAT", "json") == "json"
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json_logs else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level_name, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service, pid=os.getpid())
    # Libraries that log through the stdlib (uvicorn, nats) go to stderr at warning and above.
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
