"""Two processes with 2 CPU devices each train exactly like one process with 4 devices."""

import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np

from configs import digits_lt
from safa_jax import sharding
from safa_jax.checkpointing import Checkpoints, abstract_like
from safa_jax.experiment import build_experiment

REPO = pathlib.Path(__file__).resolve().parents[1]
OVERRIDES = {
    "model.width": 4, "model.blocks_per_stage": 1, "data.image_size": 8, "batch_size": 16, "eval_batch_size": 50,
    "num_train_steps": 3, "log_every_steps": 1, "checkpoint_every_steps": 3, "eval_every_epochs": 0,
    "method": "safa", "safa.start_epoch": 0,
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _command(workdir: pathlib.Path, extra=()):
    flags = [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
    return [sys.executable, "-m", "safa_jax.main", f"--workdir={workdir}", *flags, *extra]


def _env(devices: int) -> dict:
    """Without the tests' compilation cache: with it warm, the two workers reached their first collective
    far apart on a loaded 2-core machine and Gloo's 30 s rendezvous timed out (seen twice; cold, it passed)."""
    environ = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    return dict(environ, PYTHONPATH=str(REPO), JAX_NUM_CPU_DEVICES=str(devices), JAX_PLATFORMS="cpu")


def test_two_processes_match_one_process(tmp_path):
    single = subprocess.run(_command(tmp_path / "single"), cwd=REPO, env=_env(4), capture_output=True, text=True,
                            timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]

    port = _free_port()
    workers = [
        subprocess.Popen(_command(tmp_path / "multi", ["--distributed", f"--coordinator_address=127.0.0.1:{port}",
                                                       "--num_processes=2", f"--process_id={i}"]),
                         cwd=REPO, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)]
    outputs = [w.communicate(timeout=600) for w in workers]
    for worker, (_, err) in zip(workers, outputs):
        assert worker.returncode == 0, err[-3000:]
    assert "4 device(s)" in outputs[0][1] and "4 device(s)" in outputs[1][1]

    config = digits_lt.get_config()
    for dotted, value in OVERRIDES.items():
        section, _, field = dotted.rpartition(".")
        (config[section] if section else config)[field] = value
    mesh = sharding.make_mesh(jax.devices()[:1])
    _, state = build_experiment(config, mesh=mesh)
    abstract = abstract_like(state, sharding.replicated(mesh))
    one = Checkpoints(tmp_path / "single").restore(3, abstract)
    two = Checkpoints(tmp_path / "multi").restore(3, abstract)
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(two)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    assert (tmp_path / "multi" / "eval_results.json").exists()
