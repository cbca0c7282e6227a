"""Command line: `python -m safa_jax.main --config=configs/cifar10_lt.py:200 --workdir=runs/x [--mode=eval]`.

Flags and dispatch only; the work is in train.py and evaluate.py. Without --config the embedded default
(configs/digits_lt.py: scikit-learn's bundled digits, no download) runs.
"""

import os
import pathlib
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from safa_jax.cpu.process_settings import apply_cpu_process_settings

DEFAULT_CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "digits_lt.py"

# Fields that were replaced, and what to write instead.
REPLACED_FIELDS = {"safa.enabled": "write --config.method=safa (or --config.method=plain) instead"}


def _config_error(error: Exception, argv: list[str]) -> str:
    """One line for a config that cannot be loaded: a missing or broken file, or an unknown field."""
    config_files = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    overrides = [a.split("=", 1)[0][len("--config."):] for a in argv if a.startswith("--config.")]
    if isinstance(error, (KeyError, AttributeError)):
        missing = str(error).strip("'\"")
        named = [o for o in overrides if missing in o.split(".")] or [missing]
        if named[0] in REPLACED_FIELDS:
            return f"--config.{named[0]} is gone: {REPLACED_FIELDS[named[0]]}"
        return (f"unknown config field --config.{named[0]}; the fields and their meaning are in configs/common.py "
                "(and the config file's own additions)")
    if isinstance(error, OSError) and config_files:
        path = config_files[-1].split(":", 1)[0]
        if not pathlib.Path(path).is_file():
            return f"the config file {path} does not exist (run from the repository root, or give its path)"
        return f"cannot load the config file {config_files[-1]}: {str(error).splitlines()[0]}"
    return f"bad config: {error}"


try:
    # Defining the flag reads the command line's --config.FIELD overrides: an unknown field fails here.
    _CONFIG = config_flags.DEFINE_config_file(
        "config", str(DEFAULT_CONFIG), "Config file, optionally with an argument: configs/cifar10_lt.py:200.",
        lock_config=True)
except (KeyError, AttributeError) as _error:
    sys.exit(f"safa_jax: error: {_config_error(_error, sys.argv)}")
_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "Run folder: checkpoints, logs, results.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"], "Train (resuming if possible) or evaluate.")
_STEP = flags.DEFINE_integer("checkpoint_step", None, "Eval mode: checkpoint step to evaluate (default latest).")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", os.environ.get("SAFA_JAX_DISTRIBUTED", "") == "1",
    "Several processes (TPU pod workers, multi-host GPUs): call jax.distributed.initialize() first. "
    "Default from SAFA_JAX_DISTRIBUTED=1. On Cloud TPU the coordinator is found automatically.")
_LOG_LEVEL = flags.DEFINE_enum(
    "log_level", "warning", ["debug", "info", "warning", "error"],
    "Level of the libraries' and our own log lines (absl, Orbax, JAX). Progress and epoch lines always print.")
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


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, plus loading the config (file and overrides) now, before JAX starts, so that a bad
    flag, config file or field is one line and never a traceback."""
    try:
        rest = flags.FLAGS(argv)
        _CONFIG.value.to_dict()  # the config file is loaded lazily, on the first attribute access
    except flags.Error as error:
        sys.exit(f"safa_jax: error: {error}")
    except (OSError, KeyError, AttributeError, TypeError, ValueError, SyntaxError, ImportError) as error:
        sys.exit(f"safa_jax: error: {_config_error(error, argv)}")
    return rest


def check_workdir(workdir: str, mode: str) -> None:
    """A run folder that cannot work is refused before anything is built: a file, an unwritable folder, or, for
    evaluation, a folder that does not exist (evaluation never creates one). Object-store paths are not checked."""
    if "://" in workdir:
        return
    path = pathlib.Path(workdir)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--workdir={workdir} is a file, not a folder")
    if mode == "eval":
        if not path.is_dir():
            raise FileNotFoundError(f"--workdir={workdir} does not exist: there is no run to evaluate")
        return
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--workdir={workdir} cannot be written ({existing} is not a writable folder)")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(_LOG_LEVEL.value)
    try:
        check_workdir(_WORKDIR.value, _MODE.value)
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"safa_jax: error: {error}")
    if _DISTRIBUTED.value:
        initialize_distributed()
    import jax  # noqa: PLC0415  (after safa_jax set the XLA flags)
    print(f"safa_jax: JAX {jax.__version__} on {jax.device_count()} device(s): {jax.devices()[0].device_kind}"
          + (f" (process {jax.process_index()} of {jax.process_count()})" if jax.process_count() > 1 else ""),
          file=sys.stderr, flush=True)
    if _LOG_LEVEL.value not in ("debug", "info"):
        from safa_jax.console import import_tensorflow_quietly  # noqa: PLC0415
        import_tensorflow_quietly()
    from safa_jax.train import TrainingStopped  # noqa: PLC0415
    try:
        if _MODE.value == "train":
            from safa_jax.train import train_and_evaluate
            summary = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
        else:
            from safa_jax.evaluate import evaluate_checkpoint
            summary = evaluate_checkpoint(_CONFIG.value, _WORKDIR.value, step=_STEP.value)
    except (ValueError, FileNotFoundError, TrainingStopped) as error:
        # Bad input (config, data, checkpoint), a NaN loss or a stop signal: one clear line, not a traceback.
        logging.error("%s", error)
        sys.exit(f"safa_jax: {'stopped' if isinstance(error, TrainingStopped) else 'error'}: {error}")
    if jax.process_index() == 0:
        print(f"top-1 error {summary['top1_error']:.2f}% (accuracy {summary['top1_accuracy']:.2f}%) "
              f"at step {summary['step']}; results in {_WORKDIR.value}")


if __name__ == "__main__":
    apply_cpu_process_settings()  # before JAX starts; importing this module sets nothing
    app.run(main, flags_parser=parse_flags)
