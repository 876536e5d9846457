"""Preemption: a signal (SIGTERM, SIGUSR1 by default) lets every rank finish its step, checkpoint and stop.

The handler only records the signal. After each optimizer step the ranks agree (one all-reduce of
a flag: a signal that reached any rank stops them all at the same step), write a checkpoint of that
step and stop with `Preempted`, which the command line turns into exit code 75 (EX_TEMPFAIL: try
again later; rerun with `--resume latest`). A second signal, more than REPEAT_WINDOW seconds after
the first, ends the process at once, as if no handler were installed. Data-loader workers ignore the
signals (a cluster signals every process of the job; they end with the trainer).
"""

import os
import signal
import threading
import time

import torch

from d2it import dist
from d2it.errors import D2itError

EXIT_PREEMPTED = 75  # sysexits' EX_TEMPFAIL: the run stopped cleanly and wants to be started again
# copies of one request: a cluster signals every process of a job and torchrun forwards what it gets, so a rank can
# receive the same signal twice at once; only a signal this many seconds after the first means "now"
REPEAT_WINDOW = 2.0


class Preempted(D2itError):
    """Training stopped on a signal after checkpointing; rerun with --resume latest (the signals are ignored from
    here on: the process is expected to exit)."""

    exit_code = EXIT_PREEMPTED
    label = "stopped"

    def __init__(self, message: str, step: int, checkpoint):
        super().__init__(message)
        self.step, self.checkpoint = step, checkpoint


class Preemption:
    """Installs the handlers while the run trains (`with`), and tells when all ranks are to stop."""

    def __init__(self, signals=()):
        self.signals = tuple(signals)
        self.received: int | None = None
        self._at = 0.0  # when the first signal came (time.monotonic)
        self._previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # Python delivers signals to the main thread only
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            # stopping: the process is about to exit 75, and a late copy of the signal must not kill it instead
            signal.signal(sig, signal.SIG_IGN if self.received is not None else handler)
        self._previous.clear()

    def _handle(self, signum, frame):
        if self.received is None:
            self.received, self._at = signum, time.monotonic()
        elif time.monotonic() - self._at > REPEAT_WINDOW:  # a second request: go now, as if unhandled
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    def requested(self, device) -> bool:
        """Whether any rank got a signal (every rank calls this after every step; one small all-reduce)."""
        flag = self.received is not None
        if not dist.is_distributed():
            return flag
        return not dist.all_true(torch.tensor(not flag, device=device))

    def name(self) -> str:
        """The signal received, e.g. SIGTERM ('a signal on another rank' when this rank got none)."""
        return signal.Signals(self.received).name if self.received is not None else "a signal on another rank"
