"""keep_in_memory(x): x itself, as a value XLA must write to memory, so its CPU fusion reads it instead of
recomputing it.

Why: in the ResNet-32 train step XLA's CPU fusion pass copies the cheap elementwise chain of a residual stage
(BatchNorm, shortcut add, ReLU of every earlier block) into each later block's fusion: the fusion that writes
block k's output re-reads the convolution outputs of all blocks before it (up to 7 activation-sized arrays)
instead of block k-1's output, and the backward pass does the same (docs/benchmark_log.md).
`lax.optimization_barrier` would express this, but XLA's CPU pipeline removes it before fusion. A custom call
is opaque to fusion; this one (`SafaKeepInMemory` in onednn_conv.cc) takes its argument's buffer as its
result, so it moves no data. Gradients pass through unchanged. CPU only, registered with the oneDNN
convolutions (`onednn_conv.ensure_available`); the backbones use it when the convolution backend is "onednn"
(`LayerOps.keep_block_outputs`, safa_jax/models/layer_ops.py).
"""

import jax


def _call(x: jax.Array) -> jax.Array:
    return jax.ffi.ffi_call("safa_keep_in_memory", jax.ShapeDtypeStruct(x.shape, x.dtype),
                            input_output_aliases={0: 0}, vmap_method="broadcast_all")(x)


@jax.custom_vjp
def keep_in_memory(x: jax.Array) -> jax.Array:
    return _call(x)


keep_in_memory.defvjp(lambda x: (_call(x), None), lambda _, g: (g,))
