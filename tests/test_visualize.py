"""The figures of a run: feature groups and their counts, the PNGs, and the plots' content on known values."""

import json

import jax
import numpy as np
import pytest
from PIL import Image

from safa_jax import checkpointing, evaluate, sharding
from safa_jax.experiment import build_experiment, restore_if_any
from safa_jax.train import train_and_evaluate
from safa_jax.visualize import (AUGMENTED, GROUP_NAMES, HEAD, TAIL, collect_features, load_run_config,
                                plot_embedding, plot_per_class_accuracy, run_accuracy_summary, visualize_run)
from tests.helpers import tiny_config, tiny_data

# tiny_data's classes have (20, 12, 6, 3) training and 5 test images each; head_ratio 0.2 of 4 classes makes
# class 0 the one head class (max(1, floor(0.8)) = 1), so 20 head and 21 tail training images, 5 and 15 test.
TRAIN_HEAD, TRAIN_TAIL, TEST_HEAD, TEST_TAIL = 20, 21, 5, 15


@pytest.fixture(scope="module")
def single_device_mesh():
    return sharding.make_mesh(jax.devices()[:1])


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, single_device_mesh):
    """A SAFA run of 4 steps with augmented features in the loss from step 0."""
    workdir = tmp_path_factory.mktemp("safa_run")
    config = tiny_config(method="safa", safa__start_epoch=0, num_train_steps=4)
    train_and_evaluate(config, workdir, mesh=single_device_mesh, data=tiny_data())
    return workdir


@pytest.fixture(scope="module")
def restored(trained_run, single_device_mesh):
    config = load_run_config(trained_run)
    experiment, state = build_experiment(config, data=tiny_data(), mesh=single_device_mesh)
    checkpoints = checkpointing.Checkpoints(trained_run)
    state = restore_if_any(experiment, checkpoints, state)
    checkpoints.close()
    return experiment, state


def test_load_run_config_turns_json_lists_back_into_tuples(trained_run):
    config = load_run_config(trained_run)
    assert config.optim.decay_epochs == (2, 3)
    assert config.data.mean == ()
    assert config.safa.num_slots == 8  # resolved from -1: batch_size 16 // 2.


def test_train_features_hold_head_tail_and_augmented_tail(restored):
    experiment, state = restored
    features = collect_features(experiment, state, "train", max_points=2000)
    # As many augmented points as real tail points.
    assert (features.count(HEAD), features.count(TAIL), features.count(AUGMENTED)) == (TRAIN_HEAD, TRAIN_TAIL,
                                                                                       TRAIN_TAIL)
    assert features.features.shape == (TRAIN_HEAD + 2 * TRAIN_TAIL, 16)  # pooled after stage 3: 4 * width 4.
    assert np.isfinite(features.features).all()
    assert set(features.labels[features.groups == HEAD]) == {0}
    assert set(features.labels[features.groups == TAIL]) == {1, 2, 3}
    assert set(features.labels[features.groups == AUGMENTED]) <= {1, 2, 3}
    real_tail = features.features[features.groups == TAIL]
    augmented = features.features[features.groups == AUGMENTED]
    distances = np.abs(augmented[:, None, :] - real_tail[None, :, :]).max(axis=-1)
    assert distances.min() > 1e-6, "augmented features must be generated, not copies of real tail features"


def test_max_points_is_shared_equally_among_the_groups(restored):
    experiment, state = restored
    features = collect_features(experiment, state, "train", max_points=30, seed=1)
    assert [features.count(group) for group in (HEAD, TAIL, AUGMENTED)] == [10, 10, 10]


def test_test_features_are_the_classifier_inputs_of_the_test_images(restored):
    """All 20 test images (class 0 first, so in order): their pooled features give evaluate's logits."""
    experiment, state = restored
    features = collect_features(experiment, state, "test", max_points=2000)
    assert (features.count(HEAD), features.count(TAIL), features.count(AUGMENTED)) == (TEST_HEAD, TEST_TAIL, 0)
    data = experiment.data
    np.testing.assert_array_equal(features.labels, data.test_labels)
    params, stats = state.params["backbone"], state.batch_stats["backbone"]
    logits_from_features = experiment.backbone.merge(params, stats).classify(features.features)
    predict = evaluate.make_predict_fn(experiment.backbone, data.mean, data.std)
    np.testing.assert_allclose(logits_from_features, predict(params, stats, data.test_images), rtol=1e-4,
                               atol=1e-5)


