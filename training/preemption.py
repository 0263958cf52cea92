"""Stop requests: SIGTERM (what SLURM and cloud preemption send) and SIGINT (Ctrl-C) end a run cleanly.

The first signal only sets a flag. The training loop checks it at the next step boundary, every rank agrees
(`distributed.agree`), rank 0 writes a training state and says so, and every process exits with status
128 + the signal's number (143 for SIGTERM, 130 for SIGINT), the status a shell reports for a process that
signal ended. A second signal exits at once, without saving.

One signal often arrives more than once: Ctrl-C reaches every process of the terminal's process group, and the
`--gpus=N` launcher passes what it receives on to its training processes. Repeats within DUPLICATE_WINDOW_SEC of
the first are taken as the same request.
"""

import os
import signal
import sys
import time
from types import FrameType
from typing import Any

from torch_utils import distributed

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
DUPLICATE_WINDOW_SEC = 2.0


def exit_status(signum: int) -> int:
    """The exit status of a run stopped by signal `signum` after saving: 128 + signum, as shells report."""
    return 128 + signum


class StopRequest:
    """Catches SIGTERM and SIGINT while installed (a context manager) and remembers the first one."""

    def __init__(self) -> None:
        self.signum: int | None = None  # The first stop signal received; None while training may go on.
        self._received_at = 0.0  # time.monotonic() of the first signal.
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        """Whether a stop signal has arrived."""
        return self.signum is not None

    def __enter__(self) -> "StopRequest":
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        now = time.monotonic()
        if self.signum is None:
            self.signum, self._received_at = signum, now
            if distributed.is_main():
                print(
                    f"\nReceived {signal.Signals(signum).name}: saving a training state after this step, then exiting "
                    f"(send it again to exit at once, without saving).",
                    file=sys.stderr,
                    flush=True,
                )
            return
        if now - self._received_at < DUPLICATE_WINDOW_SEC:
            return  # The same request reaching us twice (see the module docstring).
        print(f"\nReceived {signal.Signals(signum).name} again: exiting without saving.", file=sys.stderr, flush=True)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)  # End as that signal ends a process (no cleanup to run into).
