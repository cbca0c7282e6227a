"""Figures of a trained run: t-SNE of head / tail / SAFA-augmented tail features and per-class accuracy.

`python -m safa_jax.visualize --workdir=RUN [--checkpoint_step=N] [--max_points=2000]` restores a run's
checkpoint and writes into RUN/figures/:

- `tsne_train.png`: pooled features (the classifier's input) of real head- and tail-class training images
  and of SAFA-augmented tail features, as in Figures 1-4 of the SAFA supplementary;
- `tsne_test.png`: real head and tail features of the test set;
- `per_class_accuracy.png`: test accuracy per class against its training-set size, with the many / medium /
  few-shot boundaries (100 and 20 training images).

The backbone runs in eval mode (running BatchNorm statistics) for every group, so real and augmented
features lie in one feature space. SAFA's modules normalise with batch statistics over their valid slots,
as they did when they generated the features the classifier was trained on: training never uses their
running averages. Augmented features come from batches of un-augmented training images passed through
the backbone's lower part, `safa_augment`, then the upper part. A single-process tool.
"""

import dataclasses
import json
import logging
import math
import pathlib
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from matplotlib import ticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from configs import common
from safa_jax import checkpointing, evaluate, sharding
from safa_jax.data.device_pipeline import normalize, to_unit_float
from safa_jax.data.longtail import FEW_SHOT_BELOW, MANY_SHOT_ABOVE, shot_buckets
from safa_jax.data.sources import LongTailedData
from safa_jax.experiment import Experiment, build_experiment, restore_if_any
from safa_jax.methods import SafaMethod
from safa_jax.models.safa import head_class_mask, safa_augment
from safa_jax.state import TrainState

SPLITS = ("train", "test")
HEAD, TAIL, AUGMENTED = 0, 1, 2
GROUP_NAMES = ("head classes", "tail classes", "augmented tail (SAFA)")
GROUP_STYLES = (  # (colour, marker): distinct in colour and in shape, so the groups read in grey too.
    ("tab:blue", "o"),
    ("tab:orange", "^"),
    ("tab:green", "x"),
)
DEFAULT_MAX_POINTS = 2000
MIN_POINTS = 12  # Four points for each of up to three groups: fewer say nothing about a distribution.
MIN_TSNE_POINTS = 4  # The perplexity (n - 1) / 3 must be at least 1.
MAX_PERPLEXITY = 30.0  # scikit-learn's default, used whenever there are enough points.
# Batches drawn for augmented features, as a multiple of the batches that would suffice if every batch
# had valid slots; a batch with no head pair or no tail sample yields none.
AUGMENT_BATCH_ATTEMPTS = 4
FIGURE_DPI = 120


@dataclasses.dataclass(frozen=True)
class FeatureSet:
    """Pooled features of one split, with each point's class label and group (HEAD, TAIL or AUGMENTED)."""

    features: np.ndarray  # (N, C) float32
    labels: np.ndarray  # (N,) int
    groups: np.ndarray  # (N,) int, an index into GROUP_NAMES

    def count(self, group: int) -> int:
        return int(np.sum(self.groups == group))


