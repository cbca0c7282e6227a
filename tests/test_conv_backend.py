"""oneDNN convolutions (config.model.conv_backend): same outputs and gradients as XLA's, and the choice of backend."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from helpers import three_augmented_steps, tiny_config, tiny_data
from safa_jax import sharding
from safa_jax.experiment import build_experiment
from safa_jax.cpu import onednn_build, onednn_conv
from safa_jax.models.layer_ops import layer_ops, resolve_conv_backend

BLOCKER = onednn_build.installed_blocker()
needs_onednn = pytest.mark.skipif(BLOCKER is not None, reason=f"oneDNN convolutions cannot be built: {BLOCKER}")
ONE_DEVICE = sharding.make_mesh(jax.devices()[:1])

# (input NHWC, kernel HWIO, strides, padding): ResNet-32's 3x3 and strided convolutions, the stem's 3 input
# channels, SAFA's "SAME" 1x1 modules, asymmetric padding that only an explicit pair list can express, and
# ResNet-50's 7x7 stride-2 stem. The handlers split the batch into one piece per thread of XLA's pool (2 on
# a 2-core machine): batches of 1 (one piece), 2 and 3 (pieces of 1 and 2 images) are all here.
GEOMETRIES = [
    ((1, 6, 6, 3), (3, 3, 3, 4), (1, 1), ((1, 1), (1, 1))),
    ((2, 8, 8, 3), (3, 3, 3, 4), (1, 1), ((1, 1), (1, 1))),
    ((3, 8, 8, 4), (3, 3, 4, 8), (2, 2), ((1, 1), (1, 1))),
    ((2, 7, 9, 5), (1, 1, 5, 6), (1, 1), "SAME"),
    ((2, 7, 7, 4), (3, 3, 4, 4), (2, 1), "SAME"),
    ((2, 6, 6, 2), (2, 3, 2, 3), (1, 2), ((0, 1), (2, 0))),
    ((2, 13, 13, 3), (7, 7, 3, 4), (2, 2), ((3, 3), (3, 3))),  # ResNet-50's stem
]


def _xla_conv(x, w, strides, padding):
    return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    precision=lax.Precision.HIGHEST)


def _onednn_conv(x, w, strides, padding):
    return onednn_conv.conv_general_dilated(x, w, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


EPS32 = float(np.finfo(np.float32).eps)


def _rounding_bounds(x, w, target, strides, padding):
    """Worst-case float32 differences between two summation orders, per element of y, dx and dw.

    A sum of n products differs between orders by at most about n * eps * sum|products|; sum|products| is
    the convolution (or its transposes) of the absolute values. The gradients' cotangent dy = cos(y) * target
    also inherits the forward difference (|d cos y| <= |dy_err|), which is carried through.
    """
    kh, kw, cin, cout = w.shape
    abs_conv = lambda a, b: _xla_conv(a, b, strides, padding)  # noqa: E731
    y = _xla_conv(x, w, strides, padding)
    y_bound = kh * kw * cin * EPS32 * abs_conv(jnp.abs(x), jnp.abs(w))
    dy = jnp.cos(y) * target
    dy_bound = y_bound * jnp.abs(target)
    _, vjp_x = jax.vjp(lambda a: abs_conv(a, jnp.abs(w)), jnp.abs(x))
    _, vjp_w = jax.vjp(lambda b: abs_conv(jnp.abs(x), b), jnp.abs(w))
    batch_terms = y.shape[0] * y.shape[1] * y.shape[2]
    dx_bound = kh * kw * cout * EPS32 * vjp_x(jnp.abs(dy))[0] + vjp_x(dy_bound)[0]
    dw_bound = batch_terms * EPS32 * vjp_w(jnp.abs(dy))[0] + vjp_w(dy_bound)[0]
    return y_bound, dx_bound, dw_bound


def _assert_within(got, expected, bound, name):
    excess = np.abs(np.asarray(got) - np.asarray(expected)) - np.asarray(bound)
    assert excess.max() <= 0, f"{name}: {int((excess > 0).sum())} elements beyond the rounding bound"


@needs_onednn
@pytest.mark.parametrize("x_shape,w_shape,strides,padding", GEOMETRIES)
def test_outputs_and_gradients_match_xla(x_shape, w_shape, strides, padding):
    onednn_conv.ensure_available()
    key_x, key_w, key_t = jax.random.split(jax.random.key(0), 3)
    x, w = jax.random.normal(key_x, x_shape), jax.random.normal(key_w, w_shape)
    expected = _xla_conv(x, w, strides, padding)
    target = jax.random.normal(key_t, expected.shape)

    def loss(conv, x, w):  # a loss whose gradient is not a constant, so dy differs per position
        return jnp.sum(jnp.sin(conv(x, w, strides, padding)) * target)

    got = jax.jit(_onednn_conv, static_argnums=(2, 3))(x, w, strides, padding)
    assert got.shape == expected.shape
    y_bound, dx_bound, dw_bound = _rounding_bounds(x, w, target, strides, padding)
    _assert_within(got, expected, y_bound, "outputs")
    onednn_grad = jax.jit(jax.grad(lambda x, w: loss(_onednn_conv, x, w), argnums=(0, 1)))
    dx, dw = onednn_grad(x, w)
    dx_ref, dw_ref = jax.grad(lambda x, w: loss(_xla_conv, x, w), argnums=(0, 1))(x, w)
    _assert_within(dx, dx_ref, dx_bound, "input gradient")
    _assert_within(dw, dw_ref, dw_bound, "weight gradient")
    # The bounds are worst cases (errors of one ulp per term, all of one sign), but below 1 % of the values: a
    # real defect (a shifted window, a wrong padding or stride) moves elements by their own size.
    for bound, reference in ((y_bound, expected), (dx_bound, dx_ref), (dw_bound, dw_ref)):
        assert float(jnp.max(bound)) < 1e-2 * float(jnp.max(jnp.abs(reference)))
    # The oneDNN path really ran: its three custom calls are in the compiled gradient.
    text = onednn_grad.lower(x, w).as_text()
    assert all(f"safa_onednn_conv_{op}" in text for op in ("forward", "backward_data", "backward_weights"))


@needs_onednn
def test_uncovered_convolutions_fall_back_to_xla():
    onednn_conv.ensure_available()
    x, w = jnp.ones((1, 5, 5, 4)), jnp.ones((3, 3, 4, 4))
    for args, kwargs in [((x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)), {}),  # not float32
                         ((x, w), {"rhs_dilation": (2, 2)}),
                         ((x, w), {"padding": ((-1, 1), (0, 0))}),  # oneDNN takes no negative padding
                         ((x, w[:, :, :2]), {"feature_group_count": 2})]:
        kwargs = {"padding": "SAME", **kwargs}
        fn = lambda a, b: onednn_conv.conv_general_dilated(  # noqa: E731
            a, b, (1, 1), dimension_numbers=("NHWC", "HWIO", "NHWC"), **kwargs)
        assert "safa_onednn" not in jax.jit(fn).lower(*args).as_text()
        expected = lax.conv_general_dilated(*args, (1, 1), dimension_numbers=("NHWC", "HWIO", "NHWC"), **kwargs)
        np.testing.assert_array_equal(fn(*args), expected)


@needs_onednn
def test_train_steps_match_xla():
    """Three ResNet + SAFA train steps from the same state: losses and parameters agree with XLA's convolutions."""
    def run(backend):
        config = tiny_config(model__conv_backend=backend, method="safa", safa__start_epoch=0)
        losses, state, text = three_augmented_steps(config, ONE_DEVICE)
        return losses, state.params, "safa_onednn_conv_forward" in text

    losses_xla, params_xla, onednn_in_xla = run("xla")
    losses_onednn, params_onednn, onednn_in_onednn = run("onednn")
    assert (onednn_in_xla, onednn_in_onednn) == (False, True)
    np.testing.assert_allclose(losses_onednn, losses_xla, rtol=1e-4)
    for got, expected in zip(jax.tree.leaves(params_onednn), jax.tree.leaves(params_xla)):
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-5)


