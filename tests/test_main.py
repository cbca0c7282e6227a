"""The command line end to end (mock tfds data, an image-folder tree), and clear errors on bad input."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from safa_jax.checkpointing import CheckpointMismatchError
from safa_jax.experiment import build_experiment
from tests.helpers import tiny_config, tiny_data

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY_FLAGS = [
    "--config.model.width=4", "--config.model.blocks_per_stage=1", "--config.data.image_size=8",
    "--config.data.crop_padding=2", "--config.batch_size=8", "--config.eval_batch_size=7",
    "--config.num_train_steps=3", "--config.log_every_steps=1", "--config.checkpoint_every_steps=2",
    "--config.eval_every_epochs=0",
]


def run_cli(args, *, mock_tfds_examples=None):
    """Runs `python -m safa_jax.main ARGS` (under tfds mock data if asked) from the repository root."""
    if mock_tfds_examples is None:
        command = [sys.executable, "-m", "safa_jax.main", *args]
    else:
        script = (
            "import sys, tensorflow_datasets as tfds\n"
            "from absl import app\n"
            "from safa_jax import main\n"
            f"with tfds.testing.mock_data(num_examples={mock_tfds_examples}):\n"
            "    app.run(main.main, argv=['safa_jax.main'] + sys.argv[1:])\n")
        command = [sys.executable, "-c", script, *args]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def write_image_tree(root: pathlib.Path, counts: dict[str, int], test_per_class: int) -> None:
    rng = np.random.default_rng(0)
    for split, per_class in (("train", counts), ("test", {c: test_per_class for c in counts})):
        for name, n in per_class.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:04d}.png")


def test_cli_trains_and_evaluates_on_mock_tfds_cifar10(tmp_path):
    workdir = tmp_path / "run"
    result = run_cli(["--config=configs/cifar10_lt.py:2", f"--workdir={workdir}", *TINY_FLAGS,
                      "--config.loss.name=ldam", "--config.loss.train_rule=drw"], mock_tfds_examples=200)
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((workdir / "config.json").read_text())
    assert config["data"]["source"] == "tfds:cifar10" and config["model"]["head"] == "normed"
    split = json.loads((workdir / "split.json").read_text())
    assert len(split["class_counts"]) == 10 and sum(split["class_counts"]) == len(split["train_ids"])
    assert split["class_counts"][0] == 2 * split["class_counts"][-1] or split["class_counts"][-1] < 5
    results = json.loads((workdir / "eval_results.json").read_text())
    assert results["step"] == 3 and results["num_examples"] == 200
    assert results["top1_error"] == pytest.approx(100.0 - results["top1_accuracy"])
    assert list((workdir).glob("events.out.tfevents.*")), "TensorBoard event file"


def test_cli_image_folder_train_then_eval_from_checkpoint(tmp_path):
    data_root, workdir = tmp_path / "images", tmp_path / "run"
    write_image_tree(data_root, {"ant": 12, "bee": 8, "cat": 6}, test_per_class=5)
    args = ["--config=configs/cifar10_lt.py:2", f"--config.data.source=folder:{data_root}",
            f"--workdir={workdir}", *TINY_FLAGS]
    trained = run_cli(args)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "oneDNN custom operations" not in trained.stderr  # TensorFlow's start-up notice, filtered at import
    split = json.loads((workdir / "split.json").read_text())
    assert split["class_counts"] == [6, 4, 3]  # n_max = 6 (smallest class), rho = 2: 6, int(6/sqrt 2), 3
    train_results = json.loads((workdir / "eval_results.json").read_text())
    (workdir / "eval_results.json").unlink()
    evaluated = run_cli([*args, "--mode=eval"])
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    eval_results = json.loads((workdir / "eval_results.json").read_text())
    assert eval_results["step"] == 3 and eval_results["num_examples"] == 15
    assert eval_results["per_class_accuracy"] == train_results["per_class_accuracy"]
    assert "top-1 accuracy" in (workdir / "eval_results.txt").read_text()


def test_cli_reports_bad_input_in_one_line(tmp_path):
    result = run_cli(["--config=configs/cifar10_lt.py:0.5", f"--workdir={tmp_path}"])
    assert result.returncode != 0
    assert "safa_jax: error: data.imbalance_factor=0.5 is below 1" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("field, value, message", [
    ("data__source", "imagenet", "data.source"),
    ("data__source", "folder:/nonexistent/place", "/nonexistent/place"),
    ("model__name", "resnet33", "resnet33"),
    ("loss__name", "hinge", "hinge"),
    ("loss__train_rule", "sometimes", "sometimes"),
    ("data__imbalance_factor", 0.5, "0.5"),
    ("safa__stage", 0, "safa.stage=0"),
    ("safa__head_ratio", 1.5, "head_ratio"),
    ("safa__kernel_size", 5, "safa.kernel_size=5; allowed: 3, 1"),
])
def test_bad_config_values_are_named(field, value, message):
    config = tiny_config(**{field: value})
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        build_experiment(config)


def test_safa_stage_beyond_the_backbone_is_refused():
    config = tiny_config(method="safa", safa__stage=4)
    with pytest.raises(ValueError, match=r"safa\.stage=4 is not a placement in resnet32; allowed: 1\.\.3"):
        build_experiment(config, data=tiny_data())


def test_head_ratio_that_leaves_no_tail_class_is_refused():
    """head_ratio in (0, 1) is checked from the config; with one class, the single head class leaves no tail."""
    config = tiny_config(method="safa", safa__head_ratio=0.5)
    with pytest.raises(ValueError, match="head_ratio"):
        build_experiment(config, data=tiny_data(counts=(20,)))


def test_folder_without_images_and_undecodable_image(tmp_path):
    empty = tmp_path / "empty"
    (empty / "train" / "a").mkdir(parents=True)
    (empty / "test" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images"):
        build_experiment(tiny_config(data__source=f"folder:{empty}"))
    broken = tmp_path / "broken"
    write_image_tree(broken, {"a": 4, "b": 4}, test_per_class=2)
    (broken / "train" / "b" / "0001.png").write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="0001.png"):
        build_experiment(tiny_config(data__source=f"folder:{broken}", data__imbalance_factor=1.0))


def test_checkpoint_of_another_model_is_refused(tmp_path):
    from safa_jax.train import train_and_evaluate
    from safa_jax.evaluate import evaluate_checkpoint
    import jax
    from safa_jax import sharding
    mesh = sharding.make_mesh(jax.devices()[:1])
    data = tiny_data()
    train_and_evaluate(tiny_config(num_train_steps=2), tmp_path, mesh=mesh, data=data)
    with pytest.raises(CheckpointMismatchError, match="model"):
        evaluate_checkpoint(tiny_config(model__width=8), tmp_path, mesh=mesh, data=data)
    with pytest.raises(FileNotFoundError, match="step 99"):
        evaluate_checkpoint(tiny_config(), tmp_path, step=99, mesh=mesh, data=data)


# --- stops, locks, corrupt checkpoints and bad input (one line each) -----------------------------


def _restored_tiny_digits_run(workdir, **overrides):
    """(experiment, latest state) of a run trained by `run_cli` on configs/digits_lt.py with TINY_FLAGS (and
    `overrides`, dotted with "__"), rebuilt in this process."""
    from configs import digits_lt
    from safa_jax import checkpointing
    from safa_jax.experiment import restore_if_any
    config = digits_lt.get_config()
    flags = [flag[len("--config."):].split("=") for flag in TINY_FLAGS]
    for dotted, value in [*flags, *((k.replace("__", "."), v) for k, v in overrides.items())]:
        section, _, name = dotted.rpartition(".")
        node = config[section] if section else config
        node[name] = type(node[name])(value)
    experiment, state = build_experiment(config)
    return experiment, restore_if_any(experiment, checkpointing.Checkpoints(workdir), state)


def _last_line(result) -> str:
    return result.stderr.strip().splitlines()[-1]


def test_bad_command_lines_are_one_line_before_any_work(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    cases = [
        (["--config.foo=1"], "safa_jax: error: unknown config field --config.foo"),
        (["--config.safa.nope=1"], "safa_jax: error: unknown config field --config.safa.nope"),
        (["--config.safa.enabled=True"], "safa_jax: error: --config.safa.enabled is gone: write --config.method=safa"),
        (["--config.method=rsgx"], "unknown config.method='rsgx'; allowed: plain, safa"),
        (["--config=configs/nope.py"], "safa_jax: error: the config file configs/nope.py does not exist"),
        ([f"--workdir={afile}"], f"safa_jax: error: --workdir={afile} is a file, not a folder"),
        ([f"--workdir={tmp_path / 'none'}", "--mode=eval"], "does not exist: there is no run to evaluate"),
        (["--config.optim.decay_epochs=(10,40)", "--config.num_epochs=30"],
         "config.optim.decay_epochs=(10, 40) has (40,) at or past config.num_epochs=30"),
        (["--config.loss.train_rule=drw", "--config.loss.second_stage_epoch=60"],
         "config.loss.second_stage_epoch=60 is not before config.num_epochs=60"),
    ]
    for args, message in cases:
        result = run_cli([f"--workdir={tmp_path / 'run'}", *args])
        assert result.returncode != 0
        assert message in _last_line(result), (args, result.stderr[-2000:])
        assert "Traceback" not in result.stderr, args
    assert not (tmp_path / "none").exists()  # evaluation creates no folder


def test_nan_stop_names_the_checkpoint_on_disk(tmp_path):
    workdir = tmp_path / "run"
    result = run_cli(["--config=configs/digits_lt.py", f"--workdir={workdir}", *TINY_FLAGS,
                      "--config.num_train_steps=20", "--config.checkpoint_every_steps=1",
                      "--config.optim.learning_rate=1e6"])
    assert result.returncode != 0
    line = _last_line(result)
    assert "training stopped at step" in line and "Traceback" not in result.stderr
    kept = int(line.split("last good checkpoint (step ")[1].split(")")[0])
    assert (workdir / "checkpoints" / str(kept)).is_dir()
    assert not list((workdir / "checkpoints").glob("*tmp*"))


def test_sigterm_saves_the_current_step_and_the_run_resumes(tmp_path):
    """SIGTERM mid-run: a checkpoint at the step it stopped, one line, and the same command finishes the run
    with the result of an uninterrupted one."""
    import signal
    import time
    args = ["--config=configs/digits_lt.py", "--config.model.width=4", "--config.model.blocks_per_stage=1",
            "--config.data.image_size=8", "--config.log_every_steps=1"]
    straight = run_cli([*args, f"--workdir={tmp_path / 'straight'}"])
    assert straight.returncode == 0, straight.stderr[-2000:]
    workdir = tmp_path / "stopped"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    child = subprocess.Popen([sys.executable, "-m", "safa_jax.main", *args, f"--workdir={workdir}"], cwd=REPO,
                             env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (workdir / "epochs.csv").exists() and time.time() < deadline:
        time.sleep(0.2)
    child.send_signal(signal.SIGTERM)
    _, stderr = child.communicate(timeout=300)
    assert child.returncode != 0
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("safa_jax: stopped: SIGTERM at step ") and "Run the same command to resume" in line
    stopped_at = int(line.split("SIGTERM at step ")[1].split()[0])
    assert (workdir / "checkpoints" / str(stopped_at)).is_dir()
    resumed = run_cli([*args, f"--workdir={workdir}"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = json.loads((tmp_path / "straight" / "eval_results.json").read_text())
    b = json.loads((workdir / "eval_results.json").read_text())
    assert a["per_class_accuracy"] == b["per_class_accuracy"] and a["step"] == b["step"]


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    from safa_jax.run_lock import RunLock
    with RunLock(tmp_path):
        result = run_cli([f"--workdir={tmp_path}", "--config.num_train_steps=1"])
    assert result.returncode != 0
    assert f"is being trained by pid {os.getpid()} on host" in _last_line(result)
    with RunLock(tmp_path):  # released when its holder let go
        pass


def _corrupt_arrays(step_dir: pathlib.Path) -> None:
    """Flips ten bytes in the middle of the largest array file of a checkpoint."""
    biggest = max((p for p in (step_dir / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(biggest.read_bytes())
    middle = len(data) // 2
    for i in range(10):
        data[middle + i] ^= 0xFF
    biggest.write_bytes(bytes(data))


def test_a_corrupt_latest_checkpoint_is_an_error_for_eval_and_skipped_on_resume(tmp_path):
    config = tiny_config(num_train_steps=6, checkpoint_every_steps=3)
    data = tiny_data()
    from safa_jax import checkpointing, sharding
    from safa_jax.evaluate import evaluate_checkpoint
    from safa_jax.experiment import restore_if_any
    mesh = sharding.make_mesh(jax.devices()[:1])
    from safa_jax.train import train_and_evaluate
    train_and_evaluate(config, tmp_path, mesh=mesh, data=data)
    _corrupt_arrays(tmp_path / "checkpoints" / "6")
    with pytest.raises(checkpointing.CheckpointCorruptError, match="step 6"):
        evaluate_checkpoint(config, tmp_path, mesh=mesh, data=data)
    experiment, state = build_experiment(config, mesh=mesh, data=data)
    checkpoints = checkpointing.Checkpoints(tmp_path)
    restored = restore_if_any(experiment, checkpoints, state)
    assert int(restored.step) == 3  # the newest intact one
    _corrupt_arrays(tmp_path / "checkpoints" / "3")
    with pytest.raises(checkpointing.CheckpointCorruptError, match="no intact checkpoint in"):
        restore_if_any(experiment, checkpoints, state)
    checkpoints.close()


def test_eval_refuses_a_config_with_other_data(tmp_path):
    from safa_jax import sharding
    from safa_jax.evaluate import evaluate_checkpoint
    from safa_jax.train import train_and_evaluate
    mesh = sharding.make_mesh(jax.devices()[:1])
    data = tiny_data()
    trained = train_and_evaluate(tiny_config(num_train_steps=3), tmp_path, mesh=mesh, data=data)
    other = tiny_config(num_train_steps=3, data__imbalance_factor=2.0)
    with pytest.raises(ValueError, match="data.imbalance_factor: checkpoint 100.0, config 2.0"):
        evaluate_checkpoint(other, tmp_path, mesh=mesh, data=data)
    allowed = tiny_config(num_train_steps=3, data__imbalance_factor=2.0, eval__other_data=True)
    again = evaluate_checkpoint(allowed, tmp_path, mesh=mesh, data=data)
    assert again["train_class_counts"] == trained["train_class_counts"]


def test_balanced_softmax_trains_and_posthoc_logit_adjustment_evaluates(tmp_path):
    """Through the command line: a Balanced Softmax run, then a post-hoc logit-adjusted evaluation of it, whose
    accuracy equals argmax(logits - tau * log prior) computed here from the restored model."""
    workdir = tmp_path / "run"
    args = ["--config=configs/digits_lt.py", f"--workdir={workdir}", *TINY_FLAGS, "--config.loss.name=balanced_softmax"]
    trained = run_cli(args)
    assert trained.returncode == 0, trained.stderr[-3000:]
    adjusted = run_cli([*args, "--mode=eval", "--config.eval.posthoc=logit_adjust", "--config.eval.tau=2.0"])
    assert adjusted.returncode == 0, adjusted.stderr[-3000:]
    results = json.loads((workdir / "eval_results_logit_adjust_tau2.json").read_text())
    assert results["posthoc"] == "logit_adjust" and results["tau"] == 2.0
    assert (workdir / "eval_results.json").exists()  # the plain results are kept beside

    from safa_jax import evaluate
    from safa_jax.losses.base import log_class_prior
    experiment, state = _restored_tiny_digits_run(workdir, loss__name="balanced_softmax")
    predict = evaluate.make_predict_fn(experiment.backbone, experiment.data.mean, experiment.data.std)
    logits = np.asarray(predict(state.params["backbone"], state.batch_stats["backbone"], experiment.data.test_images))
    prior = log_class_prior(experiment.data.class_counts)
    hits = np.argmax(logits - 2.0 * prior, axis=-1) == experiment.data.test_labels
    assert results["top1_accuracy"] == pytest.approx(100.0 * hits.mean())
    bad = run_cli([*args, "--mode=eval", "--config.eval.posthoc=tau"])
    assert "unknown config.eval.posthoc='tau'; allowed: none, logit_adjust, tau_norm" in _last_line(bad)


def test_mixup_trains_and_evaluates_through_the_command_line(tmp_path):
    workdir = tmp_path / "run"
    args = ["--config=configs/digits_lt.py", f"--workdir={workdir}", *TINY_FLAGS, "--config.data.mixup_alpha=1.0"]
    trained = run_cli(args)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert json.loads((workdir / "config.json").read_text())["data"]["mixup_alpha"] == 1.0
    assert json.loads((workdir / "eval_results.json").read_text())["step"] == 3
    bad = run_cli([f"--workdir={tmp_path / 'bad'}", "--config.data.mixup_alpha=-0.5"])
    assert _last_line(bad).endswith("config.data.mixup_alpha=-0.5 must be a number >= 0 (0 = off; MiSLAS uses 1.0)")


def test_crt_from_a_finished_run_trains_and_evaluates_through_the_command_line(tmp_path):
    first = ["--config=configs/digits_lt.py", f"--workdir={tmp_path / 'first'}", *TINY_FLAGS]
    assert run_cli(first).returncode == 0
    crt = ["--config=configs/digits_lt.py", f"--workdir={tmp_path / 'crt'}", *TINY_FLAGS, "--config.method=crt",
           f"--config.init_from={tmp_path / 'first'}", "--config.loss.train_rule=resample",
           "--config.loss.sampling_weights=inverse_count"]
    trained = run_cli(crt)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "cRT: classifier re-trained on a frozen backbone" in trained.stdout + trained.stderr
    assert json.loads((tmp_path / "crt" / "eval_results.json").read_text())["step"] == 3


@pytest.mark.parametrize("flags, label", [
    (["--config.method=delta_encoder", "--config.safa.start_epoch=0"], "+ Delta-encoder"),
    (["--config.method=rsg", "--config.rsg.start_epoch=0"], "+ RSG"),
])
def test_generator_methods_train_and_evaluate_through_the_command_line(tmp_path, flags, label):
    workdir = tmp_path / "run"
    trained = run_cli(["--config=configs/digits_lt.py", f"--workdir={workdir}", *TINY_FLAGS, *flags])
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert label in trained.stdout + trained.stderr
    assert json.loads((workdir / "eval_results.json").read_text())["step"] == 3


def test_tau_normalisation_and_a_tau_search_evaluate_a_trained_run(tmp_path):
    """Through the command line: --config.eval.posthoc=tau_norm at tau 0.5, and a search over three taus whose
    entries equal single evaluations at those taus, with the best labelled as chosen on the test set."""
    workdir = tmp_path / "run"
    args = ["--config=configs/digits_lt.py", f"--workdir={workdir}", *TINY_FLAGS]
    assert run_cli(args).returncode == 0
    searched = run_cli([*args, "--mode=eval", "--config.eval.posthoc=tau_norm", "--config.eval.tau=0.5",
                        "--config.eval.tau_search=0,0.5,1"])
    assert searched.returncode == 0, searched.stderr[-3000:]
    single = json.loads((workdir / "eval_results_tau_norm_tau0.5.json").read_text())
    search = json.loads((workdir / "eval_results_tau_norm_search.json").read_text())
    assert [entry["tau"] for entry in search["taus"]] == [0.0, 0.5, 1.0]
    assert search["taus"][1]["top1_accuracy"] == single["top1_accuracy"]
    best = max(search["taus"], key=lambda entry: entry["top1_accuracy"])
    assert (search["best_tau"], search["best_top1_accuracy"]) == (best["tau"], best["top1_accuracy"])
    assert search["selection"] == "best tau chosen on the test set"

    from safa_jax import evaluate
    from safa_jax.models.heads import tau_normalized_linear
    experiment, state = _restored_tiny_digits_run(workdir)
    params = dict(state.params["backbone"], head=tau_normalized_linear(state.params["backbone"]["head"], 1.0))
    predict = evaluate.make_predict_fn(experiment.backbone, experiment.data.mean, experiment.data.std)
    logits = np.asarray(predict(params, state.batch_stats["backbone"], experiment.data.test_images))
    hits = np.argmax(logits, axis=-1) == experiment.data.test_labels
    assert search["taus"][2]["top1_accuracy"] == pytest.approx(100.0 * hits.mean())

    for flags, message in [
        (["--config.eval.posthoc=tau_norm", "--config.loss.name=ldam"],
         "config.eval.posthoc='tau_norm' needs a linear head; this run's is 'normed'"),
        (["--config.eval.posthoc=tau_norm", "--config.eval.tau_search=0,x"],
         "config.eval.tau_search='0,x' is not a comma-separated list of numbers"),
        (["--config.eval.tau_search=0,1"], "config.eval.tau_search='0,1' needs config.eval.posthoc"),
    ]:
        assert message in _last_line(run_cli([*args, "--mode=eval", *flags]))


def test_errors_known_from_the_config_come_before_the_model_is_built(tmp_path, monkeypatch):
    """safa.stage past the backbone, and a resume or evaluation into another width, fail before build_experiment."""
    from safa_jax import sharding
    from safa_jax.evaluate import evaluate_checkpoint
    from safa_jax.train import train_and_evaluate
    mesh = sharding.make_mesh(jax.devices()[:1])
    data = tiny_data()
    train_and_evaluate(tiny_config(num_train_steps=3), tmp_path, mesh=mesh, data=data)

    def never(*args, **kwargs):
        raise AssertionError("the model was built before the error was found")

    monkeypatch.setattr("safa_jax.train.build_experiment", never)
    monkeypatch.setattr("safa_jax.evaluate.build_experiment", never)
    with pytest.raises(ValueError, match="config.safa.stage=4 is not a placement in resnet32; allowed: 1..3"):
        train_and_evaluate(tiny_config(method="safa", safa__stage=4), tmp_path / "other", mesh=mesh, data=data)
    with pytest.raises(CheckpointMismatchError, match="model.width: checkpoint 4, config 8"):
        train_and_evaluate(tiny_config(num_train_steps=6, model__width=8), tmp_path, mesh=mesh, data=data)
    with pytest.raises(CheckpointMismatchError, match="model.width: checkpoint 4, config 8"):
        evaluate_checkpoint(tiny_config(model__width=8), tmp_path, mesh=mesh, data=data)
    with pytest.raises(FileNotFoundError, match="no checkpoint at step 99"):
        evaluate_checkpoint(tiny_config(), tmp_path, step=99, mesh=mesh, data=data)
