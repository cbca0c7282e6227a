"""Train-step images/s of ResNet-32 in JAX (the project's own step) against PyTorch (the reference model), one run.

Both frameworks train the same model (batch 128, 32x32x3, float32) with SGD (momentum 0.9, weight decay
2e-4) on softmax cross-entropy: forward, backward and update per step. PyTorch runs in NCHW and in
channels_last; the closing ratio is taken against the faster layout. The JAX figure is the project's real
step (`safa_jax.train.make_train_step`, timed by bench/train_throughput.py's `measure`), which also draws
and augments its batch on the device (random crop + flip); the PyTorch step gets a ready batch, as the
reference code's DataLoader hands it one, so any difference in that work counts against JAX.
Every figure is the median of --repeats timings of --steps steps after compilation and --warmup steps.
Device: PyTorch uses CUDA where available (with cudnn.benchmark, as the reference code), else the CPU
with one thread per core; JAX uses its default backend and `--conv_backend` (default "auto": oneDNN's
convolutions on one CPU device). PyTorch is timed in a process of its own (bench/common.py, in_own_process).

Run from the repository root:  .venv/bin/python bench/train_step.py [--safa] [--repeats 3 --steps 10]
The last line reads `jax/torch images/s ratio: X`.
"""

import argparse
import os
import pathlib
import sys
from collections.abc import Callable

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import safa_jax  # noqa: E402,F401  (XLA flags before JAX starts)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.common import in_own_process, machine_description, report, timed_rates  # noqa: E402
from bench.torch_resnet32 import ResNetCifar  # noqa: E402
from bench.train_throughput import conv_backend_in_use, measure, synthetic_cifar_lt  # noqa: E402
from configs import cifar10_lt  # noqa: E402
from safa_jax.models.conv_backend import CONV_BACKENDS  # noqa: E402

NUM_CLASSES = 10
IMAGE_SHAPE = (3, 32, 32)  # CHW of the CIFAR images both frameworks train on.
TORCH_LAYOUTS = {"NCHW": torch.contiguous_format, "channels_last": torch.channels_last}


def torch_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_steps(layout: str, args: argparse.Namespace) -> Callable[[int], None]:
    """run(count): `count` steps of the PyTorch reference step in `layout` (one of TORCH_LAYOUTS), then a sync.
    `args` needs width, blocks_per_stage and batch_size."""
    torch.set_num_threads(os.cpu_count())
    device, memory_format = torch_device(), TORCH_LAYOUTS[layout]
    torch.manual_seed(0)
    model = ResNetCifar(NUM_CLASSES, width=args.width, blocks_per_stage=args.blocks_per_stage)
    model = model.to(device=device, memory_format=memory_format).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
    images = torch.randn(args.batch_size, *IMAGE_SHAPE, device=device).contiguous(memory_format=memory_format)
    labels = torch.randint(0, NUM_CLASSES, (args.batch_size,), device=device)
    synchronize = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def run_steps(count: int) -> None:
        for _ in range(count):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(images), labels).backward()
            optimizer.step()
        synchronize()

    return run_steps


def measure_torch(layout: str, args: argparse.Namespace) -> list[float]:
    """images/s of each repeat of the PyTorch step in `layout` (one of TORCH_LAYOUTS)."""
    return timed_rates(torch_steps(layout, args), warmup=args.warmup, repeats=args.repeats, count=args.steps,
                       batch_size=args.batch_size)


def measure_jax(args: argparse.Namespace, *, safa: bool) -> list[float]:
    """images/s of each repeat of the project's JAX step (CE, linear head), with SAFA's full step if `safa`."""
    config = cifar10_lt.get_config("100")
    config.batch_size = args.batch_size
    config.model.width = args.width
    config.model.blocks_per_stage = args.blocks_per_stage
    config.safa.enabled = safa
    config.model.conv_backend = args.conv_backend
    _, rates = measure(config, synthetic_cifar_lt(), with_augmented=safa, repeats=args.repeats,
                          steps=args.steps, warmup=args.warmup)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per repeat")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--width", type=int, default=16, help="stage-1 channels (16 = ResNet-32)")
    parser.add_argument("--blocks_per_stage", type=int, default=5, help="5 = ResNet-32")
    parser.add_argument("--safa", action="store_true", help="also time the JAX step with SAFA (stage 2)")
    parser.add_argument("--conv_backend", default="auto", choices=CONV_BACKENDS,
                        help="config.model.conv_backend of the JAX step")
    args = parser.parse_args()
    for name in ("repeats", "steps", "warmup", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}={getattr(args, name)}; allowed: 1 or more.")

    torch.set_num_threads(os.cpu_count())
    if torch_device() == "cuda":
        torch.backends.cudnn.benchmark = True  # as the reference code sets it.
        # Both frameworks' defaults stand: cuDNN and XLA both let float32 convolutions use TF32.
        torch_on = f"{torch.cuda.get_device_name()}, cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}"
    else:
        torch_on = f"cpu, {torch.get_num_threads()} threads"
    print("machine:", machine_description())
    print(f"torch {torch.__version__} on {torch_on}")
    print(f"jax convolutions: {conv_backend_in_use(args.conv_backend)} (config.model.conv_backend={args.conv_backend!r})")
    print(f"ResNet (width {args.width}, {args.blocks_per_stage} blocks per stage) train step, batch {args.batch_size}, "
          f"32x32x3 float32; median of {args.repeats} repeats x {args.steps} steps after {args.warmup} warm-up steps",
          flush=True)

    jax_rate = report("jax images/s", measure_jax(args, safa=False))
    safa_rate = report("jax+safa images/s", measure_jax(args, safa=True)) if args.safa else None
    torch_rates = {layout: report(f"torch {layout} images/s", in_own_process(measure_torch, layout, args))
                   for layout in TORCH_LAYOUTS}
    faster_layout = max(torch_rates, key=torch_rates.get)
    torch_rate = torch_rates[faster_layout]
    print(f"faster torch layout: {faster_layout}")
    if safa_rate is not None:
        print(f"SAFA step-time ratio (with / without): {jax_rate / safa_rate:.3f}")
        print(f"jax+safa/torch images/s ratio: {safa_rate / torch_rate:.3f}")
    print(f"jax/torch images/s ratio: {jax_rate / torch_rate:.3f}")


if __name__ == "__main__":
    main()