@needs_onednn
def test_auto_takes_onednn_on_one_cpu_device_and_xla_on_many():
    config = tiny_config()
    assert config.model.conv_backend == "auto"
    assert resolve_conv_backend(config.model, ONE_DEVICE) == "onednn"
    assert resolve_conv_backend(config.model, sharding.make_mesh(jax.devices()[:2])) == "xla"
    config.model.compute_dtype = "bfloat16"
    assert resolve_conv_backend(config.model, ONE_DEVICE) == "xla"


def test_explicit_onednn_that_cannot_run_names_the_reason():
    config = tiny_config(model__conv_backend="onednn")
    with pytest.raises(ValueError, match=r"conv_backend='onednn' cannot run here: the mesh has 2 devices"):
        resolve_conv_backend(config.model, sharding.make_mesh(jax.devices()[:2]))


@pytest.mark.parametrize("field,value,message", [
    ("conv_backend", "mkldnn", r"unknown config.model.conv_backend='mkldnn'; allowed: auto, xla, onednn"),
    ("compute_dtype", "bfloat16", r"conv_backend='onednn' computes in float32 only"),
])
def test_bad_conv_backend_config_is_refused_before_data_loads(field, value, message):
    config = tiny_config(model__conv_backend="onednn")
    config.model[field] = value
    with pytest.raises(ValueError, match=message):
        build_experiment(config, data=None, mesh=ONE_DEVICE)  # data=None: would load digits if checks passed


def test_missing_wheel_is_named(monkeypatch):
    monkeypatch.setattr(onednn_build, "HEADERS_WHEEL", "onednn-devel-not-installed")
    on_x86_linux = onednn_build.sys.platform == "linux" and onednn_build.platform.machine() == "x86_64"
    expected = "the onednn-devel-not-installed wheel is not installed" if on_x86_linux else "x86_64 Linux"
    assert expected in onednn_build.installed_blocker()


@needs_onednn
def test_every_conv_of_a_run_on_onednn_runs_on_onednn():
    config = tiny_config(method="safa")
    experiment, state = build_experiment(config, data=tiny_data(), mesh=ONE_DEVICE)
    merged = [experiment.backbone.merge(state.params["backbone"], state.batch_stats["backbone"]),
              experiment.method.bridge.merge(state.params["safa"], state.batch_stats["safa"])]
    convs = {node.conv_general_dilated for module in merged for _, node in nnx.iter_graph(module)
             if isinstance(node, nnx.Conv)}
    assert convs == {onednn_conv.conv_general_dilated}
    assert layer_ops("xla").conv_general_dilated is lax.conv_general_dilated
