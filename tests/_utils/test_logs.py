"""_utils.logs: the CLI's one stderr handler on the ``culnig`` logger."""
from __future__ import annotations

import io
import logging

import pytest

from culnig_ext._utils.logs import LEVELS, LOGGER, setup, teardown


@pytest.fixture
def logger():
    log = logging.getLogger(LOGGER)
    handlers, level, propagate = list(log.handlers), log.level, log.propagate
    yield log
    log.handlers[:] = handlers
    log.setLevel(level)
    log.propagate = propagate


def test_messages_at_the_level_and_above_go_to_the_stream_prefixed(logger):
    out = io.StringIO()
    handler = setup("warning", stream=out)
    logger.info("not shown")
    logger.warning("shown")
    logger.error("also shown")
    assert out.getvalue() == "[culnig] shown\n[culnig] also shown\n"
    assert logger.level == logging.WARNING and logger.propagate is False and handler in logger.handlers
    assert LEVELS == ("debug", "info", "warning", "error")


def test_a_second_setup_replaces_the_first_handler_and_keeps_others(logger):
    other = logging.StreamHandler(io.StringIO())
    logger.addHandler(other)
    first, second = io.StringIO(), io.StringIO()
    setup("INFO", stream=first)
    h2 = setup("debug", stream=second)
    logger.debug("once")
    assert first.getvalue() == "" and second.getvalue() == "[culnig] once\n"
    assert other in logger.handlers and sum(1 for h in logger.handlers if h is not other) == 1
    teardown(h2)
    assert h2 not in logger.handlers and logger.propagate is True and other in logger.handlers


def test_setup_writes_to_stderr_by_default(logger, capsys):
    setup()
    logger.info("to stderr")
    captured = capsys.readouterr()
    assert captured.err == "[culnig] to stderr\n" and captured.out == "" and logger.level == logging.INFO


def test_an_unknown_level_is_refused_naming_the_choices(logger):
    with pytest.raises(ValueError, match=r"unknown log level 'loud'; expected one of \('debug', 'info', 'warning', 'error'\)"):
        setup("loud")
