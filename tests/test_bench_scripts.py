"""The benchmark side: PyTorch's ResNet-32 against ours, the metric writer without clu/TensorFlow, and the
one-lease GPU scripts (staging here, then the whole device script on the CPU with a tiny model)."""

import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys
import tarfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from PIL import Image

from safa_jax import metrics
from safa_jax.data.longtail import longtail_class_counts, select_longtail
from safa_jax.models.resnet_cifar import ResNetCifar
from safa_jax.state import NnxBridge, count_params

REPO = pathlib.Path(__file__).resolve().parents[1]
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
FAKE_TRAIN_PER_CLASS, FAKE_TEST_PER_CLASS, FAKE_RHO = 20, 3, 4
# int(20 * (1/4) ** (i / 9)), worked out by hand: 20, 17.1, 14.7, 12.6, 10.8, 9.3, 7.9, 6.8, 5.8, 5.
FAKE_LT_COUNTS = [20, 17, 14, 12, 10, 9, 7, 6, 5, 5]
# What the lent GPU machine lacks: None in sys.modules makes `import` fail and importlib.util.find_spec
# return None, exactly as for a package that is not installed.
BLOCK_TENSORFLOW = """import sys
for name in ("tensorflow", "tensorflow_datasets", "clu", "tensorboard"):
    sys.modules[name] = None
"""
TINY_TRAIN_FLAGS = (
    "--config.model.width=4 --config.model.blocks_per_stage=1 --config.data.image_size=8 "
    "--config.data.crop_padding=2 --config.batch_size=8 --config.eval_batch_size=7 --config.num_train_steps=3 "
    "--config.log_every_steps=1 --config.eval_every_epochs=0")


# --- the PyTorch reference model -------------------------------------------------------------------------

def _flax_slot(tree, torch_name: str) -> tuple[dict, str]:
    """(dict, key) of the Flax array for a torch parameter: the same module path; a weight is the kernel of a
    conv or linear layer and the scale of a BatchNorm."""
    *path, leaf = torch_name.split(".")
    for part in path:
        tree = tree[int(part) if part.isdigit() else part]
    return tree, "bias" if leaf == "bias" else "kernel" if "kernel" in tree else "scale"


def _to_flax_layout(array: np.ndarray) -> np.ndarray:
    """torch OIHW conv weights -> HWIO, (out, in) linear weights -> (in, out); vectors as they are."""
    axes = {4: (2, 3, 1, 0), 2: (1, 0)}.get(array.ndim)
    return array if axes is None else array.transpose(axes)


def test_torch_resnet32_has_the_flax_models_parameter_count():
    torch_resnet = pytest.importorskip("bench.torch_resnet32", reason="torch is a benchmark-only dependency")
    flax_params = nnx.state(nnx.eval_shape(lambda: ResNetCifar(10, rngs=nnx.Rngs(0))), nnx.Param)
    torch_count = sum(p.numel() for p in torch_resnet.ResNetCifar(10).parameters())
    assert torch_count == count_params(flax_params) == 464_154  # REFERENCE.md: "about 0.46 M parameters"


