"""Train-step images/s without and with SAFA, in the same process: ResNet-32 on CIFAR shapes, or ResNet-50.

Prints, for each variant, the median images/s over repeats of timed steps (after compile and warm-up),
the step-time ratio with/without SAFA, and the FLOP ratio from XLA's cost analysis of the compiled steps.
Run from the repository root:  .venv/bin/python bench/train_throughput.py [--repeats 3 --steps 10]
ResNet-50 at 224 px (SAFA after stage 3, the large-scale placement):
  .venv/bin/python bench/train_throughput.py --model=resnet50 --image_size=224 --batch_size=16 --stage=3
"""

import argparse
import pathlib
import statistics
import sys
from collections.abc import Callable

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from safa_jax.cpu.process_settings import apply_cpu_process_settings  # noqa: E402

apply_cpu_process_settings()  # before JAX starts
import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from bench.common import machine_description, timed_rates  # noqa: E402
from configs import cifar10_lt  # noqa: E402
from safa_jax import sharding  # noqa: E402
from safa_jax.data.longtail import longtail_class_counts  # noqa: E402
from safa_jax.data.sources import LongTailedData  # noqa: E402
from safa_jax.experiment import build_experiment  # noqa: E402
from safa_jax.models.layer_ops import CONV_BACKENDS, resolve_conv_backend  # noqa: E402
from safa_jax.data.step_input import make_input  # noqa: E402
from safa_jax.train import make_train_step  # noqa: E402


def synthetic_cifar_lt(rho: float = 100.0, *, n_max: int = 5000, image_size: int = 32) -> LongTailedData:
    """Random uint8 images with CIFAR-10-LT's class counts (the step's cost does not depend on pixel values).

    A smaller `n_max` keeps large images in memory (the step draws its batches from the device).
    """
    counts = longtail_class_counts(n_max, 10, rho)
    labels = np.repeat(np.arange(10), counts).astype(np.int32)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (len(labels), image_size, image_size, 3), dtype=np.uint8)
    test_labels = np.repeat(np.arange(10), 10).astype(np.int32)
    return LongTailedData(images, labels, np.arange(len(labels)), images[:100], test_labels,
                          tuple(str(i) for i in range(10)), counts, counts,
                          (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))


def conv_backend_in_use(requested: str) -> str:
    """What `config.model.conv_backend=requested` runs on this machine's default mesh ("xla" or "onednn")."""
    model_config = ml_collections.ConfigDict({"conv_backend": requested, "compute_dtype": "float32", "batch_norm": "folded"})
    return resolve_conv_backend(model_config, sharding.make_mesh())


def compiled_step(config, data, with_augmented: bool):
    """(compiled step, initial state, its batch arguments) for one variant of the project's train step."""
    experiment, state = build_experiment(config, data=data, mesh=sharding.make_mesh())
    batch_input = make_input(experiment, start_step=0)
    step_fn = make_train_step(experiment, batch_input, variant=with_augmented)
    args = batch_input.batch_args(0)
    return step_fn.lower(state, args, jax.random.key(0)).compile(), state, args


def step_flops(config, data, *, with_augmented: bool) -> float:
    """FLOPs of one step by XLA's cost analysis, compiled with XLA's convolutions whatever
    `config.model.conv_backend` says: XLA cannot see inside the oneDNN custom calls and would leave them out."""
    xla_config = config.copy_and_resolve_references()
    xla_config.model.conv_backend = "xla"
    analysis = compiled_step(xla_config, data, with_augmented)[0].cost_analysis()
    return float((analysis[0] if isinstance(analysis, list) else analysis).get("flops", float("nan")))


def step_runner(config, data, with_augmented: bool) -> Callable[[int], None]:
    """run(count): `count` steps of one variant of the project's step (compiled once, its training state carried
    from call to call), then a wait for the results."""
    step, state, args = compiled_step(config, data, with_augmented)
    key = jax.random.key(0)

    def run(count: int) -> None:
        nonlocal state
        out = None
        for _ in range(count):
            state, out = step(state, args, key)
        jax.block_until_ready((state, out))

    return run


def measure(config, data, *, with_augmented: bool, repeats: int, steps: int, warmup: int):
    """(median images/s, images/s of each repeat) of one variant of the step."""
    rates = timed_rates(step_runner(config, data, with_augmented), warmup=warmup, repeats=repeats, count=steps,
                        batch_size=config.batch_size)
    return statistics.median(rates), rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--stage", type=int, default=2, help="SAFA placement (2 for ResNet-32, 3 for ResNet-50)")
    parser.add_argument("--model", default="resnet32", choices=("resnet32", "resnet50"))
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--safa_kernel_size", type=int, default=3, help="config.safa.kernel_size: 3 or 1")
    parser.add_argument("--conv_backend", default="auto", choices=CONV_BACKENDS, help="config.model.conv_backend")
    args = parser.parse_args()
    print("machine:", machine_description())
    print(f"convolutions: {conv_backend_in_use(args.conv_backend)} (config.model.conv_backend={args.conv_backend!r})")
    print(f"{args.model} at {args.image_size}x{args.image_size}, batch {args.batch_size}, float32, SAFA after stage "
          f"{args.stage} with {args.safa_kernel_size}x{args.safa_kernel_size} modules; "
          f"median of {args.repeats} repeats x {args.steps} steps after {args.warmup} warm-up steps", flush=True)
    # Large images: fewer of them, so the device-resident training set stays small.
    data = synthetic_cifar_lt(n_max=5000 if args.image_size <= 32 else 100, image_size=args.image_size)
    results = {}
    variants = [("baseline (CE)", False, False), ("SAFA, modules only (before start_epoch)", True, False),
                ("SAFA, augmented features classified", True, True)]
    for name, safa, augmented in variants:
        config = cifar10_lt.get_config("100")
        config.batch_size = args.batch_size
        config.model.name = args.model
        config.model.width = 16 if args.model == "resnet32" else 64
        config.data.image_size = args.image_size
        config.data.crop_padding = args.image_size // 8
        config.method = "safa" if safa else "plain"
        config.safa.stage = args.stage
        config.safa.kernel_size = args.safa_kernel_size
        config.model.conv_backend = args.conv_backend
        rate, rates = measure(config, data, with_augmented=augmented, repeats=args.repeats, steps=args.steps,
                              warmup=args.warmup)
        flops = step_flops(config, data, with_augmented=augmented)
        results[name] = (rate, flops)
        print(f"{name:<42} {rate:8.1f} images/s (repeats {', '.join(f'{r:.1f}' for r in rates)}); "
              f"{flops / 1e9:8.2f} GFLOP/step")
    base_rate, base_flops = results["baseline (CE)"]
    for name, (rate, flops) in list(results.items())[1:]:
        time_ratio, flop_ratio = base_rate / rate, flops / base_flops
        print(f"{name}: step-time ratio {time_ratio:.3f}, FLOP ratio {flop_ratio:.3f}, "
              f"time/FLOP ratio {time_ratio / flop_ratio:.3f}")


if __name__ == "__main__":
    main()
