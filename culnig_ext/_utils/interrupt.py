"""Interruptions: SIGINT / SIGTERM become exceptions that unwind cleanly, with a defined exit status and message.

Python turns SIGINT (Ctrl-C) into ``KeyboardInterrupt``; ``signals_as_exceptions()`` makes SIGTERM (``kill``, a batch
scheduler's time limit, ``docker stop``) raise ``Terminated``, a subclass of ``KeyboardInterrupt``. Either unwinds
the stack like any exception, so ``finally`` blocks run: hooks are removed, a scorer checkpoint is flushed, temp
files of atomic writes are removed (``culnig_ext._utils.atomic``), and no output is left half-written under its final name.

The ``culnig`` command turns them into exit status 130 (SIGINT) or 143 (SIGTERM), the shells' 128 + signal number,
and one line on stderr saying what was kept and how to resume (``interrupted_message``).
"""
from __future__ import annotations

import shlex
import signal
import threading
from contextlib import contextmanager
from typing import Iterator, Sequence

EXIT_SIGINT = 128 + signal.SIGINT   # 130
EXIT_SIGTERM = 128 + signal.SIGTERM  # 143


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM (inside ``signals_as_exceptions``).

    A ``KeyboardInterrupt`` so that code which cleans up after Ctrl-C (``except KeyboardInterrupt``, ``finally``)
    does the same after SIGTERM, and so that ``except Exception`` never swallows it.
    """

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(f"terminated by {signal.Signals(signum).name}")
        self.signum = signum


def _raise_terminated(signum: int, frame) -> None:
    raise Terminated(signum)


@contextmanager
def signals_as_exceptions() -> Iterator[None]:
    """Within the block, SIGTERM raises ``Terminated`` and SIGINT raises ``KeyboardInterrupt``.

    Only default dispositions are replaced: a signal that is ignored (``nohup``, a shell's background job ignores
    SIGINT) stays ignored, as Python itself does at start-up, and a handler someone else installed stays in place.
    The previous handlers are restored on exit. Outside the main thread (where Python cannot install handlers) the
    block runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    ours = {signal.SIGTERM: _raise_terminated, signal.SIGINT: signal.default_int_handler}
    previous = {}
    for sig, handler in ours.items():
        if signal.getsignal(sig) == signal.SIG_DFL:
            previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def exit_status(exc: KeyboardInterrupt) -> int:
    """130 for SIGINT (a plain ``KeyboardInterrupt``), 143 for SIGTERM (``Terminated``)."""
    if isinstance(exc, Terminated):
        return 128 + int(exc.signum)
    return EXIT_SIGINT


# What each command keeps when it is interrupted ({out}: its output path). Commands not listed write their outputs
# atomically at the end, so nothing of theirs is kept.
KEPT = {
    "score": "no score table was written to {out}",
    "identify": "no neuron set was written to {out} (each file is written whole or not at all)",
    "evaluate": "finished per-condition records are in {out}/eval.partial/; no results.json or report.md was "
                "written (an earlier complete evaluation in {out} is unchanged)",
    "report": "report files are written whole or not at all; those not yet rewritten keep their previous content",
    "run": "finished score tables in {out}/scores/ are kept and reused when the same command is run again; "
           "evaluation records, if any, are in {out}/eval.partial/ (eval/ and the report are replaced only at the end)",
}


def interrupted_message(command: str, exc: KeyboardInterrupt, argv: Sequence[str], out: str | None = None,
                        checkpoint: str | None = None) -> str:
    """One line: which signal, what was kept, and the command that resumes (the same command line)."""
    name = signal.Signals(getattr(exc, "signum", signal.SIGINT)).name
    kept = KEPT.get(command, "nothing half-written was left").format(out=out if out is not None else "the output")
    if checkpoint:
        kept += f"; the partial table is checkpointed in {checkpoint}"
    rerun = shlex.join(["culnig", *argv])
    return f"culnig {command}: interrupted by {name}; {kept}. To resume, run the same command again: {rerun}"


__all__ = ["EXIT_SIGINT", "EXIT_SIGTERM", "KEPT", "Terminated", "exit_status", "interrupted_message",
           "signals_as_exceptions"]
