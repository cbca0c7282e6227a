"""SIGTERM and SIGINT ask a training loop to stop after its current step (a preemption notice, Ctrl-C).

Why: a TPU or spot preemption sends SIGTERM and kills the process a little later; exiting at once loses
everything since the last checkpoint. With `StopRequest` installed the loop finishes its step, saves a
checkpoint there and exits with a line saying how to resume. A second Ctrl-C stops at once, as usual.
On several processes every process must stop at the same step: `agreed` combines their requests.
"""

import signal
import threading

import numpy as np

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """Context manager: while active, the first SIGTERM/SIGINT sets `signal_name` instead of killing the process."""

    def __init__(self):
        self.signal_name: str | None = None
        self._previous = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there.
            self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now.
        self.signal_name = signal.Signals(signum).name

    def agreed(self, process_count: int) -> str | None:
        """The signal to stop for, the same on every process (call at the same steps on all of them)."""
        if process_count == 1:
            return self.signal_name
        from jax.experimental import multihost_utils  # noqa: PLC0415
        anyone = multihost_utils.process_allgather(np.int32(self.signal_name is not None)).max()
        return (self.signal_name or "a stop signal on another process") if anyone else None
