"""The console: the progress line (rate, ETA, in place on a terminal), the epoch line, and the curves figure."""

import io
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image

from safa_jax import console, curves, epoch_log


class Recorder:
    def __init__(self):
        self.calls = []

    def write_scalars(self, step, scalars):
        self.calls.append((step, scalars))


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_line_reports_rate_epoch_loss_and_eta():
    stream, recorder = io.StringIO(), Recorder()
    out = console.Console(stream)
    progress = console.ProgressBar(100, steps_per_epoch=10, batch_size=128, writer=recorder, console=out,
                                   every_secs=30.0)
    assert not progress(1, t=100.0)  # the first call starts the clock
    assert not progress(20, t=120.0)  # 20 s < 30 s
    progress.loss = 1.23456
    assert progress(61, t=130.0)  # 60 steps in 30 s: 2 steps/s = 256 images/s; (100 - 61) / 2 = 19.5 s left
    assert stream.getvalue() == "step 61/100 (61.0%) | epoch 7/10 | loss 1.2346 | 256 images/s | ETA 0:00:20\n"
    assert not progress(70, t=140.0)  # 10 s after the last report
    assert progress(71, t=400.0)  # a stall: the rate is the mean since the clock started, 70 steps in 300 s
    assert stream.getvalue().splitlines()[-1] == ("step 71/100 (71.0%) | epoch 8/10 | loss 1.2346 | 30 images/s | "
                                                  "ETA 0:02:04")
    assert progress(100, t=401.0)  # the last step always reports
    assert stream.getvalue().splitlines()[-1].startswith("step 100/100 (100.0%) | epoch 10/10")
    assert recorder.calls == [(61, {"steps_per_sec": 2.0}), (71, {"steps_per_sec": 70 / 300}),
                              (100, {"steps_per_sec": 99 / 301})]


def test_progress_is_redrawn_in_place_on_a_terminal_and_lines_clear_it():
    terminal = FakeTerminal()
    out = console.Console(terminal)
    assert out.interactive
    out.bar("step 1")
    out.bar("step 2")
    out.line("epoch 1 done")
    out.bar("step 3")
    out.close()
    assert terminal.getvalue() == ("\r\x1b[Kstep 1\r\x1b[Kstep 2\r\x1b[Kepoch 1 done\n\r\x1b[Kstep 3\n")
    quiet = io.StringIO()
    console.Console(quiet, enabled=False).line("not process 0")
    assert quiet.getvalue() == ""


def test_epoch_summary_line():
    line = console.epoch_summary(24, 200, {"loss": 2.02121, "train_accuracy": 85.9195}, 486.96,
                                 {"top1_error": 56.33, "many_shot_accuracy": 60.914, "medium_shot_accuracy": 3.433,
                                  "few_shot_accuracy": None})
    assert line == ("epoch 25/200: loss 2.0212, train accuracy 85.92 %, 487 images/s; test top-1 error 56.33 % "
                    "(accuracy many 60.91 / medium 3.43 / few n/a %)")
    assert console.epoch_summary(0, 2, {"loss": 1.0, "train_accuracy": 50.0}, 10.0, None).endswith("10 images/s")


REPO = pathlib.Path(__file__).resolve().parents[1]
ONEDNN_NOTICE = ("I0000 00:00:1796357859.380562   22723 port.cc:153] oneDNN custom operations are on. You may see "
                 "slightly different numerical results due to floating-point round-off errors.\n")


def _stderr_of(code: str, *path: pathlib.Path) -> str:
    pythonpath = ":".join(str(p) for p in (*path, REPO))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": pythonpath}).stderr


def test_startup_notices_are_dropped_and_every_other_line_kept():
    text = ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n" + ONEDNN_NOTICE
            + "W0000 some_op.cc:12] a real warning\nTraceback (most recent call last):\n")
    kept = "W0000 some_op.cc:12] a real warning\nTraceback (most recent call last):\n"
    assert console.without_startup_notices(text) == kept


def test_quiet_import_filters_the_file_descriptor_and_passes_other_lines(tmp_path):
    # A stand-in TensorFlow that writes as the real one does: to file descriptor 2, past Python's sys.stderr.
    (tmp_path / "tensorflow.py").write_text(
        f"import os\nos.write(2, {ONEDNN_NOTICE.encode()!r})\nos.write(2, b'E0000 real.cc:1] kept\\n')\n")
    code = ("from safa_jax.console import import_tensorflow_quietly as q; import sys;"
            " q(); print('after', file=sys.stderr)")
    assert _stderr_of("import tensorflow", tmp_path).startswith("I0000")  # the stand-in does print the notice
    assert _stderr_of(code, tmp_path) == "E0000 real.cc:1] kept\nafter\n"


def test_quiet_import_silences_the_real_tensorflow():
    loud = _stderr_of("import tensorflow")
    if "oneDNN" not in loud:
        import pytest  # noqa: PLC0415
        pytest.skip("this TensorFlow build prints no oneDNN notice on this CPU")
    quiet = _stderr_of("from safa_jax.console import import_tensorflow_quietly as q; q(); import tensorflow as tf; "
                       "tf.data.Dataset.range(3).reduce(tf.constant(0, tf.int64), lambda a, b: a + b)")
    assert "oneDNN" not in quiet and "absl::InitializeLog" not in quiet, quiet


def test_curves_figure_from_epochs_csv(tmp_path):
    for epoch in range(4):
        test = {"top1_error": 50.0 - epoch, "many_shot_accuracy": 60.0, "medium_shot_accuracy": 30.0,
                "few_shot_accuracy": None} if epoch % 2 else None
        epoch_log.append_epoch(tmp_path, epoch_log.epoch_row(
            epoch=epoch, step=epoch + 1, train_seconds=1.0, images=10, test=test, eval_seconds=0.5,
            train_means={"loss": 2.0 / (epoch + 1), "classification_loss": 1.5 / (epoch + 1),
                         "learning_rate": 0.1 * 0.5 ** epoch}))
    path = curves.plot_training_curves(tmp_path)
    assert path == tmp_path / "curves.png"
    image = np.asarray(Image.open(path))
    assert image.shape[0] > 400 and image.shape[1] > 600 and image.std() > 10  # a drawn figure, not blank