def load_run_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
    """The resolved config a run recorded in config.json, with JSON's lists turned back into tuples, over the
    current defaults: a field added after the run was written takes its default, which keeps the old behaviour."""
    path = pathlib.Path(workdir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no config.json in {path.parent}: --workdir must be a run folder written by training.")
    merged = _merged(common.get_config().to_dict(), _lists_to_tuples(json.loads(path.read_text())))
    return ml_collections.ConfigDict(merged)


def _merged(defaults: dict[str, Any], recorded: dict[str, Any]) -> dict[str, Any]:
    out = dict(defaults)
    for key, value in recorded.items():
        out[key] = _merged(defaults[key], value) if isinstance(value, dict) and isinstance(defaults.get(key), dict) \
            else value
    return out


def _lists_to_tuples(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _lists_to_tuples(item) for key, item in value.items()}
    if isinstance(value, list):
        return tuple(_lists_to_tuples(item) for item in value)
    return value


def collect_features(experiment: Experiment, state: TrainState, split: str, *, max_points: int,
                     seed: int = 0) -> FeatureSet:
    """Pooled features of head, tail and (train split of a SAFA run only) augmented tail samples.

    `max_points` is shared equally among the groups; a group with fewer examples keeps them all. There are
    as many augmented points as real tail points, so neither dominates the embedding. Head classes are the
    SAFA definition (`config.safa.head_ratio` of the classes by training count), also for a run without SAFA.
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is unknown; allowed: {', '.join(SPLITS)}.")
    _check_max_points(max_points)
    config, data = experiment.config, experiment.data
    with_augmented = split == "train" and isinstance(experiment.method, SafaMethod)
    per_group = max_points // (3 if with_augmented else 2)
    images, labels = ((data.train_images, data.train_labels) if split == "train"
                      else (data.test_images, data.test_labels))
    is_head_sample = head_class_mask(data.class_counts, config.safa.head_ratio)[labels]
    rng = np.random.default_rng(seed)
    head_ids = _subsample(np.flatnonzero(is_head_sample), per_group, rng)
    tail_ids = _subsample(np.flatnonzero(~is_head_sample), per_group, rng)
    ids = np.concatenate([head_ids, tail_ids])
    features = [_pooled_features(experiment, state, images[ids])]
    point_labels = [labels[ids]]
    groups = [np.full(len(head_ids), HEAD), np.full(len(tail_ids), TAIL)]
    if with_augmented:
        augmented, augmented_labels = _augmented_features(experiment, state, len(tail_ids),
                                                          features[0].shape[1], rng, seed)
        features.append(augmented)
        point_labels.append(augmented_labels)
        groups.append(np.full(len(augmented_labels), AUGMENTED))
    return FeatureSet(features=np.concatenate(features).astype(np.float32),
                      labels=np.concatenate(point_labels).astype(np.int64),
                      groups=np.concatenate(groups))


def _check_max_points(max_points: int) -> None:
    if max_points < MIN_POINTS:
        raise ValueError(f"max_points={max_points} is too small; allowed: at least {MIN_POINTS} "
                         f"(four points for each of up to three groups).")


def _subsample(candidates: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    if len(candidates) <= limit:
        return candidates
    return np.sort(rng.choice(candidates, size=limit, replace=False))


def _pooled_features(experiment: Experiment, state: TrainState, images: np.ndarray) -> np.ndarray:
    """(N, C) pooled eval-mode features of uint8 images, in padded, batch-sharded chunks."""
    config, mesh = experiment.config, experiment.mesh
    stage = config.safa.stage
    mean, std = experiment.data.mean, experiment.data.std

    @jax.jit
    def pooled(params, batch_stats, batch):
        model = experiment.backbone.merge(params, batch_stats)
        x = normalize(to_unit_float(batch), mean, std)
        return model.upper(model.lower(x, stage, train=False), stage, train=False)

    batch_size = sharding.padded_batch_size(config.eval_batch_size, mesh)
    chunks = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        real = len(chunk)
        padded = np.concatenate([chunk, np.zeros((batch_size - real, *chunk.shape[1:]), chunk.dtype)])
        out = pooled(state.params["backbone"], state.batch_stats["backbone"],
                     jax.device_put(padded, sharding.batch_sharded(mesh)))
        chunks.append(np.asarray(out)[:real])
    return np.concatenate(chunks)


def _augmented_features(experiment: Experiment, state: TrainState, target: int, feature_dim: int,
                        rng: np.random.Generator, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`target` pooled augmented tail features and their labels, from training batches of config.batch_size."""
    config, mesh = experiment.config, experiment.mesh
    safa_config, stage = config.safa, config.safa.stage
    mean, std = experiment.data.mean, experiment.data.std
    is_head_class = np.asarray(experiment.method.is_head_class)

    @jax.jit
    def augment(params, batch_stats, batch, batch_labels, key):
        model = experiment.backbone.merge(params["backbone"], batch_stats["backbone"])
        name = experiment.method.name
        modules = experiment.method.bridge.merge(params[name], batch_stats[name])
        x = normalize(to_unit_float(batch), mean, std)
        out = safa_augment(modules, model.lower(x, stage, train=False), batch_labels, is_head_class, key,
                           num_slots=safa_config.num_slots, safa_config=safa_config, train=True,
                           class_counts=np.asarray(experiment.data.class_counts, np.float32),
                           delta_encoder=experiment.method.delta_encoder)
        return model.upper(out.features, stage, train=False), out.labels, out.weights > 0

    data = experiment.data
    key = jax.random.key(seed)
    batch_sharding = sharding.batch_sharded(mesh)
    max_batches = AUGMENT_BATCH_ATTEMPTS * math.ceil(target / safa_config.num_slots)
    features, labels = [], []
    collected = 0
    for index, batch_ids in enumerate(_training_batches(len(data.train_labels), config.batch_size, rng)):
        if collected >= target or index >= max_batches:
            break
        pooled, slot_labels, valid = augment(
            state.params, state.batch_stats, jax.device_put(data.train_images[batch_ids], batch_sharding),
            jax.device_put(data.train_labels[batch_ids], batch_sharding), jax.random.fold_in(key, index))
        valid = np.asarray(valid)
        features.append(np.asarray(pooled)[valid])
        labels.append(np.asarray(slot_labels)[valid])
        collected += int(valid.sum())
    if collected < target:
        logging.warning("Only %d of %d augmented features after %d training batches: too few batches had "
                        "valid SAFA slots (a batch needs a head-class pair and a tail sample).",
                        collected, target, max_batches)
    if not features:
        return np.zeros((0, feature_dim), np.float32), np.zeros((0,), np.int64)
    return np.concatenate(features)[:target], np.concatenate(labels)[:target]


def _training_batches(num_examples: int, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Batch indices of successive random epochs (without replacement, remainder dropped), as training draws."""
    while True:
        order = rng.permutation(num_examples)
        for start in range(0, num_examples - batch_size + 1, batch_size):
            yield order[start:start + batch_size]


def embed_tsne(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """(N, 2) t-SNE embedding; the perplexity drops below 30 for small N, as t-SNE needs it under N."""
    from sklearn.manifold import TSNE  # scikit-learn is slow to import and needed here only.

    num_points = len(features)
    if num_points < MIN_TSNE_POINTS:
        raise ValueError(f"t-SNE got {num_points} points; allowed: at least {MIN_TSNE_POINTS}.")
    perplexity = min(MAX_PERPLEXITY, (num_points - 1) / 3)
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    return tsne.fit_transform(np.asarray(features, np.float64))


def plot_embedding(embedding: np.ndarray, groups: np.ndarray, *, title: str,
                   path: str | pathlib.Path) -> Figure:
    """Scatter of a 2-D embedding, one colour and marker per group, legend with each group's size; saved as PNG."""
    embedding, groups = np.asarray(embedding), np.asarray(groups)
    if embedding.ndim != 2 or embedding.shape[1] != 2 or groups.shape != embedding.shape[:1]:
        raise ValueError(f"embedding must be (N, 2) and groups (N,); got {embedding.shape} and {groups.shape}.")
    unknown = np.setdiff1d(groups, np.arange(len(GROUP_NAMES)))
    if unknown.size:
        raise ValueError(f"groups holds {unknown.tolist()}; allowed: 0..{len(GROUP_NAMES) - 1} "
                         f"({', '.join(GROUP_NAMES)}).")
    figure = Figure(figsize=(7, 6))
    axes = figure.subplots()
    for group, (name, (colour, marker)) in enumerate(zip(GROUP_NAMES, GROUP_STYLES)):
        points = embedding[groups == group]
        if len(points):
            axes.scatter(points[:, 0], points[:, 1], s=12, c=colour, marker=marker, alpha=0.7, linewidths=0.8,
                         label=f"{name} (n={len(points)})")
    axes.legend(loc="best", markerscale=1.5)
    axes.set_title(title, fontsize=10)
    axes.set_xticks([])
    axes.set_yticks([])
    _save(figure, path)
    return figure


def plot_per_class_accuracy(per_class_accuracy: Sequence[float | None], train_class_counts: Sequence[int], *,
                            title: str, path: str | pathlib.Path,
                            class_names: Sequence[str] | None = None) -> Figure:
    """Bars of test accuracy per class, classes sorted by training count (drawn on a second, log axis).

    Dotted lines separate the many (> 100), medium (20-100) and few-shot (< 20) classes. A class with no
    test example (accuracy None) gets no bar.
    """
    counts = np.asarray(train_class_counts, np.int64)
    if len(per_class_accuracy) != len(counts) or counts.ndim != 1:
        raise ValueError(f"per_class_accuracy has {len(per_class_accuracy)} entries and train_class_counts "
                         f"shape {counts.shape}; allowed: one value of each per class.")
    if class_names is not None and len(class_names) != len(counts):
        raise ValueError(f"class_names has {len(class_names)} entries; allowed: one per class ({len(counts)}).")
    accuracy = np.array([np.nan if a is None else a for a in per_class_accuracy], np.float64)
    order = np.argsort(-counts, kind="stable")
    positions = np.arange(len(counts))
    figure = Figure(figsize=(max(7.0, min(16.0, 0.25 * len(counts))), 5))
    axes = figure.subplots()
    axes.bar(positions, accuracy[order], width=0.8, color="tab:blue", alpha=0.8, label="test accuracy")
    axes.set_ylim(0, 100)
    axes.set_ylabel("test accuracy (%)")
    axes.set_xlim(-0.5, len(counts) - 0.5)
    if class_names is not None and len(counts) <= 20:
        axes.set_xticks(positions, [class_names[i] for i in order], rotation=45, ha="right", fontsize=8)
    axes.set_xlabel("classes, sorted by training images")

    count_axes = axes.twinx()
    count_axes.plot(positions, counts[order], color="tab:red", marker=".", label="training images")
    count_axes.set_yscale("log")
    count_axes.yaxis.set_major_formatter(ticker.LogFormatter())  # 100, not 10^2: counts read as counts.
    count_axes.yaxis.set_minor_formatter(ticker.LogFormatter(labelOnlyBase=False))
    count_axes.set_ylabel("training images (log scale)")
    for threshold in (MANY_SHOT_ABOVE, FEW_SHOT_BELOW):
        count_axes.axhline(threshold, color="grey", linestyle="--", linewidth=0.8,
                           label=f"shot thresholds ({MANY_SHOT_ABOVE}, {FEW_SHOT_BELOW} images)"
                           if threshold == MANY_SHOT_ABOVE else None)

    buckets = shot_buckets(counts)
    sizes = [int(buckets[name].sum()) for name in ("many", "medium", "few")]
    edges = np.cumsum([0, *sizes])
    for boundary in edges[1:-1]:
        if 0 < boundary < len(counts):
            axes.axvline(boundary - 0.5, color="black", linestyle=":", linewidth=1.0, gid="shot-boundary")
    for name, start, stop in zip(("many", "medium", "few"), edges[:-1], edges[1:]):
        if stop > start:
            axes.text((start + stop - 1) / 2, 1.01, name, transform=axes.get_xaxis_transform(), ha="center",
                      va="bottom", fontsize=9)
    handles = axes.get_legend_handles_labels()[0] + count_axes.get_legend_handles_labels()[0]
    axes.legend(handles=handles, loc="lower left", fontsize=8)
    axes.set_title(title, fontsize=10, pad=16)
    _save(figure, path)
    return figure


def _save(figure: Figure, path: str | pathlib.Path) -> None:
    """Renders with Agg explicitly: no pyplot state, no display needed."""
    FigureCanvasAgg(figure)
    figure.tight_layout()
    figure.savefig(path, dpi=FIGURE_DPI)


def run_accuracy_summary(workdir: pathlib.Path, experiment: Experiment, state: TrainState) -> dict[str, Any]:
    """The run's eval_results.json if it was written for this state's step; otherwise a fresh evaluation."""
    path = workdir / "eval_results.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("step") == int(state.step):
            return saved
        logging.info("%s is for step %s, not the restored step %d: evaluating.", path, saved.get("step"),
                     int(state.step))
    predict = evaluate.make_predict_fn(experiment.backbone, experiment.data.mean, experiment.data.std)
    return evaluate.evaluate_state(experiment, state, predict)


def visualize_run(workdir: str | pathlib.Path, *, checkpoint_step: int | None = None,
                  max_points: int = DEFAULT_MAX_POINTS, data: LongTailedData | None = None,
                  mesh: jax.sharding.Mesh | None = None, seed: int = 0) -> dict[str, pathlib.Path]:
    """Writes the three figures of a run folder into RUN/figures and returns their paths by name.

    `data` and `mesh` default to the run config's data source and all devices; tests pass small ones.
    """
    _check_max_points(max_points)
    workdir = pathlib.Path(workdir)
    config = load_run_config(workdir)
    checkpoints = checkpointing.Checkpoints(workdir, keep=config.keep_checkpoints)
    try:
        step = checkpoints.latest_step() if checkpoint_step is None else checkpoint_step
        if step is None:
            raise FileNotFoundError(f"no checkpoint to visualise in {checkpoints.directory}")
        experiment, state = build_experiment(config, data=data, mesh=mesh)
        state = restore_if_any(experiment, checkpoints, state, step)
    finally:
        checkpoints.close()
    summary = run_accuracy_summary(workdir, experiment, state)
    heading = f"{workdir.name}, step {int(state.step)}: top-1 error {summary['top1_error']:.2f}%"
    figures = workdir / "figures"
    figures.mkdir(exist_ok=True)
    paths = {}
    for split in SPLITS:
        features = collect_features(experiment, state, split, max_points=max_points, seed=seed)
        title = f"{heading}\nt-SNE of pooled {split} features"
        if split == "train" and not isinstance(experiment.method, SafaMethod):
            title += " (trained without SAFA: no augmented tail features)"
        paths[f"tsne_{split}"] = figures / f"tsne_{split}.png"
        plot_embedding(embed_tsne(features.features, seed), features.groups, title=title,
                       path=paths[f"tsne_{split}"])
        logging.info("Wrote %s (%s)", paths[f"tsne_{split}"], ", ".join(
            f"{features.count(group)} {name}" for group, name in enumerate(GROUP_NAMES)))
    paths["per_class_accuracy"] = figures / "per_class_accuracy.png"
    plot_per_class_accuracy(summary["per_class_accuracy"], summary["train_class_counts"],
                            title=f"{heading}\nper-class test accuracy", path=paths["per_class_accuracy"],
                            class_names=experiment.data.class_names)
    logging.info("Wrote %s", paths["per_class_accuracy"])
    return paths


def main() -> None:
    """The command line; its flags are defined here, not at import, so importing this module defines none."""
    from absl import app, flags

    workdir = flags.DEFINE_string("workdir", None, "Run folder written by training (config.json, checkpoints/).",
                                  required=True)
    step = flags.DEFINE_integer("checkpoint_step", None, "Checkpoint step to visualise (default latest).")
    max_points = flags.DEFINE_integer("max_points", DEFAULT_MAX_POINTS,
                                      "Points per t-SNE, shared equally among its groups.")

    def run(argv: list[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        try:
            paths = visualize_run(workdir.value, checkpoint_step=step.value, max_points=max_points.value)
        except (ValueError, FileNotFoundError) as error:
            # Bad input (run folder, checkpoint step, flag value) is one clear line, not a traceback.
            logging.error("%s", error)
            sys.exit(f"safa_jax.visualize: error: {error}")
        print("Wrote " + ", ".join(str(path) for path in paths.values()))

    app.run(run)


if __name__ == "__main__":
    main()
