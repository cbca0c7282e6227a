"""safa_jax: SAFA (Sample-Adaptive Feature Augmentation) for long-tailed classification in JAX."""

from safa_jax import host_memory as _host_memory
from safa_jax import xla_flags as _xla_flags

_xla_flags.apply_cpu_defaults()
_host_memory.keep_freed_memory()
