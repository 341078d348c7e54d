"""Logging: the library logs to the ``culnig`` logger and never prints; the CLI attaches one stderr handler.

Library code uses ``logging.getLogger("culnig")`` (``log.info`` for progress messages, ``log.warning`` for what a
user should act on). An application embedding the library configures logging as it likes; without configuration
Python shows warnings and above only. ``culnig`` calls ``setup(level)`` (``--log-level``), which sends the
messages to stderr, so that stdout carries only the command's result (its summary, or JSON with ``--json``).
"""
from __future__ import annotations

import logging
import sys

LOGGER = "culnig"
LEVELS = ("debug", "info", "warning", "error")
_HANDLER_FLAG = "_culnig_cli_handler"


def setup(level: str = "info", stream=None) -> logging.Handler:
    """Send the ``culnig`` logger's records at ``level`` and above to ``stream`` (stderr), as ``[culnig] message``.

    Replaces a handler an earlier ``setup`` attached (calling it twice does not print twice); returns the handler.
    """
    if level.lower() not in LEVELS:
        raise ValueError(f"unknown log level {level!r}; expected one of {LEVELS}")
    logger = logging.getLogger(LOGGER)
    for old in [h for h in logger.handlers if getattr(h, _HANDLER_FLAG, False)]:
        logger.removeHandler(old)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(logging.Formatter("[culnig] %(message)s"))
    setattr(handler, _HANDLER_FLAG, True)
    logger.addHandler(handler)
    logger.setLevel(getattr(logging, level.upper()))
    logger.propagate = False
    return handler


def teardown(handler: logging.Handler) -> None:
    """Remove a handler ``setup`` attached (the CLI does so when a command ends)."""
    logger = logging.getLogger(LOGGER)
    logger.removeHandler(handler)
    logger.propagate = True
