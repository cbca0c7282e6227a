"""Command line: `python -m safa_jax.main --config=configs/cifar10_lt.py:200 --workdir=runs/x [--mode=eval]`.

Flags and dispatch only; the work is in train.py and evaluate.py. Without --config the embedded default
(configs/digits_lt.py: scikit-learn's bundled digits, no download) runs.
"""

import os
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
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", os.environ.get("SAFA_JAX_DISTRIBUTED", "") == "1",
    "Several processes (TPU pod workers, multi-host GPUs): call jax.distributed.initialize() first. "
    "Default from SAFA_JAX_DISTRIBUTED=1. On Cloud TPU the coordinator is found automatically.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (not needed on TPU).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (not needed on TPU).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (not needed on TPU).")


def initialize_distributed() -> None:
    """Joins the processes into one JAX runtime; every process then runs the same global program."""
    import jax  # noqa: PLC0415
    if _COORDINATOR.value:
        # Explicit coordinates mean a local or GPU cluster; CPU devices there need a cross-process collectives backend.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _DISTRIBUTED.value:
        initialize_distributed()
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
    if jax.process_index() == 0:
        print(f"top-1 error {summary['top1_error']:.2f}% (accuracy {summary['top1_accuracy']:.2f}%) "
              f"at step {summary['step']}; results in {_WORKDIR.value}")


if __name__ == "__main__":
    app.run(main)
