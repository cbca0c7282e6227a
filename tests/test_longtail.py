"""Long-tailed class counts and image selection against the published CIFAR-LT numbers (REFERENCE.md)."""

import numpy as np
import pytest

from safa_jax.data.longtail import longtail_class_counts, select_longtail, shot_buckets

# REFERENCE.md: training-set sizes of CIFAR-10-LT and CIFAR-100-LT, and n_min per rho.
CIFAR10_LT_SIZES = {200: 11_203, 100: 12_406, 50: 13_996, 20: 17_023, 10: 20_431}
CIFAR100_LT_SIZES = {200: 9_502, 100: 10_847, 50: 12_608, 20: 15_907, 10: 19_573}
CIFAR10_N_MIN = {10: 500, 20: 250, 50: 100, 100: 50, 200: 25}
CIFAR100_N_MIN = {10: 50, 20: 25, 50: 10, 100: 5, 200: 2}
CIFAR10_LT_RHO100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


@pytest.mark.parametrize("rho", [10, 20, 50, 100, 200])
def test_cifar10_lt_sizes_match_reference(rho):
    counts = longtail_class_counts(5000, 10, rho)
    assert counts.sum() == CIFAR10_LT_SIZES[rho]
    assert (counts[0], counts[-1]) == (5000, CIFAR10_N_MIN[rho])


@pytest.mark.parametrize("rho", [10, 20, 50, 100, 200])
def test_cifar100_lt_sizes_match_reference(rho):
    counts = longtail_class_counts(500, 100, rho)
    assert counts.sum() == CIFAR100_LT_SIZES[rho]
    assert (counts[0], counts[-1]) == (500, CIFAR100_N_MIN[rho])


def test_cifar10_lt_rho100_per_class_counts():
    assert longtail_class_counts(5000, 10, 100).tolist() == CIFAR10_LT_RHO100


def test_rho_below_one_is_rejected_with_its_value():
    with pytest.raises(ValueError, match="imbalance_factor=0.5"):
        longtail_class_counts(5000, 10, 0.5)


def test_rho_that_empties_the_last_class_is_rejected():
    with pytest.raises(ValueError, match="0 of n_max=500"):
        longtail_class_counts(500, 100, 1000)


def cifar_like_labels(num_classes: int, per_class: int) -> np.ndarray:
    """Labels interleaved in a fixed random order, like CIFAR's training split."""
    return np.random.default_rng(123).permutation(np.repeat(np.arange(num_classes), per_class))


def ldam_drw_reference(labels: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """IMBALANCECIFAR10.gen_imbalanced_data of the LDAM-DRW code, with its legacy global seeding."""
    np.random.seed(0)
    kept = []
    for the_class, the_img_num in zip(np.unique(labels), counts):
        idx = np.where(labels == the_class)[0]
        np.random.shuffle(idx)
        kept.append(idx[:the_img_num])
    return np.concatenate(kept)


def test_ldam_selection_equals_the_ldam_drw_code():
    labels = cifar_like_labels(10, 500)
    counts = longtail_class_counts(500, 10, 100)
    expected = ldam_drw_reference(labels, counts)
    np.testing.assert_array_equal(select_longtail(labels, counts, "ldam", seed=0), expected)


def test_ldam_selection_leaves_the_global_numpy_rng_alone():
    np.random.seed(7)
    expected_next = np.random.random()
    np.random.seed(7)
    select_longtail(cifar_like_labels(3, 10), np.array([10, 5, 2]), "ldam", seed=0)
    assert np.random.random() == expected_next


def test_first_selection_keeps_the_first_images_of_each_class_in_order():
    labels = np.array([1, 0, 1, 0, 1, 0, 0])
    assert select_longtail(labels, np.array([3, 2]), "first", seed=0).tolist() == [1, 3, 5, 0, 2]


def test_random_selection_is_seeded_distinct_and_per_class():
    labels = cifar_like_labels(4, 50)
    counts = np.array([50, 20, 8, 3])
    chosen = select_longtail(labels, counts, "random", seed=5)
    np.testing.assert_array_equal(chosen, select_longtail(labels, counts, "random", seed=5))
    assert not np.array_equal(chosen, select_longtail(labels, counts, "random", seed=6))
    assert len(np.unique(chosen)) == counts.sum()
    np.testing.assert_array_equal(labels[chosen], np.repeat(np.arange(4), counts))


def test_unknown_selection_is_rejected():
    with pytest.raises(ValueError, match="'lda'.*ldam, first, random"):
        select_longtail(np.array([0, 1]), np.array([1, 1]), "lda", seed=0)


def test_asking_more_images_than_a_class_has_is_rejected():
    with pytest.raises(ValueError, match="class 1 has 2 images but 3"):
        select_longtail(np.array([0, 0, 0, 1, 1]), np.array([3, 3]), "first", seed=0)


def test_shot_buckets_use_the_100_and_20_thresholds():
    buckets = shot_buckets(np.array([500, 101, 100, 20, 19, 1]))
    assert buckets["many"].tolist() == [True, True, False, False, False, False]
    assert buckets["medium"].tolist() == [False, False, True, True, False, False]
    assert buckets["few"].tolist() == [False, False, False, False, True, True]


def test_an_already_long_tailed_source_is_warned_about_before_subsampling(caplog):
    import ml_collections
    from safa_jax.data.longtail import training_subset
    config = ml_collections.ConfigDict({"source": "folder:mine", "subsample": True, "imbalance_factor": 1.0,
                                        "selection": "first", "selection_seed": 0})
    labels = np.repeat([0, 1, 2], [300, 100, 30])  # 10x between the largest and the smallest class
    with caplog.at_level("WARNING"):
        ids = training_subset(labels, ("a", "b", "c"), config)
    assert len(ids) == 90  # rho=1 from the smallest class: 30 of each
    assert ("data.source='folder:mine' is already long-tailed (30 to 300 training images per class); subsampling "
            "it to data.imbalance_factor=1 from the smallest class keeps 90 of its 430 images. "
            "data.subsample=False trains on it as it is.") in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        training_subset(np.repeat([0, 1, 2], [100, 90, 60]), ("a", "b", "c"), config)  # within 2x: no warning
    assert caplog.text == ""
