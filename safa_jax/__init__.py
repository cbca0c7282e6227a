"""safa_jax: SAFA (Sample-Adaptive Feature Augmentation) for long-tailed classification in JAX."""

from safa_jax import xla_flags as _xla_flags

_xla_flags.apply_cpu_defaults()
