"""How the models compute (safa_jax/models/layer_ops.py): given at construction, and the CPU fast path apart.

The core never imports `safa_jax.cpu` for a run that cannot use it, a machine without a C++ compiler trains
with XLA's convolutions, and no module of the package imports a private Flax name.
"""

import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from helpers import tiny_config, tiny_data
from safa_jax import sharding
from safa_jax.experiment import build_experiment
from safa_jax.models import build_model
from safa_jax.models.batch_norm import BatchNorm
from safa_jax.models.layer_ops import XLA_LAYERS, LayerOps, layer_ops, unchanged

REPO = pathlib.Path(__file__).resolve().parents[1]
ONE_DEVICE = sharding.make_mesh(jax.devices()[:1])


def test_a_model_computes_with_the_layer_ops_it_was_built_with():
    """Every convolution and every block output of a ResNet go through the functions of its LayerOps."""
    calls = {"conv": 0, "block": 0}

    def counted_conv(*args, **kwargs):
        calls["conv"] += 1
        return lax.conv_general_dilated(*args, **kwargs)

    def counted_block(x):
        calls["block"] += 1
        return x

    ops = LayerOps(conv_general_dilated=counted_conv, keep_block_outputs=counted_block, batch_norm_form="flax")
    arguments = dict(num_classes=3, in_channels=3, width=4, blocks_per_stage=2, head="linear")
    counted = build_model("resnet32", ops=ops, rngs=nnx.Rngs(0), **arguments)
    default = build_model("resnet32", rngs=nnx.Rngs(0), **arguments)
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    np.testing.assert_allclose(counted(x, train=False), default(x, train=False), rtol=1e-5, atol=1e-6)
    assert calls == {"conv": 1 + 3 * 2 * 2, "block": 1 + 3 * 2}  # the stem, 2 convs in each of 6 blocks
    assert {node.form for _, node in nnx.iter_graph(counted) if isinstance(node, BatchNorm)} == {"flax"}
    assert default.keep_block_outputs is unchanged and XLA_LAYERS.batch_norm_form == "folded"


@pytest.mark.parametrize("method", ["safa", "rsg"])
def test_every_conv_of_a_run_takes_the_runs_convolution(method):
    config = tiny_config(model__conv_backend="xla", method=method, rsg__stage=1, rsg__start_epoch=1)
    experiment, state = build_experiment(config, data=tiny_data(), mesh=ONE_DEVICE)
    merged = [experiment.backbone.merge(state.params["backbone"], state.batch_stats["backbone"]),
              experiment.method.bridge.merge(state.params[method], state.batch_stats[method])]
    convs = [[node.conv_general_dilated for _, node in nnx.iter_graph(module) if isinstance(node, nnx.Conv)]
             for module in merged]
    assert [len(found) > 0 for found in convs] == [True, True]
    assert {conv for found in convs for conv in found} == {layer_ops("xla").conv_general_dilated}


def test_layer_ops_needs_a_resolved_backend():
    with pytest.raises(ValueError, match=r"layer_ops needs a resolved backend, 'xla' or 'onednn'; got 'auto'"):
        layer_ops("auto")


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **env}
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=full_env, capture_output=True, text=True,
                          timeout=600)


def test_the_core_does_not_import_the_cpu_fast_path():
    """Every module but the entry points, imported, and a run built on XLA's convolutions: no `safa_jax.cpu`."""
    probe = (
        "import importlib, pathlib, sys\n"
        "ENTRY_POINTS = {'safa_jax.main', 'safa_jax.convert_torchvision'}\n"
        "paths = sorted(pathlib.Path('safa_jax').rglob('*.py'))\n"
        "names = ['.'.join(p.with_suffix('').parts).removesuffix('.__init__') for p in paths]\n"
        "names = [n for n in names if not n.startswith('safa_jax.cpu') and n not in ENTRY_POINTS]\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "sys.path.insert(0, 'tests')\n"
        "from helpers import tiny_config, tiny_data\n"
        "from safa_jax.experiment import build_experiment\n"
        "build_experiment(tiny_config(model__conv_backend='xla', method='safa'), data=tiny_data())\n"
        "print(len(names), sorted(m for m in sys.modules if m.startswith('safa_jax.cpu')))\n")
    result = _python(probe)
    assert result.returncode == 0, result.stderr[-3000:]
    count, loaded = result.stdout.strip().splitlines()[-1].split(" ", 1)
    assert int(count) > 40 and loaded == "[]"


def test_without_a_compiler_auto_trains_with_xla_convolutions(tmp_path):
    """No C++ compiler and an empty build cache: "auto" says why and trains on XLA's convolutions."""
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "CXX"}
    env.update(PATH=str(empty_bin), SAFA_JAX_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "safa_jax.main", "--config=configs/digits_lt.py", f"--workdir={tmp_path / 'run'}",
               "--config.model.width=4", "--config.model.blocks_per_stage=1", "--config.data.image_size=8",
               "--config.data.crop_padding=2", "--config.batch_size=8", "--config.num_train_steps=2",
               "--config.eval_every_epochs=0"]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "10 classes, 2 steps, XLA convolutions" in result.stderr
    assert (tmp_path / "run" / "eval_results.json").exists()


def test_no_module_imports_a_private_flax_name():
    private = re.compile(r"^\s*from flax[\w.]* import .*\b_\w+|flax(?:\.\w+)*\._\w+", re.M)
    offenders = [str(path.relative_to(REPO)) for folder in ("safa_jax", "bench", "configs")
                 for path in (REPO / folder).rglob("*.py") if private.search(path.read_text())]
    assert offenders == []
    assert private.search("from flax.nnx.nn.normalization import _compute_stats")  # what it catches


def test_batch_statistics_are_flaxs_to_the_bit():
    """Our statistics (folded form) against nnx.BatchNorm's own, running averages compared exactly."""
    x = jax.random.normal(jax.random.key(0), (6, 4, 4, 3)) * 3.0 + jnp.asarray([0.0, 2.0, -5.0])
    mask = jnp.asarray([True, False, True, True, False, True]).reshape(6, 1, 1, 1)
    ours = BatchNorm(3, momentum=0.9, epsilon=1e-5, form="folded", rngs=nnx.Rngs(0))
    flax_own = nnx.BatchNorm(3, momentum=0.9, epsilon=1e-5, rngs=nnx.Rngs(0))
    for layer in (ours, flax_own):
        nnx.jit(lambda layer, x: layer(x, use_running_average=False, mask=mask))(layer, x)
    np.testing.assert_array_equal(ours.mean[...], flax_own.mean[...])
    np.testing.assert_array_equal(ours.var[...], flax_own.var[...])
