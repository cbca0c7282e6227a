"""Evaluation images/s of ResNet-32 in JAX (the project's eval function) against PyTorch, in one run.

The JAX side is `safa_jax.evaluate.make_predict_fn`, the function `--mode=eval` runs: uint8 images in,
normalisation and the eval-mode forward pass (running BN statistics) inside jit. The PyTorch side is the
reference model in eval mode under `torch.no_grad()`, fed ready float batches in NCHW and in
channels_last, each in a process of its own (bench/common.py, in_own_process). Each figure is the median
of --repeats timings of --batches batches after a warm-up. JAX convolutions follow --conv_backend.

Run from the repository root:  .venv/bin/python bench/eval_throughput.py [--batch_size 256]
"""

import argparse
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from safa_jax.cpu.process_settings import apply_cpu_process_settings  # noqa: E402

apply_cpu_process_settings()  # before JAX starts
import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from flax import nnx  # noqa: E402

from bench.common import in_own_process, machine_description, report, timed_rates  # noqa: E402
from bench.torch_resnet32 import ResNetCifar as TorchResNetCifar  # noqa: E402
from bench.train_throughput import conv_backend_in_use  # noqa: E402
from safa_jax.evaluate import make_predict_fn  # noqa: E402
from safa_jax.models import build_model  # noqa: E402
from safa_jax.models.layer_ops import CONV_BACKENDS, layer_ops  # noqa: E402
from safa_jax.state import NnxBridge  # noqa: E402

NUM_CLASSES = 10
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


def jax_rates(args: argparse.Namespace) -> list[float]:
    model = build_model("resnet32", num_classes=NUM_CLASSES, in_channels=3, width=16, blocks_per_stage=5,
                        head="linear", ops=layer_ops(conv_backend_in_use(args.conv_backend)), rngs=nnx.Rngs(0))
    backbone, params, stats = NnxBridge.split(model)
    predict = make_predict_fn(backbone, CIFAR_MEAN, CIFAR_STD)
    images = jax.device_put(np.random.default_rng(0).integers(0, 256, (args.batch_size, 32, 32, 3), np.uint8))

    def run_batches(count: int) -> None:
        for _ in range(count):
            logits = predict(params, stats, images)
        jax.block_until_ready(logits)

    return timed_rates(run_batches, warmup=1, repeats=args.repeats, count=args.batches,
                       batch_size=args.batch_size)


def torch_rates(layout: str, args: argparse.Namespace) -> list[float]:
    """Eval images/s of each repeat of the PyTorch model in `layout` ("NCHW" or "channels_last")."""
    torch.set_num_threads(os.cpu_count())
    memory_format = {"NCHW": torch.contiguous_format, "channels_last": torch.channels_last}[layout]
    torch.manual_seed(0)
    model = TorchResNetCifar(NUM_CLASSES, width=16, blocks_per_stage=5).to(memory_format=memory_format).eval()
    images = torch.randn(args.batch_size, 3, 32, 32).contiguous(memory_format=memory_format)

    def run_batches(count: int) -> None:
        with torch.no_grad():
            for _ in range(count):
                model(images)

    return timed_rates(run_batches, warmup=1, repeats=args.repeats, count=args.batches,
                       batch_size=args.batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, default=10, help="timed batches per repeat")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--conv_backend", default="auto", choices=CONV_BACKENDS, help="config.model.conv_backend")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count())
    print("machine:", machine_description())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ResNet-32 eval forward, "
          f"batch {args.batch_size}, 32x32x3; median of {args.repeats} repeats x {args.batches} batches", flush=True)
    print(f"jax convolutions: {conv_backend_in_use(args.conv_backend)} "
          f"(config.model.conv_backend={args.conv_backend!r})")
    jax_rate = report("jax eval images/s", jax_rates(args))
    torch_rate = max(report("torch NCHW eval images/s", in_own_process(torch_rates, "NCHW", args)),
                     report("torch channels_last eval images/s", in_own_process(torch_rates, "channels_last", args)))
    print(f"jax/torch eval images/s ratio (against the faster layout): {jax_rate / torch_rate:.3f}")


if __name__ == "__main__":
    main()
