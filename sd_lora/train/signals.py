"""Ctrl-C and SIGTERM stop a run cleanly: the current step finishes, state and adapter are saved, the process
exits 0. A signal that arrives while files are being written only says "saving, please wait" (a second Ctrl-C
used to kill the save half-way and lose the run)."""

from __future__ import annotations

import contextlib
import signal
import sys

__all__ = ["StopSignals"]


class StopSignals:
    def __init__(self):
        self.requested: str | None = None  # the signal's name once one arrived
        self.saving = False
        self._told = False  # "please wait" is said once per save
        self._previous: dict = {}

    def install(self) -> None:
        def request_stop(signum, _frame):
            if self.saving and not self._told:
                print("sd-lora: saving, please wait …", file=sys.stderr, flush=True)
                self._told = True
            self.requested = self.requested or signal.Signals(signum).name

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, request_stop)
            except ValueError:  # not the main thread (e.g. inside a notebook worker): keep the defaults
                pass

    @contextlib.contextmanager
    def saving_files(self):
        self.saving, self._told = True, False
        try:
            yield
        finally:
            self.saving = False

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
