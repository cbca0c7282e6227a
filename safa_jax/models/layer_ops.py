"""How the models' layers compute, given to every model at construction: `LayerOps`.

A model takes `ops=LayerOps(...)` and hands it to each layer it builds: the convolution function every
`nnx.Conv` calls, the function each backbone block's output passes through, and the BatchNorm form. The
default, `XLA_LAYERS`, is plain XLA (`jax.lax.conv_general_dilated`, block outputs unchanged) with the folded
BatchNorm; every platform runs it. `layer_ops_for(config.model, mesh)` is what a run uses:

- `config.model.conv_backend`: "xla"; "onednn", oneDNN's CPU convolutions through XLA FFI custom calls (the
  CPU fast path, `safa_jax/cpu/`), which also keep each block's output in memory so XLA's CPU fusion does not
  recompute earlier blocks inside later ones; or "auto" (the default), "onednn" where it can run (one CPU
  device computing in float32, the oneDNN wheels installed and a C++ compiler present), "xla" everywhere else.
- `config.model.batch_norm`: the BatchNorm form (safa_jax/models/batch_norm.py).

The CPU fast path is imported here only for a run that can use it (one CPU device, float32): on a TPU or a GPU
nothing of `safa_jax.cpu` is loaded. Parameters are the same arrays for every choice, so checkpoints do not
depend on it.
"""

import dataclasses
import logging
from collections.abc import Callable

import jax
from jax import lax

from safa_jax.models.batch_norm import validate_batch_norm_form

CONV_BACKENDS = ("auto", "xla", "onednn")


def unchanged(x: jax.Array) -> jax.Array:
    """The block-output function of the XLA layers: the value itself."""
    return x


@dataclasses.dataclass(frozen=True)
class LayerOps:
    """What a model's layers compute with (see the module docstring)."""

    conv_general_dilated: Callable = lax.conv_general_dilated  # `jax.lax.conv_general_dilated`'s signature
    keep_block_outputs: Callable[[jax.Array], jax.Array] = unchanged  # applied to the stem's and each block's output
    batch_norm_form: str = "folded"  # one of batch_norm.BATCH_NORM_FORMS
    convolutions: str = "XLA"  # what the run's console names them


XLA_LAYERS = LayerOps()  # the models' default: runs on every platform


def validate_layer_config(model_config) -> None:
    """Checks that need no JAX backend: the names, and oneDNN's float32-only compute."""
    backend = model_config.conv_backend
    if backend not in CONV_BACKENDS:
        raise ValueError(f"unknown config.model.conv_backend={backend!r}; allowed: {', '.join(CONV_BACKENDS)}")
    if backend == "onednn" and model_config.compute_dtype != "float32":
        raise ValueError(f"config.model.conv_backend='onednn' computes in float32 only, but "
                         f"config.model.compute_dtype={model_config.compute_dtype!r}; use 'xla' or 'auto'")
    validate_batch_norm_form(model_config.batch_norm)


def _mesh_blocker(compute_dtype: str, mesh: jax.sharding.Mesh) -> str | None:
    """Why the oneDNN convolutions cannot run on `mesh` whatever is installed, or None."""
    platform = mesh.devices.flat[0].platform
    if platform != "cpu":
        return f"the mesh is on {platform}, and the oneDNN convolutions are CPU kernels"
    if mesh.size > 1:
        return f"the mesh has {mesh.size} devices, and the custom calls are not partitioned across devices"
    if compute_dtype != "float32":
        return f"compute_dtype is {compute_dtype}, and the oneDNN convolutions are float32"
    return None


def resolve_conv_backend(model_config, mesh: jax.sharding.Mesh) -> str:
    """"xla" or "onednn" for a run on `mesh` (building the oneDNN library if it is used and not yet built); an
    explicit "onednn" that cannot run is an error naming the reason."""
    validate_layer_config(model_config)
    if model_config.conv_backend == "xla":
        return "xla"
    blocker = _mesh_blocker(model_config.compute_dtype, mesh)
    if blocker is None:
        from safa_jax.cpu import onednn_conv  # The CPU fast path, for a run that can use it.
        blocker = onednn_conv.unavailable_reason()
    if blocker is None:
        logging.info("Convolutions: oneDNN (config.model.conv_backend=%r)", model_config.conv_backend)
        return "onednn"
    if model_config.conv_backend == "onednn":
        raise ValueError(f"config.model.conv_backend='onednn' cannot run here: {blocker}. Use 'auto' or 'xla'.")
    logging.info("Convolutions: XLA (auto: %s)", blocker)
    return "xla"


def layer_ops(conv_backend: str, batch_norm_form: str = "folded") -> LayerOps:
    """The layers of a resolved backend, "xla" or "onednn" (what `resolve_conv_backend` returns)."""
    validate_batch_norm_form(batch_norm_form)
    if conv_backend == "xla":
        return dataclasses.replace(XLA_LAYERS, batch_norm_form=batch_norm_form)
    if conv_backend != "onednn":
        raise ValueError(f"layer_ops needs a resolved backend, 'xla' or 'onednn'; got {conv_backend!r}")
    from safa_jax.cpu import onednn_conv
    from safa_jax.cpu.keep_in_memory import keep_in_memory
    onednn_conv.ensure_available()
    return LayerOps(conv_general_dilated=onednn_conv.conv_general_dilated, keep_block_outputs=keep_in_memory,
                    batch_norm_form=batch_norm_form, convolutions="oneDNN")


def layer_ops_for(model_config, mesh: jax.sharding.Mesh) -> LayerOps:
    """The layers a run with `config.model` computes with on `mesh`."""
    return layer_ops(resolve_conv_backend(model_config, mesh), model_config.batch_norm)
