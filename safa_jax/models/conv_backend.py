"""Which implementation runs the models' convolutions: `config.model.conv_backend`.

- "xla": `jax.lax.conv_general_dilated`, compiled by XLA for whatever platform JAX runs on.
- "onednn": oneDNN's convolutions through XLA FFI custom calls (safa_jax/kernels/onednn_conv.py), CPU only,
  float32, one device. Same mathematics; outputs and gradients agree with "xla" to float rounding. With it the
  backbones also keep each block's output in memory (safa_jax/kernels/keep_in_memory.py, a no-op custom call
  from the same library), so XLA's CPU fusion does not recompute earlier blocks inside later ones.
- "auto" (the default): "onednn" where it can run (a single CPU device computing in float32, the oneDNN
  wheels installed and a C++ compiler present), "xla" everywhere else. On the project's 2-core Xeon the
  ResNet-32 train step runs about 1.3-1.5x faster with "onednn" (docs/benchmark_log.md).

The choice is not part of a checkpoint: parameters are the same arrays either way.
"""

import logging

import jax
from flax import nnx
from jax import lax

from safa_jax.kernels import onednn_conv
from safa_jax.kernels.keep_in_memory import keep_in_memory, unchanged
from safa_jax.models.split_backbone import SplitBackbone

CONV_BACKENDS = ("auto", "xla", "onednn")


def validate_conv_backend(model_config) -> None:
    """Checks that need no JAX backend: the name, and oneDNN's float32-only compute."""
    backend = model_config.conv_backend
    if backend not in CONV_BACKENDS:
        raise ValueError(f"unknown config.model.conv_backend={backend!r}; allowed: {', '.join(CONV_BACKENDS)}")
    if backend == "onednn" and model_config.compute_dtype != "float32":
        raise ValueError(f"config.model.conv_backend='onednn' computes in float32 only, but "
                         f"config.model.compute_dtype={model_config.compute_dtype!r}; use 'xla' or 'auto'")


def _onednn_blocker(compute_dtype: str, mesh: jax.sharding.Mesh) -> str | None:
    """Why oneDNN convolutions cannot run on `mesh`, or None if they can (building them if needed)."""
    platform = mesh.devices.flat[0].platform
    if platform != "cpu":
        return f"the mesh is on {platform}, and the oneDNN convolutions are CPU kernels"
    if mesh.size > 1:
        return f"the mesh has {mesh.size} devices, and the custom calls are not partitioned across devices"
    if compute_dtype != "float32":
        return f"compute_dtype is {compute_dtype}, and the oneDNN convolutions are float32"
    try:
        onednn_conv.ensure_available()
    except onednn_conv.OnednnUnavailable as error:
        return str(error)
    return None


def resolve_conv_backend(model_config, mesh: jax.sharding.Mesh) -> str:
    """"xla" or "onednn" for a run on `mesh`; an explicit "onednn" that cannot run is an error naming the reason."""
    validate_conv_backend(model_config)
    if model_config.conv_backend == "xla":
        return "xla"
    blocker = _onednn_blocker(model_config.compute_dtype, mesh)
    if blocker is None:
        logging.info("Convolutions: oneDNN (config.model.conv_backend=%r)", model_config.conv_backend)
        return "onednn"
    if model_config.conv_backend == "onednn":
        raise ValueError(f"config.model.conv_backend='onednn' cannot run here: {blocker}. Use 'auto' or 'xla'.")
    logging.info("Convolutions: XLA (auto: %s)", blocker)
    return "xla"


def use_conv_backend(module: nnx.Module, backend: str) -> None:
    """Points every `nnx.Conv` inside `module` at the convolution function of `backend` ("xla" or "onednn"); with
    "onednn" every backbone keeps its blocks' outputs in memory (`safa_jax/kernels/keep_in_memory.py`)."""
    if backend == "onednn":
        onednn_conv.ensure_available()
    function = {"xla": lax.conv_general_dilated, "onednn": onednn_conv.conv_general_dilated}[backend]
    keep = keep_in_memory if backend == "onednn" else unchanged
    for _, node in nnx.iter_graph(module):
        if isinstance(node, nnx.Conv):
            node.conv_general_dilated = function
        if isinstance(node, SplitBackbone):
            node.keep_block_outputs = keep
