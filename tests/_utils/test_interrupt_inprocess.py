"""_utils.interrupt in this process: SIGTERM as an exception inside the block only, exit statuses, the message.
(tests/cli/test_interrupt.py signals real culnig subprocesses.)"""
from __future__ import annotations

import os
import signal
import threading

import pytest

from culnig_ext._utils.interrupt import (EXIT_SIGINT, EXIT_SIGTERM, Terminated, exit_status, interrupted_message,
                                         signals_as_exceptions)


@pytest.fixture
def default_handlers():
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    for s in before:
        signal.signal(s, signal.SIG_DFL)
    yield
    for s, h in before.items():
        signal.signal(s, h)


def test_terminated_is_a_keyboard_interrupt_naming_its_signal():
    exc = Terminated()
    assert isinstance(exc, KeyboardInterrupt) and exc.signum == signal.SIGTERM
    assert str(exc) == "terminated by SIGTERM"
    hup = Terminated(signal.SIGHUP)
    assert hup.signum == signal.SIGHUP and str(hup) == "terminated by SIGHUP"


def test_exit_statuses_are_128_plus_the_signal():
    assert (EXIT_SIGINT, EXIT_SIGTERM) == (130, 143)
    assert exit_status(KeyboardInterrupt()) == 130
    assert exit_status(Terminated()) == 143
    assert exit_status(Terminated(signal.SIGHUP)) == 128 + signal.SIGHUP


def test_sigterm_raises_inside_the_block_and_the_default_returns_after(default_handlers):
    with pytest.raises(Terminated) as info:
        with signals_as_exceptions():
            assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
            os.kill(os.getpid(), signal.SIGTERM)  # Python runs the handler before the next bytecode
            pytest.fail("SIGTERM did not raise inside the block")
    assert info.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL and signal.getsignal(signal.SIGINT) == signal.SIG_DFL


def test_ignored_and_foreign_handlers_stay(default_handlers):
    def mine(signum, frame):
        """Someone else's handler: it must stay in place."""

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, mine)
    with signals_as_exceptions():
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN and signal.getsignal(signal.SIGINT) is mine
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN and signal.getsignal(signal.SIGINT) is mine


def test_outside_the_main_thread_the_block_runs_unchanged(default_handlers):
    seen = []

    def body():
        with signals_as_exceptions():
            seen.append(signal.getsignal(signal.SIGTERM))

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert seen == [signal.SIG_DFL]


def test_the_message_names_the_signal_what_was_kept_and_the_command_to_resume():
    msg = interrupted_message("score", Terminated(), ["score", "--model", "m", "--out", "a b.safetensors"],
                              out="a b.safetensors", checkpoint="a b.safetensors.ckpt")
    assert msg == ("culnig score: interrupted by SIGTERM; no score table was written to a b.safetensors; the "
                   "partial table is checkpointed in a b.safetensors.ckpt. To resume, run the same command again: "
                   "culnig score --model m --out 'a b.safetensors'")
    assert interrupted_message("merge", KeyboardInterrupt(), ["merge", "x"]) == (
        "culnig merge: interrupted by SIGINT; nothing half-written was left. To resume, run the same command "
        "again: culnig merge x")
    assert "in the output/eval.partial/" in interrupted_message("evaluate", KeyboardInterrupt(), ["evaluate"])
