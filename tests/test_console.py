"""The console: the progress line (rate, ETA, in place on a terminal), the epoch line, and the curves figure."""

import io

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
