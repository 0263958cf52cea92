"""Stop requests: SIGTERM (what SLURM and cloud preemption send) and SIGINT (Ctrl-C) end a run cleanly.

The first signal only sets a flag. The training loop checks it at the next step boundary, every rank agrees
(`distributed.agree`), rank 0 writes a training state and says so, and every process exits with status
128 + the signal's number (143 for SIGTERM, 130 for SIGINT), the status a shell reports for a process that
signal ended. A second signal exits at once, without saving.

One signal often arrives more than once: Ctrl-C, `timeout`, `kill -- -PGID` and SLURM reach every process of the
group or job, the `--gpus=N` launcher and torchrun's agent pass what they receive on to the training processes.
Repeats within DUPLICATE_WINDOW_SEC of the first are taken as the same request. The helper processes and threads
(DataLoader workers, the backends' threads) leave stop signals to this handler (torch_utils/stop_signals.py).
"""

import os
import signal
import time
from types import FrameType
from typing import Any

from torch_utils import distributed
from torch_utils.stop_signals import STOP_SIGNALS as STOP_SIGNALS
from torch_utils.stop_signals import exit_status as exit_status

DUPLICATE_WINDOW_SEC = 2.0
STDERR_FD = 2


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
        name = signal.Signals(signum).name
        if self.signum is None:
            self.signum, self._received_at = signum, now
            if distributed.is_main():
                _say(
                    f"\nReceived {name}: saving a training state after this step, then exiting (send it again to exit "
                    f"at once, without saving).\n"
                )
            return
        if now - self._received_at < DUPLICATE_WINDOW_SEC:
            return  # The same request reaching us twice (see the module docstring).
        _say(f"\nReceived {name} again: exiting without saving.\n")
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)  # End as that signal ends a process (no cleanup to run into).


def _say(text: str) -> None:
    """Write `text` from a signal handler straight to the standard error file descriptor.

    Not through sys.stderr: the handler runs between two bytecodes of the main thread, which may be in the middle of
    a write to the same buffered stream or to log.txt (run_log's tee), and a second write from inside it fails with
    "reentrant call" and ends the process. So the message reaches the console only; the training loop's own line at
    the step boundary records the stop in log.txt.
    """
    try:
        os.write(STDERR_FD, text.encode(errors="replace"))
    except OSError:
        pass  # No console to tell (closed or gone): stopping matters more.
