"""safa_jax.cpu.host_memory: the CPU step's temporary buffers stop costing fresh pages on every execution."""

import os
import pathlib
import platform
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
# A jitted function whose temporary (the first cumsum, 40 MB) is larger than glibc's largest mmap threshold
# (32 MB): without the settings every call maps and unmaps it, touching about 10,000 fresh pages.
PROBE = """
import resource
from safa_jax.cpu.process_settings import apply_cpu_process_settings
apply_cpu_process_settings()
import jax, jax.numpy as jnp
f = jax.jit(lambda x: jnp.cumsum(jnp.cumsum(x)[::-1]).sum())
x = jnp.ones(10_000_000)
for _ in range(3):  # warm-up: compilation, and the heap settling to the sizes this function asks for
    f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    f(x).block_until_ready()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""


def _faults_per_call(**env) -> float:
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": str(REPO), **env})
    return float(result.stdout.split()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the settings are glibc's")
def test_freed_temporaries_are_reused_instead_of_faulted_in_again():
    kept = _faults_per_call()
    returned = _faults_per_call(SAFA_JAX_KEEP_MALLOC="1")  # opt-out: glibc's defaults
    assert returned > 10_000 * 0.9  # 40 MB / 4 KiB pages, at least, per call
    assert kept < returned / 3  # typically 0-4,000 against 30,000: what remains depends on thread timing


def test_importing_the_package_changes_no_process_setting():
    """`import safa_jax` and its modules leave XLA_FLAGS as they were; the entry points apply the CPU settings."""
    probe = ("import os, safa_jax, safa_jax.train, safa_jax.main, safa_jax.suite\n"
             "print(repr(os.environ.get('XLA_FLAGS')))")
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "SAFA_JAX_KEEP_XLA_FLAGS")}
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True,
                            env={**env, "PYTHONPATH": str(REPO)})
    assert result.stdout.strip().splitlines()[-1] == "None"


def test_the_settings_follow_the_platform():
    from safa_jax.cpu.process_settings import platform_will_be_cpu
    assert platform_will_be_cpu({"JAX_PLATFORMS": "cpu"})
    assert not platform_will_be_cpu({"JAX_PLATFORMS": "cuda,cpu"})
    assert not platform_will_be_cpu({"JAX_PLATFORMS": "tpu"})
