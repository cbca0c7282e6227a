"""Train-step images/s of ResNet-32 in JAX (the project's own step) against PyTorch (the reference model), one run.

Both frameworks train the same model (batch 128, 32x32x3, float32) with SGD (momentum 0.9, weight decay
2e-4) on softmax cross-entropy: forward, backward and update per step. PyTorch runs in NCHW and in
channels_last; the closing ratio is taken against the faster layout. The JAX figure is the project's real
step (`safa_jax.train.make_train_step`, run by bench/train_throughput.py's `step_runner`), which also draws
and augments its batch on the device (random crop + flip); the PyTorch step gets a ready batch, as the
reference code's DataLoader hands it one, so any difference in that work counts against JAX.
The variants are timed in --repeats rounds, each round one timing of --steps steps of every variant in turn (after
compilation and --warmup steps), so the minute-to-minute speed changes of a shared machine hit all variants
alike: each images/s figure is the median over rounds, each ratio the median of the rounds' ratios.
Device: PyTorch uses CUDA where available (with cudnn.benchmark, as the reference code), else the CPU
with one thread per core; JAX uses its default backend, `--conv_backend` (default "auto": oneDNN's
convolutions on one CPU device) and `--batch_norm` (default "folded", the config's default). Each PyTorch
layout runs in a process of its own (bench/common.py, own_process), kept for all rounds.

Run from the repository root:  .venv/bin/python bench/train_step.py [--safa] [--repeats 5 --steps 10]
The last line reads `jax/torch images/s ratio: X`.
"""

import argparse
import contextlib
import functools
import os
import pathlib
import sys
from collections.abc import Callable

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from safa_jax.cpu.process_settings import apply_cpu_process_settings  # noqa: E402

apply_cpu_process_settings()  # before JAX starts
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.common import (machine_description, own_process, paired_ratio, report, timed_in_rounds,  # noqa: E402
                          timed_rate)
from bench.torch_resnet32 import ResNetCifar  # noqa: E402
from bench.train_throughput import conv_backend_in_use, step_runner, synthetic_cifar_lt  # noqa: E402
from configs import cifar10_lt  # noqa: E402
from safa_jax.models.batch_norm import BATCH_NORM_FORMS  # noqa: E402
from safa_jax.models.layer_ops import CONV_BACKENDS  # noqa: E402

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


_TORCH_RUNS: dict[str, Callable[[int], None]] = {}  # layout -> run(count), built in the process that times it


def torch_repeat(layout: str, args: argparse.Namespace) -> float:
    """images/s of one repeat (--steps steps) of the PyTorch step in `layout` (one of TORCH_LAYOUTS); the first
    call in a process builds the step and runs --warmup steps."""
    if layout not in _TORCH_RUNS:
        _TORCH_RUNS[layout] = torch_steps(layout, args)
        _TORCH_RUNS[layout](args.warmup)
    return timed_rate(_TORCH_RUNS[layout], count=args.steps, batch_size=args.batch_size)


def jax_repeat(args: argparse.Namespace, *, safa: bool) -> Callable[[], float]:
    """A function returning the images/s of one repeat (--steps steps) of the project's JAX step (CE, linear head;
    SAFA's full step if `safa`), compiled and run for --warmup steps here."""
    config = cifar10_lt.get_config("100")
    config.batch_size = args.batch_size
    config.model.width = args.width
    config.model.blocks_per_stage = args.blocks_per_stage
    config.method = "safa" if safa else "plain"
    config.model.conv_backend = args.conv_backend
    config.model.batch_norm = args.batch_norm
    run = step_runner(config, synthetic_cifar_lt(), with_augmented=safa)
    run(args.warmup)
    return functools.partial(timed_rate, run, count=args.steps, batch_size=args.batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="rounds: one repeat of every variant each")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per repeat")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--width", type=int, default=16, help="stage-1 channels (16 = ResNet-32)")
    parser.add_argument("--blocks_per_stage", type=int, default=5, help="5 = ResNet-32")
    parser.add_argument("--safa", action="store_true", help="also time the JAX step with SAFA (stage 2)")
    parser.add_argument("--conv_backend", default="auto", choices=CONV_BACKENDS,
                        help="config.model.conv_backend of the JAX step")
    parser.add_argument("--batch_norm", default="folded", choices=BATCH_NORM_FORMS,
                        help="config.model.batch_norm of the JAX step")
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
    print(f"jax convolutions: {conv_backend_in_use(args.conv_backend)} (config.model.conv_backend={args.conv_backend!r}); "
          f"config.model.batch_norm={args.batch_norm!r}")
    print(f"ResNet (width {args.width}, {args.blocks_per_stage} blocks per stage) train step, batch {args.batch_size}, "
          f"32x32x3 float32; medians of {args.repeats} rounds x {args.steps} steps per variant after {args.warmup} "
          f"warm-up steps",
          flush=True)

    repeats = {"jax": jax_repeat(args, safa=False)}
    if args.safa:
        repeats["jax+safa"] = jax_repeat(args, safa=True)
    with contextlib.ExitStack() as processes:
        for layout in TORCH_LAYOUTS:
            pool = processes.enter_context(own_process())
            repeats[f"torch {layout}"] = functools.partial(
                lambda pool, layout: pool.submit(torch_repeat, layout, args).result(), pool, layout)
        rates = timed_in_rounds(repeats, args.repeats)
    medians = {name: report(f"{name} images/s", variant_rates) for name, variant_rates in rates.items()}
    faster_layout = max(TORCH_LAYOUTS, key=lambda layout: medians[f"torch {layout}"])
    torch_rates = rates[f"torch {faster_layout}"]
    print(f"faster torch layout: {faster_layout}")
    if args.safa:
        print(f"SAFA step-time ratio (with / without): {paired_ratio(rates['jax'], rates['jax+safa']):.3f}")
        print(f"jax+safa/torch images/s ratio: {paired_ratio(rates['jax+safa'], torch_rates):.3f}")
    round_ratios = ", ".join(f"{jax_rate / torch_rate:.3f}" for jax_rate, torch_rate in zip(rates["jax"], torch_rates))
    print(f"jax/torch images/s ratio of each round: {round_ratios}")
    print(f"jax/torch images/s ratio: {paired_ratio(rates['jax'], torch_rates):.3f}")


if __name__ == "__main__":
    main()
