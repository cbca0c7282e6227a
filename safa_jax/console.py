"""What a person watching a run sees: one progress line, an epoch summary line, warnings in plain words.

Why not the log: absl and Orbax print dozens of INFO lines per checkpoint. The entry points set the
libraries' logs to warnings (`--log_level=info` brings them back) and the train loop talks through here.
On a terminal the progress line is redrawn in place; in a log file (not a TTY) it is one line every 30 s.
Only process 0 prints. TensorFlow's start-up notices, which no log level reaches, are filtered out at import.
"""

import datetime
import importlib
import os
import sys
import tempfile
import time
from collections.abc import Mapping
from typing import Any, TextIO

INTERACTIVE_EVERY_SECS = 0.5
LOG_FILE_EVERY_SECS = 30.0


# Informational lines TensorFlow's C++ start-up writes straight to file descriptor 2, through absl before any log
# level is set (so TF_CPP_MIN_LOG_LEVEL does not reach the oneDNN one); the first is printed once per library.
TENSORFLOW_STARTUP_NOTICES = (
    "All log messages before absl::InitializeLog() is called are written to STDERR",
    "oneDNN custom operations are on.",
    "cpu_feature_guard.cc",
    "To enable the following instructions:",
)


def without_startup_notices(text: str) -> str:
    """`text` without the lines that carry one of TENSORFLOW_STARTUP_NOTICES; every other line kept as it was."""
    return "".join(line for line in text.splitlines(keepends=True)
                   if not any(notice in line for notice in TENSORFLOW_STARTUP_NOTICES))


def import_tensorflow_quietly() -> None:
    """Imports TensorFlow (where installed) with its start-up notices filtered out of stderr, so that later imports
    (tf.data, tfds, clu's TensorBoard writer) find it loaded and print nothing. Any other line written to stderr
    during the import, a warning or an error, is passed on."""
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    with tempfile.TemporaryFile() as captured:
        saved_stderr = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            importlib.import_module("tensorflow")
        except ImportError:
            pass  # machines without TensorFlow (a lent GPU machine) use the fallbacks of data/ and metrics.py
        finally:
            os.dup2(saved_stderr, 2)
            os.close(saved_stderr)
            captured.seek(0)
            sys.stderr.write(without_startup_notices(captured.read().decode(errors="replace")))
            sys.stderr.flush()


def _is_tty(stream: TextIO) -> bool:
    return bool(getattr(stream, "isatty", lambda: False)())


class Console:
    """Prints lines and a progress line that later lines do not garble; silent on processes other than 0."""

    def __init__(self, stream: TextIO | None = None, *, enabled: bool = True):
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled
        self.interactive = _is_tty(self.stream)
        self._bar_shown = False

    def line(self, text: str) -> None:
        if not self.enabled:
            return
        if self._bar_shown:
            self.stream.write("\r\x1b[K")
            self._bar_shown = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def bar(self, text: str) -> None:
        """The progress line: redrawn in place on a terminal, a plain line otherwise."""
        if not self.enabled:
            return
        if self.interactive:
            self.stream.write("\r\x1b[K" + text)
            self.stream.flush()
            self._bar_shown = True
        else:
            self.line(text)

    def close(self) -> None:
        if self.enabled and self._bar_shown:
            self.stream.write("\n")
            self.stream.flush()
            self._bar_shown = False


class ProgressBar:
    """`progress(step)` after every step: step/total, epoch, the latest logged loss, images/s and the ETA.

    Reports at most every 0.5 s on a terminal and every 30 s in a log file, and always at the last step; the
    first call only starts the clock (it follows the compile). The rate is the mean since the clock started, not
    since the last report: steps are dispatched asynchronously and wait at each logging step, so a short window
    swings between the dispatch rate and a stall (a two-hour run once read "ETA 1 day, 7:12:50"), while the
    mean also counts the evaluations and checkpoints the rest of the run will have. Also writes
    `steps_per_sec` to the metric writer.
    """

    def __init__(self, num_train_steps: int, *, steps_per_epoch: int, batch_size: int, writer, console: Console,
                 every_secs: float | None = None):
        self.num_train_steps, self.steps_per_epoch, self.batch_size = num_train_steps, steps_per_epoch, batch_size
        self.writer, self.console = writer, console
        self.every_secs = every_secs if every_secs is not None else (
            INTERACTIVE_EVERY_SECS if console.interactive else LOG_FILE_EVERY_SECS)
        self.loss: float | None = None
        self._start: tuple[int, float] | None = None
        self._last_report = 0.0

    def __call__(self, step: int, t: float | None = None) -> bool:
        t = time.monotonic() if t is None else t
        if self._start is None:
            self._start = (step, t)
            self._last_report = t
            return False
        start_step, start_t = self._start
        if step == start_step or not (t - self._last_report >= self.every_secs or step == self.num_train_steps):
            return False
        steps_per_sec = (step - start_step) / max(t - start_t, 1e-9)
        eta = datetime.timedelta(seconds=round((self.num_train_steps - step) / steps_per_sec))
        epochs = -(-self.num_train_steps // self.steps_per_epoch)
        loss = "" if self.loss is None else f" | loss {self.loss:.4f}"
        self.console.bar(f"step {step}/{self.num_train_steps} ({100.0 * step / self.num_train_steps:.1f}%) | "
                         f"epoch {(step - 1) // self.steps_per_epoch + 1}/{epochs}{loss} | "
                         f"{steps_per_sec * self.batch_size:.0f} images/s | ETA {eta}")
        self.writer.write_scalars(step, {"steps_per_sec": steps_per_sec})
        self._last_report = t
        return True


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def epoch_summary(epoch: int, num_epochs: int, train_means: Mapping[str, float], images_per_sec: float,
                  test: Mapping[str, Any] | None) -> str:
    """`epoch 25/200: loss 2.0212, train accuracy 85.92 %, 487 images/s; test top-1 error 56.33 % (many ...)`."""
    text = (f"epoch {epoch + 1}/{num_epochs}: loss {train_means['loss']:.4f}, train accuracy "
            f"{train_means['train_accuracy']:.2f} %, {images_per_sec:.0f} images/s")
    if test is not None:
        text += (f"; test top-1 error {_percent(test['top1_error'])} % (accuracy many "
                 f"{_percent(test['many_shot_accuracy'])} / medium {_percent(test['medium_shot_accuracy'])} / few "
                 f"{_percent(test['few_shot_accuracy'])} %)")
    return text
