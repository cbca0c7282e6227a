"""Seconds to build a model's initial parameters: eagerly, as `build_experiment` does, against one jit program.

Each build runs in a fresh process (nothing compiled is reused), the two ways alternating over --rounds, and
the figure is the median seconds from the start of construction (JAX imported and started) to the parameters
being ready.
Eager construction runs each initialiser as its own small program; inside `jax.jit` the whole construction is
traced once and compiled as one program. The faster way is the one worth keeping.

Run from the repository root:  .venv/bin/python bench/initial_state.py [--model resnet50 --classes 1000]
"""

import argparse
import pathlib
import statistics
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

WAYS = ("eager", "one_program")


def build_seconds(way: str, model: str, classes: int, width: int) -> float:
    """Builds the model's parameters one `way` in this process and returns the seconds it took."""
    import jax
    from flax import nnx

    from safa_jax.models import build_model

    jax.devices()  # the backend starts before the clock does
    start = time.perf_counter()

    def make():
        return build_model(model, num_classes=classes, in_channels=3, width=width, blocks_per_stage=5,
                           head="linear", rngs=nnx.Rngs(0))

    if way == "eager":
        state = nnx.state(make())
    else:
        state = jax.jit(lambda: nnx.state(make()))()
    jax.block_until_ready(jax.tree.leaves(state))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet32")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--width", type=int, default=16, help="first stage's channels (resnet50: 64)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", choices=WAYS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(build_seconds(args.child, args.model, args.classes, args.width))
        return
    from bench.common import machine_description

    print(machine_description())
    seconds = {way: [] for way in WAYS}
    for _ in range(args.rounds):
        for way in WAYS:
            out = subprocess.run([sys.executable, __file__, f"--child={way}", f"--model={args.model}",
                                  f"--classes={args.classes}", f"--width={args.width}"],
                                 check=True, capture_output=True, text=True).stdout
            seconds[way].append(float(out.split()[-1]))
    for way in WAYS:
        print(f"{args.model} {way}: median {statistics.median(seconds[way]):.2f} s over "
              f"{args.rounds} processes ({', '.join(f'{s:.2f}' for s in seconds[way])})")


if __name__ == "__main__":
    main()