def test_torch_resnet_computes_the_flax_models_logits_and_gradients():
    """Torch's weights copied into our Flax model: the same logits, loss and gradients on a batch in train mode."""
    torch = pytest.importorskip("torch", reason="torch is a benchmark-only dependency")
    from bench.torch_resnet32 import ResNetCifar as TorchResNet

    torch.manual_seed(0)
    model = TorchResNet(5, width=4, blocks_per_stage=2).train()
    bridge, param_shapes, stat_shapes = NnxBridge.split(
        nnx.eval_shape(lambda: ResNetCifar(5, width=4, blocks_per_stage=2, rngs=nnx.Rngs(0))))
    assert len(jax.tree.leaves(param_shapes)) == len(list(model.parameters()))
    params = jax.tree.map(lambda shape: None, param_shapes)
    for name, parameter in model.named_parameters():
        slot, key = _flax_slot(params, name)
        slot[key] = _to_flax_layout(parameter.detach().numpy())
    stats = jax.tree.map(lambda shape: jnp.zeros(shape.shape, shape.dtype), stat_shapes)  # unused in train mode
    rng = np.random.default_rng(0)
    images = rng.normal(size=(6, 8, 8, 3)).astype(np.float32)
    labels = np.array([0, 1, 2, 3, 4, 0])

    def loss_fn(params):
        logits = bridge.merge(params, stats)(jnp.asarray(images), train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), logits

    (loss, logits), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
    torch_logits = model(torch.from_numpy(images.transpose(0, 3, 1, 2)))
    torch_loss = torch.nn.functional.cross_entropy(torch_logits, torch.from_numpy(labels))
    torch_loss.backward()

    np.testing.assert_allclose(torch_logits.detach().numpy(), logits, rtol=1e-4, atol=1e-5)
    assert torch_loss.item() == pytest.approx(float(loss), rel=1e-5)
    for name, parameter in model.named_parameters():
        slot, key = _flax_slot(grads, name)
        np.testing.assert_allclose(_to_flax_layout(parameter.grad.numpy()), slot[key], rtol=1e-3, atol=1e-5,
                                   err_msg=name)


def test_onednn_primitive_times_sums_both_verbose_formats_after_the_marker():
    from bench.onednn_primitive_times import START, primitive_ms

    log = "\n".join([
        "onednn_verbose,exec,cpu,convolution,brgconv:avx512_core,forward_training,src,,alg,mb2,9.0",  # warm-up
        START,
        "onednn_verbose,exec,cpu,convolution,brgconv:avx512_core,forward_training,src,,alg,mb2,1.5",  # oneDNN 3.2
        "onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd,forward_training,src,,alg,mb2,2.5",
        "onednn_verbose,v1,primitive,exec,cpu,reorder,jit:uni,undef,src,,,16x16x3x3,0.25",
        "onednn_verbose,v1,primitive,create:cache_miss,cpu,convolution,brg,forward_training,src,,alg,mb2,7.0",
        # JAX: one call of a 2-image batch in two 1-image pieces, run at once on two threads
        "onednn_verbose,exec,cpu,convolution,jit:avx512_core,backward_weights,src,,alg,mb1_ic3oc16,3.0",
        "onednn_verbose,exec,cpu,convolution,jit:avx512_core,backward_weights,src,,alg,mb1_ic3oc16,1.0",
        "wall ms per step: 10.0",
    ])
    # Two steps: (1.5 + 2.5) / 2 ms and 2 calls / 2 per step; the warm-up line and the creation line do not count;
    # each piece counts half its time and half a call: (3.0 + 1.0) / 2 / 2 steps ms, 1 call / 2 steps.
    assert primitive_ms(log, steps=2, batch=2) == {"convolution backward_weights": (1.0, 0.5),
                                                   "convolution forward_training": (2.0, 1.0),
                                                   "reorder undef": (0.125, 0.5)}


def test_rounds_call_every_variant_once_each_and_ratios_pair_rounds():
    from bench.common import paired_ratio, timed_in_rounds

    calls = []
    figures = iter([10.0, 5.0, 30.0, 20.0, 12.0, 4.0])
    variants = {name: (lambda name=name: calls.append(name) or next(figures)) for name in ("a", "b")}
    rates = timed_in_rounds(variants, rounds=3)
    assert calls == ["a", "b"] * 3
    assert rates == {"a": [10.0, 30.0, 12.0], "b": [5.0, 20.0, 4.0]}
    # Round ratios 2.0, 1.5, 3.0: their median, not the ratio of the medians (12 / 5 = 2.4).
    assert paired_ratio(rates["a"], rates["b"]) == 2.0


