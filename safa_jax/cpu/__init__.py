"""The CPU fast path, apart from the core: nothing outside this package imports it at module level.

- `onednn_conv`, `onednn_build`, `onednn_conv.cc`: oneDNN's convolutions (the library PyTorch uses on CPU) as XLA
  FFI custom calls, compiled with the machine's C++ compiler on first use; `keep_in_memory`, a no-op custom call
  from the same library that stops XLA's CPU fusion from recomputing earlier blocks inside later ones. The
  models get them at construction as a `safa_jax.models.layer_ops.LayerOps`, which `layer_ops_for` builds only
  for a run on one CPU device in float32 (`config.model.conv_backend`).
- `process_settings`, `xla_flags`, `host_memory`: settings of the process that pay on the CPU only (an XLA flag,
  glibc's malloc), applied by the entry points before JAX starts, never on import.

Without the oneDNN wheels or a C++ compiler everything runs with XLA's convolutions ("auto" picks them).
"""