def test_run_without_safa_has_no_augmented_group(single_device_mesh):
    experiment, state = build_experiment(tiny_config(), data=tiny_data(), mesh=single_device_mesh)
    features = collect_features(experiment, state, "train", max_points=2000)
    assert (features.count(HEAD), features.count(TAIL), features.count(AUGMENTED)) == (TRAIN_HEAD, TRAIN_TAIL, 0)


def test_accuracy_summary_is_the_saved_one_and_matches_a_fresh_evaluation(trained_run, restored, tmp_path):
    experiment, state = restored
    saved = json.loads((trained_run / "eval_results.json").read_text())
    assert run_accuracy_summary(trained_run, experiment, state) == saved
    # Results of another step are not used: the state is evaluated afresh.
    (tmp_path / "eval_results.json").write_text(json.dumps(dict(saved, step=1, top1_error=0.0)))
    fresh = run_accuracy_summary(tmp_path, experiment, state)
    assert fresh["step"] == saved["step"] == 4
    assert fresh["top1_error"] == pytest.approx(saved["top1_error"])
    assert fresh["per_class_accuracy"] == pytest.approx(saved["per_class_accuracy"])


def test_visualize_run_writes_three_nontrivial_pngs(trained_run, single_device_mesh):
    paths = visualize_run(trained_run, max_points=30, data=tiny_data(), mesh=single_device_mesh)
    assert set(paths) == {"tsne_train", "tsne_test", "per_class_accuracy"}
    for path in paths.values():
        assert path.parent == trained_run / "figures"
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert image.width >= 500 and image.height >= 400
            channel_ranges = image.convert("RGB").getextrema()
            assert any(low < high for low, high in channel_ranges), f"{path.name} is a blank image"


def test_per_class_plot_sorts_classes_by_count_and_marks_shot_boundaries(tmp_path):
    counts = [50, 500, 5, 100, 19, 150, 20]
    accuracy = [60.0, 90.0, None, 70.0, 10.0, 80.0, 30.0]
    figure = plot_per_class_accuracy(accuracy, counts, title="t", path=tmp_path / "acc.png")
    axes = figure.axes[0]
    heights = [patch.get_height() for patch in axes.patches]
    # Sorted by count: 500, 150 (many) | 100, 50, 20 (medium) | 19, 5 (few); the 5-image class has no bar.
    np.testing.assert_array_equal(heights, [90.0, 80.0, 70.0, 60.0, 30.0, 10.0, np.nan])
    boundaries = [line.get_xdata()[0] for line in axes.get_lines() if line.get_gid() == "shot-boundary"]
    assert boundaries == [1.5, 4.5]
    assert (tmp_path / "acc.png").stat().st_size > 0


def test_embedding_plot_draws_each_present_group_once(tmp_path):
    embedding = np.arange(10.0).reshape(5, 2)
    groups = np.array([HEAD, TAIL, HEAD, TAIL, TAIL])
    figure = plot_embedding(embedding, groups, title="t", path=tmp_path / "emb.png")
    axes = figure.axes[0]
    assert [text.get_text() for text in axes.get_legend().get_texts()] == [
        f"{GROUP_NAMES[HEAD]} (n=2)", f"{GROUP_NAMES[TAIL]} (n=3)"]
    np.testing.assert_array_equal(axes.collections[0].get_offsets(), embedding[[0, 2]])
    np.testing.assert_array_equal(axes.collections[1].get_offsets(), embedding[[1, 3, 4]])


def test_bad_inputs_name_the_value_and_what_is_allowed(restored, tmp_path):
    experiment, state = restored
    with pytest.raises(ValueError, match="split='val'.*allowed: train, test"):
        collect_features(experiment, state, "val", max_points=2000)
    with pytest.raises(ValueError, match="max_points=5.*at least 12"):
        collect_features(experiment, state, "train", max_points=5)
    with pytest.raises(ValueError, match=r"groups holds \[3\]"):
        plot_embedding(np.zeros((2, 2)), np.array([0, 3]), title="t", path=tmp_path / "x.png")
    with pytest.raises(FileNotFoundError, match="config.json"):
        visualize_run(tmp_path)