def test_xla_op_times_groups_numbered_operations_and_skips_runtime_events():
    from bench.xla_op_times import ms_per_kind

    events = [("ffi_call.93", 3_000_000), ("ffi_call", 1_000_000), ("add_maximum_fusion.17", 2_000_000),
              ("add_maximum_fusion.2", 500_000), ("ThunkExecutor::Execute", 9_000_000),
              ("end: ffi_call", 100_000), ("$api.py:2479 block_until_ready", 9_000_000)]
    # Two steps: ffi_call (3 + 1) / 2 ms in 2 / 2 calls; add_maximum_fusion (2 + 0.5) / 2 ms; runtime events dropped.
    assert ms_per_kind(events, steps=2) == [("ffi_call", 2.0, 1.0), ("add_maximum_fusion", 1.25, 1.0)]


# --- metrics without clu / TensorFlow --------------------------------------------------------------------

def test_json_lines_writer_records_scalars_and_hparams(tmp_path):
    writer = metrics.JsonLinesWriter(tmp_path)
    writer.write_scalars(5, {"loss": np.float32(0.25), "epoch": 1})
    writer.write_scalars(10, {"loss": jnp.asarray(0.125)})
    writer.write_hparams({"seed": 0, "decay_epochs": [160, 180]})
    writer.flush()
    lines = [json.loads(line) for line in (tmp_path / metrics.METRICS_FILE).read_text().splitlines()]
    assert lines == [{"step": 5, "loss": 0.25, "epoch": 1.0}, {"step": 10, "loss": 0.125}]
    assert json.loads((tmp_path / metrics.HPARAMS_FILE).read_text()) == {"seed": 0, "decay_epochs": [160, 180]}


def test_json_lines_writer_of_other_processes_only_logs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    writer = metrics.JsonLinesWriter(None)
    writer.write_scalars(1, {"loss": 1.0})
    writer.write_hparams({"seed": 0})
    assert list(tmp_path.iterdir()) == []


def test_writer_falls_back_where_clu_cannot_be_imported(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "clu.metric_writers", None)
    writer = metrics.create_writer(tmp_path, is_main_process=True)
    assert isinstance(writer, metrics.JsonLinesWriter) and writer.directory == tmp_path
    assert metrics.create_writer(tmp_path, is_main_process=False).directory is None


# --- the GPU payload and the device script ---------------------------------------------------------------

