"""What every benchmark prints first: the machine and the versions, so a recorded figure can be placed."""

import os
import platform
import sys


def machine_description() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import jax
    devices = jax.devices()
    return (f"{cpu}, {os.cpu_count()} cores; JAX {jax.__version__} on {len(devices)} x {devices[0].device_kind}; "
            f"Python {sys.version.split()[0]}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
