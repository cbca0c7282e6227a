"""The Delta-encoder: SAFA's E and G alone, the head delta applied as it is, reconstruction its only loss."""

import jax
import numpy as np
import pytest
from flax import nnx

from configs.common import get_config
from safa_jax.config_checks import validate_config
from safa_jax.models import safa
from safa_jax.state import NnxBridge
from tests.helpers import tiny_config


def test_augmented_features_are_g_of_the_tail_and_an_unadapted_head_delta():
    modules = safa.SafaModules(8, q_width=-1, kernel_size=1, delta_encoder_only=True, rngs=nnx.Rngs(0))
    _, params, _ = NnxBridge.split(modules)
    assert set(params) == {"delta_extractor", "feature_generator"}  # no D, no Q
    features = jax.random.normal(jax.random.key(1), (3, 4, 4, 8))
    labels = np.array([0, 0, 1])  # one head pair (both orders) of class 0, one tail sample of class 1
    out = safa.safa_augment(modules, features, labels, np.array([True, False]), jax.random.key(2), num_slots=2,
                            safa_config=get_config().safa, train=False, delta_encoder=True)
    # Evaluation mode, so each sample is computed alone: G([F_t ; E([F_a ; F_p])]) for the pair (a, p).
    deltas = [modules.extract_delta(features[a:a + 1], features[p:p + 1], train=False) for a, p in ((0, 1), (1, 0))]
    candidates = [np.asarray(modules.apply_delta(features[2:3], d, train=False))[0] for d in deltas]
    assert float(out.weights.sum()) == 2.0
    for slot in range(2):
        assert any(np.allclose(out.features[slot], c, rtol=1e-5, atol=1e-6) for c in candidates)
    # Reconstruction of the head partner is the only term, whatever config.safa's switches say.
    assert float(out.terms["reconstruction"]) == pytest.approx(float(out.parts["head_reconstruction"]))
    assert float(out.terms["reconstruction"]) > 0
    for name in ("contrastive", "ms_head", "ms_tail"):
        assert float(out.terms[name]) == 0.0
    assert float(out.parts["cycle"]) == 0.0


def test_the_delta_encoder_needs_its_reconstruction_loss():
    with pytest.raises(ValueError, match="config.method='delta_encoder' trains by reconstruction only"):
        validate_config(tiny_config(method="delta_encoder", safa__use_reconstruction=False))
    validate_config(tiny_config(method="delta_encoder"))