@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    """bench/gpu_prepare.sh run on a fake CIFAR-10 folder (20 train and 3 test JPEGs a class) with RHO=4.

    A placeholder wheel is staged first so that the script, which skips a wheel already there, stays offline.
    """
    root = tmp_path_factory.mktemp("gpu")
    rng = np.random.default_rng(0)
    for split, per_class in (("train", FAKE_TRAIN_PER_CLASS), ("test", FAKE_TEST_PER_CLASS)):
        for label, name in enumerate(CLASSES):
            folder = root / "cifar10" / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = (rng.integers(0, 128, (8, 8, 3)) + 12 * label).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:04d}.jpg", quality=75)
    payload = root / "payload"
    (payload / "wheels").mkdir(parents=True)
    (payload / "wheels" / "ml_collections-1.1.0-py3-none-any.whl").touch()
    env = dict(os.environ, CIFAR10_SOURCE=str(root / "cifar10"), PAYLOAD=str(payload), RHO=str(FAKE_RHO),
               PYTHON=sys.executable)
    result = subprocess.run(["bash", "bench/gpu_prepare.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return root, payload, result.stdout


def test_gpu_prepare_stages_the_ldam_selection_with_original_file_names(staged, tmp_path):
    root, payload, stdout = staged
    with tarfile.open(payload / f"cifar10_lt{FAKE_RHO}.tar.gz") as archive:
        archive.extractall(tmp_path, filter="data")
    tree = tmp_path / f"cifar10_lt{FAKE_RHO}"
    labels = np.repeat(np.arange(len(CLASSES)), FAKE_TRAIN_PER_CLASS)
    expected_ids = np.sort(select_longtail(labels, np.array(FAKE_LT_COUNTS), "ldam", 0))
    expected_files = {f"{CLASSES[i // FAKE_TRAIN_PER_CLASS]}/{i % FAKE_TRAIN_PER_CLASS:04d}.jpg" for i in expected_ids}
    staged_files = {p.relative_to(tree / "train").as_posix() for p in (tree / "train").rglob("*.jpg")}
    assert staged_files == expected_files
    for name in sorted(expected_files)[::25]:
        assert (tree / "train" / name).read_bytes() == (root / "cifar10/train" / name).read_bytes()
    assert len(list((tree / "test").rglob("*.jpg"))) == len(CLASSES) * FAKE_TEST_PER_CLASS
    manifest = json.loads((tree / "manifest.json").read_text())
    assert manifest["class_counts"] == FAKE_LT_COUNTS == longtail_class_counts(20, 10, FAKE_RHO).tolist()
    assert manifest["source_train_ids"] == expected_ids.tolist() and manifest["n_max"] == FAKE_TRAIN_PER_CLASS
    assert "a device call carries at most 67108864 B" in stdout


def test_gpu_check_runs_on_the_cpu_without_tensorflow_or_clu(staged, tmp_path):
    """The whole device script with a tiny model, EPOCHS=1 and one training, as the GPU machine has it: no
    TensorFlow, tfds, clu or TensorBoard. Without torch (a benchmark-only dependency) the train-step part
    fails and the script must carry on to the training."""
    has_torch = importlib.util.find_spec("torch") is not None
    _, payload, _ = staged
    (tmp_path / "block").mkdir()
    (tmp_path / "block" / "sitecustomize.py").write_text(BLOCK_TENSORFLOW)
    out, runs = tmp_path / "out", tmp_path / "runs"
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "block"), PYTHON=sys.executable, PAYLOAD=str(payload),
               OUT=str(out), RUNS=str(runs), RHO=str(FAKE_RHO), EPOCHS="1", TRAININGS="ldam_drw",
               TRAIN_STEP_REPEATS="1", TRAIN_STEP_STEPS="1", TRAIN_STEP_WARMUP="1",
               TRAIN_STEP_ARGS="--batch_size 8 --width 4 --blocks_per_stage 1", TRAIN_FLAGS=TINY_TRAIN_FLAGS)
    result = subprocess.run(["bash", "bench/gpu_check.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)
    log = result.stdout
    assert result.returncode == 0, log[-3000:]
    assert log == (out / "gpu_check.log").read_text()
    assert "NOTE: EPOCHS=1 is NOT the paper's 200-epoch protocol" in log

    if has_torch:
        rates = {name: float(rate) for name, rate in re.findall(r"^(jax|torch \w+) images/s: ([0-9.]+)", log, re.M)}
        ratio = re.search(r"^jax/torch images/s ratio: (\d+\.\d{3})$", log, re.M)
        assert set(rates) == {"jax", "torch NCHW", "torch channels_last"} and ratio
        torch_rate = max(rates["torch NCHW"], rates["torch channels_last"])
        expected = rates["jax"] / torch_rate
        printed_rounding = expected * (0.05 / rates["jax"] + 0.05 / torch_rate) + 0.0005  # rates print to 0.1
        assert float(ratio.group(1)) == pytest.approx(expected, abs=printed_rounding)
    else:
        assert "train_step.py exit code 1" in log

    training_log = (out / "ldam_drw.log").read_text()
    assert "clu.metric_writers cannot be imported" in training_log  # the run really had no clu
    results = json.loads((out / "ldam_drw.eval_results.json").read_text())
    assert results["step"] == 3 and results["train_class_counts"] == FAKE_LT_COUNTS
    assert results["num_examples"] == len(CLASSES) * FAKE_TEST_PER_CLASS
    logged = [json.loads(line) for line in (out / "ldam_drw.metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in logged if "loss" in line] == [1, 2, 3]
    assert f"class counts {FAKE_LT_COUNTS} match the rho={FAKE_RHO} profile" in log
    assert not list(runs.rglob("events.out.tfevents*"))
