"""Command line: `python -m safa_jax.main --config=configs/cifar10_lt.py:200 --workdir=runs/x [--mode=eval]`.

Flags and dispatch only; the work is in train.py and evaluate.py. Without --config the embedded default
(configs/digits_lt.py: scikit-learn's bundled digits, no download) runs.
"""

import pathlib
import sys

from absl import app, flags, logging
from ml_collections import config_flags

import safa_jax  # noqa: F401  (sets the CPU XLA flag before JAX starts)

DEFAULT_CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "digits_lt.py"

_CONFIG = config_flags.DEFINE_config_file(
    "config", str(DEFAULT_CONFIG), "Config file, optionally with an argument: configs/cifar10_lt.py:200.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "Run folder: checkpoints, logs, results.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"], "Train (resuming if possible) or evaluate.")
_STEP = flags.DEFINE_integer("checkpoint_step", None, "Eval mode: checkpoint step to evaluate (default latest).")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import jax  # noqa: PLC0415  (after safa_jax set the XLA flags)
    logging.info("JAX %s on %d device(s): %s", jax.__version__, jax.device_count(), jax.devices()[0].device_kind)
    try:
        if _MODE.value == "train":
            from safa_jax.train import train_and_evaluate
            summary = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
        else:
            from safa_jax.evaluate import evaluate_checkpoint
            summary = evaluate_checkpoint(_CONFIG.value, _WORKDIR.value, step=_STEP.value)
    except (ValueError, FileNotFoundError) as error:
        # Bad input (config, data, checkpoint) is reported as one clear line, not a traceback.
        logging.error("%s", error)
        sys.exit(f"safa_jax: error: {error}")
    print(f"top-1 error {summary['top1_error']:.2f}% (accuracy {summary['top1_accuracy']:.2f}%) "
          f"at step {summary['step']}; results in {_WORKDIR.value}")


if __name__ == "__main__":
    app.run(main)
