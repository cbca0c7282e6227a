"""keep_in_memory: an exact identity with an identity gradient, and what it is for: with the oneDNN backend the
backbone's blocks are kept in memory, and no fusion of the compiled train step recomputes earlier blocks."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from safa_jax.cpu import onednn_build, onednn_conv
from safa_jax.cpu.keep_in_memory import keep_in_memory
from safa_jax.models.layer_ops import LayerOps, layer_ops, unchanged
from safa_jax.models.resnet_cifar import ResNetCifar

BLOCKER = onednn_build.installed_blocker()
pytestmark = pytest.mark.skipif(BLOCKER is not None, reason=f"the oneDNN library cannot be built: {BLOCKER}")


def test_returns_its_argument_and_passes_gradients_through():
    onednn_conv.ensure_available()
    x = jax.random.normal(jax.random.key(0), (3, 5, 4))
    np.testing.assert_array_equal(jax.jit(keep_in_memory)(x), x)
    # The argument has a second reader, so XLA cannot hand its buffer over: the handler's copy path.
    np.testing.assert_array_equal(jax.jit(lambda x: keep_in_memory(x * 2) + x * 2)(x), x * 4)
    grad = jax.jit(jax.grad(lambda x: jnp.sum(jnp.sin(keep_in_memory(x)))))(x)
    np.testing.assert_allclose(grad, jnp.cos(x), rtol=1e-6)


def _compiled_gradient(keep_block_outputs):
    """(compiled text, gradients) of a 4-blocks-per-stage ResNet's loss on the oneDNN backend."""
    ops = LayerOps(conv_general_dilated=onednn_conv.conv_general_dilated, keep_block_outputs=keep_block_outputs)
    model = ResNetCifar(10, width=4, blocks_per_stage=4, ops=ops, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)

    def loss(state, x):
        return jnp.sum(nnx.merge(graphdef, state)(x, train=True) ** 2)

    x = jax.random.normal(jax.random.key(1), (8, 8, 8, 3))
    gradient = jax.jit(jax.grad(loss))
    return gradient.lower(state, x).compile().as_text(), gradient(state, x)


def _most_activations_read_by_one_fusion(text: str, activation: str) -> int:
    """The largest number of operands of shape `activation` (e.g. "f32[8,8,8,4]") of any loop fusion in `text`."""
    shape_of = dict(re.findall(r"^\s*(?:ROOT )?%(\S+) = (\S+?)\{", text, re.M))
    return max(sum(shape_of.get(operand.strip().lstrip("%")) == activation for operand in operands.split(","))
               for operands in re.findall(r"= \S+ fusion\((.*?)\), kind=kLoop", text))


def test_backbone_keeps_block_outputs_so_no_fusion_recomputes_earlier_blocks():
    kept_text, kept_gradients = _compiled_gradient(keep_in_memory)
    recomputed_text, recomputed_gradients = _compiled_gradient(unchanged)
    assert kept_text.count('custom_call_target="safa_keep_in_memory"') == 1 + 3 * 4  # the stem and 12 blocks
    # Stage 1's activations: a block reads its input and its second convolution's output, and the backward
    # fusions one gradient more. Without keep_in_memory XLA re-reads every earlier block's convolution output.
    assert _most_activations_read_by_one_fusion(kept_text, "f32[8,8,8,4]") <= 3
    assert _most_activations_read_by_one_fusion(recomputed_text, "f32[8,8,8,4]") > 3
    for kept, recomputed in zip(jax.tree.leaves(kept_gradients), jax.tree.leaves(recomputed_gradients)):
        # Same operations, fused differently: float rounding (gradients up to ~60 here).
        np.testing.assert_allclose(kept, recomputed, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(recomputed))))


def test_the_onednn_layers_keep_block_outputs_and_the_xla_layers_do_not():
    assert layer_ops("onednn").keep_block_outputs is keep_in_memory
    assert layer_ops("xla").keep_block_outputs is unchanged
    model = ResNetCifar(10, width=4, blocks_per_stage=1, ops=layer_ops("onednn"), rngs=nnx.Rngs(0))
    assert model.keep_block_outputs is keep_in_memory
