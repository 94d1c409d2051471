"""Log levels of the seed's admin API (FATAL ERROR WARN INFO DEBUG TRACE) on stdlib logging."""

from __future__ import annotations

import logging
import os
import sys

TRACE = 5
LEVELS = {
    "FATAL": logging.CRITICAL,
    "ERROR": logging.ERROR,
    "WARN": logging.WARNING,
    "INFO": logging.INFO,
    "DEBUG": logging.DEBUG,
    "TRACE": TRACE,
}
NAMES = {v: k for k, v in LEVELS.items()}

logger = logging.getLogger("sofamesh.sidecar")


def setup(level: str) -> None:
    logging.addLevelName(TRACE, "TRACE")
    logging.addLevelName(logging.CRITICAL, "FATAL")
    logging.addLevelName(logging.WARNING, "WARN")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s %(levelname)s sidecar[{os.getpid()}]: %(message)s")
    )
    logger.handlers[:] = [handler]
    logger.propagate = False
    set_level(level)


def set_level(level: str) -> None:
    logger.setLevel(LEVELS[level])


def current_level() -> str:
    return NAMES.get(logger.level, "INFO")
