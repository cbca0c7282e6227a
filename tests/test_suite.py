"""Suites (python -m safa_jax.suite): run, skip, resume, list, report and export; the per-epoch records."""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from safa_jax import epoch_log, provenance, suite_figure, suite_report
from safa_jax.suite import check_same_run, record_run
from safa_jax.suite_spec import RUN_SPEC_FILE, Run, check_data, check_runs, data_source, load_suite, select_runs

REPO = pathlib.Path(__file__).resolve().parents[1]


def run_suite_cli(*args):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "safa_jax.suite", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)


def write_run(folder: pathlib.Path, errors, *, done: bool, final_error: float | None = None):
    """A run folder as training leaves it: config, split, epochs.csv (test error where given), provenance."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"num_epochs": len(errors) + 1}))
    (folder / "split.json").write_text(json.dumps({"num_train": 1000}))
    for epoch, (error, rate) in enumerate(zip(errors, [100.0, 200.0, 300.0, 400.0])):
        test = None if error is None else {"top1_error": error, "many_shot_accuracy": 90.0,
                                            "medium_shot_accuracy": None, "few_shot_accuracy": 10.0}
        epoch_log.append_epoch(folder, epoch_log.epoch_row(
            epoch=epoch, step=10 * (epoch + 1), train_seconds=1000 / rate, images=1000,
            train_means={"loss": 1.0 / (epoch + 1)}, test=test, eval_seconds=2.0))
    with open(folder / provenance.PROVENANCE_FILE, "w") as out:
        out.write(json.dumps({"commit": "a" * 40, "dirty": False, "start_step": 0, "cpu": "cpu X"}) + "\n")
        out.write(json.dumps({"commit": "b" * 40, "dirty": True, "start_step": 20, "cpu": "cpu X"}) + "\n")
    if done:
        (folder / "eval_results.json").write_text(json.dumps({
            "top1_error": final_error, "many_shot_accuracy": 91.0, "medium_shot_accuracy": 50.5,
            "few_shot_accuracy": 12.25}))
        epoch_log.mark_done(folder, 40)


def test_epoch_rows_keep_the_last_row_of_each_epoch_and_refuse_other_columns(tmp_path):
    row = lambda epoch, loss: epoch_log.epoch_row(  # noqa: E731
        epoch=epoch, step=epoch + 1, train_seconds=2.0, images=10, train_means={"loss": loss}, test=None,
        eval_seconds=0.0)
    for epoch, loss in ((0, 3.0), (1, 2.0), (1, 1.5)):  # epoch 1 written twice: a resume repeated it.
        epoch_log.append_epoch(tmp_path, row(epoch, loss))
    rows = epoch_log.read_epochs(tmp_path)
    assert [(r["epoch"], r["loss"], r["train_images_per_sec"]) for r in rows] == [(0, 3.0, 5.0), (1, 1.5, 5.0)]
    assert rows[0]["test_top1_error"] is None
    other = dict(row(2, 1.0), extra=1.0)
    with pytest.raises(ValueError, match="another config"):
        epoch_log.append_epoch(tmp_path, other)


def test_report_of_hand_made_runs(tmp_path):
    write_run(tmp_path / "a", [30.0, None, 25.0, 27.0], done=True, final_error=26.5)
    write_run(tmp_path / "b", [40.0, None], done=False)
    runs = [Run("a", "configs/digits_lt.py", paper=22.47, paper_source="table"), Run("b", "configs/digits_lt.py"),
            Run("c", "configs/digits_lt.py")]
    (tmp_path / suite_report.NOTES_FILE).write_text("What the runs showed.\n")
    results = suite_report.write_report("demo", runs, tmp_path, tmp_path / "out.md")
    a, b, c = results
    assert a["finished"] and a["top1_error"] == 26.5 and a["best_test_top1_error"] == 25.0 and a["best_epoch"] == 2
    assert a["num_evaluations"] == 3 and a["images_per_sec"] == 250.0  # median of 100, 200, 300, 400
    assert a["train_hours"] == pytest.approx((10 + 5 + 1000 / 300 + 2.5) / 3600, rel=1e-4)  # seconds kept to 1 ms
    assert a["eval_hours"] == pytest.approx(6.0 / 3600)  # three evaluations of 2 s
    assert [t["start_step"] for t in a["trained_by"]] == [0, 20]
    assert not b["finished"] and b["latest_test_top1_error"] == 40.0 and b["epochs_done"] == 2
    assert c["epochs_done"] == 0 and c["top1_error"] is None
    table = (tmp_path / "out.md").read_text()
    assert "| a | 22.47 | **26.50** | 25.00, 2 | 91.00 | 50.50 | 12.25 | 4/5 |" in table
    assert "Paper numbers (top-1 error %): table: a." in table
    assert "aaaaaaa @ 0, bbbbbbb+ @ 20" in table
    assert "| b |  | (running; latest 40.00) |" in table and "| c |  | (not run) |" in table
    assert table.splitlines()[1] == "# Results: suite `demo`"
    assert table.endswith("What the runs showed.\n<!-- end of suite demo -->\n")
    assert "--root=results/demo --report --output=docs/results.md" in table
    assert json.loads((tmp_path / suite_report.RESULTS_JSON).read_text())["suite"] == "demo"
    listing = suite_report.listing(runs, tmp_path)
    assert "finished" in listing and "2/3 epochs" in listing
    # b: 1 epoch of 1000 images left at its median 150 images/s; c has no like run with a measured speed.
    assert "0:00:07" in listing


def test_provenance_names_the_cpu_with_its_widest_vector_extension():
    """One model name ("AMD EPYC") covers machines with and without AVX-512, which train at different speeds."""
    def cpuinfo(flags):
        return "\n".join(f"processor\t: {i}\nmodel name\t: AMD EPYC\nflags\t\t: {flags}\n" for i in range(2))
    assert provenance.cpu_model(cpuinfo("fpu sse2 avx avx2 avx512f avx512bw")) == "AMD EPYC, AVX-512"
    assert provenance.cpu_model(cpuinfo("fpu sse2 avx avx2 fma")) == "AMD EPYC, AVX2"
    assert provenance.cpu_model(cpuinfo("fpu sse2")) == "AMD EPYC"
    assert provenance.cpu_model("") != ""  # no cpuinfo: the platform's processor string or "unknown"


def test_suite_selection_and_data_checks(tmp_path):
    runs = load_suite("cifar10_lt_table4", "")
    names = [run.name for run in runs]
    assert names[:4] == ["ldam_drw_rho200", "ldam_drw_safa_s2_rho200", "ce_rho200", "ce_safa_s2_rho200"]
    assert runs[1].paper == 22.47 and runs[3].paper == 25.11 and runs[0].paper is None
    against = {run.name: run.compare_to for run in runs}  # each run beside the SAFA run of its loss and rho
    assert against["ldam_drw_rho200"] == "ldam_drw_safa_s2_rho200" and against["ce_rho50"] == "ce_safa_s2_rho50"
    assert against["ldam_drw_safa_s3_rho50"] == "ldam_drw_safa_s2_rho50" and against["ce_rho100"] == ""
    best = runs[4].build_config()  # the proxy study's CE-SAFA setting, beside the default CE-SAFA
    assert against[runs[4].name] == "ce_safa_s2_rho200" and best.safa.tail_sampling == "inverse_frequency"
    assert best.loss.name == "ce" and best.method == "safa"
    assert runs[3].build_config().safa.tail_sampling == "batch_samples"
    assert {run.compare_to for run in load_suite("cifar10_lt_methods", "")} == {"", "ldam_drw_safa_seed0", "ce_seed1"}
    assert runs[1].flags()[:1] == ["--config=configs/cifar10_lt.py:200"]
    config = runs[1].build_config()
    assert config.method == "safa" and config.loss.name == "ldam" and config.data.imbalance_factor == 200.0
    with pytest.raises(ValueError, match="give it as --data=PATH/cifar10"):
        check_data(runs)
    with pytest.raises(ValueError, match="no train/ and test/ folders"):
        check_data(load_suite("cifar10_lt_table4", str(tmp_path)))
    assert data_source(str(REPO / "configs"), ) == "folder:configs"
    with pytest.raises(ValueError, match="--only names runs not in the suite: nope; allowed: ldam_drw_rho200"):
        select_runs(runs, "nope")
    with pytest.raises(ValueError, match="unknown suite 'nope'; allowed: .*cifar10_lt_table4"):
        load_suite("nope", "")


def test_smoke_suite_runs_skips_resumes_reports_and_exports(tmp_path):
    root = tmp_path / "runs"
    first = run_suite_cli("--suite=smoke", f"--root={root}")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "suite: all 2 runs finished" in first.stdout
    rows = epoch_log.read_epochs(root / "ce")
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert all(r["test_top1_error"] is not None for r in rows)  # eval_every_epochs=1 in the smoke suite.
    assert {"safa/e_copy_distance", "safa/q_same_class_pairs"} <= set(epoch_log.read_epochs(root / "ce_safa")[0])
    final = json.loads((root / "ce" / "eval_results.json").read_text())
    assert final["top1_error"] == pytest.approx(rows[-1]["test_top1_error"])
    assert len(provenance.read_provenance(root / "ce")) == 1
    assert "1/2 ce: post-hoc logit_adjust at tau=0" in first.stdout
    unadjusted = json.loads((root / "ce" / "eval_results_logit_adjust_tau0.json").read_text())
    adjusted = json.loads((root / "ce" / "eval_results_logit_adjust_tau1.json").read_text())
    assert unadjusted["top1_error"] == final["top1_error"]  # tau 0 subtracts nothing
    assert unadjusted["per_class_accuracy"] == final["per_class_accuracy"]
    assert (adjusted["posthoc"], adjusted["tau"]) == ("logit_adjust", 1.0)

    again = run_suite_cli("--suite=smoke", f"--root={root}")
    assert "1/2 ce: finished, skipped" in again.stdout and "2/2 ce_safa: finished, skipped" in again.stdout
    assert "post-hoc" not in again.stdout  # done already

    (root / "ce" / epoch_log.TRAINING_DONE_FILE).unlink()  # as if stopped after its last checkpoint
    resumed = run_suite_cli("--suite=smoke", f"--root={root}", "--only=ce")
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert "ce: resuming (3 epochs done)" in resumed.stdout
    assert json.loads((root / "ce" / "eval_results.json").read_text())["top1_error"] == final["top1_error"]
    assert [p["start_step"] for p in provenance.read_provenance(root / "ce")] == [0, 102]

    listed = run_suite_cli("--suite=smoke", f"--root={root}", "--list")
    assert "finished" in listed.stdout and "total time left 0:00:00" in listed.stdout
    exported = run_suite_cli("--suite=smoke", f"--root={root}", f"--export={tmp_path / 'results'}")
    assert "exported 2 finished runs" in exported.stdout
    posthoc_files = [f"eval_results_logit_adjust_tau{tau}.{ext}" for tau in (0, 1) for ext in ("json", "txt")]
    assert RUN_SPEC_FILE in suite_report.SMALL_FILES
    assert sorted(p.name for p in (tmp_path / "results" / "ce").iterdir()) == sorted(
        [*suite_report.SMALL_FILES, *posthoc_files])
    report = run_suite_cli("--suite=smoke", f"--root={tmp_path / 'results'}", "--report",
                           f"--output={tmp_path / 'docs' / 'results.md'}")
    assert report.returncode == 0, report.stderr[-2000:]
    table = (tmp_path / "docs" / "results.md").read_text()
    assert f"| ce |  | **{final['top1_error']:.2f}** |" in table
    assert f"| ce | logit_adjust | 0 | **{final['top1_error']:.2f}** | +0.00 |" in table
    assert f"| ce | logit_adjust | 1 | **{adjusted['top1_error']:.2f}** |" in table

    record = json.loads((root / "ce" / RUN_SPEC_FILE).read_text())  # as if the suite's ce row had been edited
    record["overrides"]["batch_size"] = 32
    (root / "ce" / RUN_SPEC_FILE).write_text(json.dumps(record))
    edited = run_suite_cli("--suite=smoke", f"--root={root}")
    assert edited.returncode != 0 and "Traceback" not in edited.stderr
    assert edited.stderr.strip().splitlines()[-1] == (
        f"safa_jax.suite: error: {root / 'ce'} holds another run than the suite's 'ce' (batch_size: 32 there, 16 "
        f"here); give another --root, or remove {root / 'ce' / RUN_SPEC_FILE} to take that run as this one")


def test_suite_cli_errors_are_one_line():
    missing = run_suite_cli("--suite=cifar10_lt_table4", "--root=/tmp/never")
    assert missing.returncode != 0
    assert missing.stderr.strip().splitlines()[-1].startswith("safa_jax.suite: error: run 'ldam_drw_rho200' "
                                                              "trains on an image folder")
    unknown = run_suite_cli("--suite=nope", "--root=/tmp/never")
    assert "unknown suite 'nope'" in unknown.stderr and "Traceback" not in unknown.stderr


def test_every_suite_builds_configs_that_pass_the_checks_and_second_stages_point_into_the_root(tmp_path):
    from safa_jax.config_checks import validate_config
    from safa_jax.suite_spec import available_suites

    for name in available_suites():
        runs = load_suite(name, str(tmp_path))
        for run in runs:
            config = run.build_config()
            if config.init_from:  # a second stage: its first stage's folder exists once that run has trained
                (tmp_path / "ce_seed1" / "checkpoints").mkdir(parents=True, exist_ok=True)
                config.init_from = dict(f.split("=", 1) for f in run.flags(tmp_path)[1:])["--config.init_from"]
            validate_config(config)
    crt = {run.name: run for run in load_suite("cifar10_lt_methods", "")}["ce_crt_seed1"]
    assert f"--config.init_from={tmp_path.resolve() / 'ce_seed1'}" in crt.flags(tmp_path)
    names = [run.name for run in load_suite("cifar10_lt_methods", "")]
    assert names.index("ce_seed1") < names.index("ce_crt_seed1")
    with pytest.raises(ValueError, match="names a run folder; the suite's root is needed"):
        crt.flags()


def test_a_run_folder_is_one_run_and_suites_share_the_runs_they_name_alike(tmp_path):
    run = Run("a", "configs/digits_lt.py:10", {"seed": 0, "optim.decay_epochs": (2, 3)})
    check_same_run(run, tmp_path / "a")  # no folder yet: nothing to check
    record_run(run, tmp_path / "a")
    check_same_run(Run("a", "configs/digits_lt.py:10", {"optim.decay_epochs": [2, 3], "seed": 0}), tmp_path / "a")
    with pytest.raises(ValueError, match=r"holds another run than the suite's 'a' \(config: 'configs/digits_lt.py:10' "
                                         r"there, 'configs/digits_lt.py:20' here; seed: 0 there, \(unset\) here\)"):
        check_same_run(Run("a", "configs/digits_lt.py:20", {"optim.decay_epochs": (2, 3)}), tmp_path / "a")
    (tmp_path / "old").mkdir()  # a folder from before the record: adopted by the run that resumes it
    record_run(run, tmp_path / "old")
    assert json.loads((tmp_path / "old" / RUN_SPEC_FILE).read_text()) == run.spec()

    proxy = {r.name: r for r in load_suite("cifar10_lt_proxy", str(tmp_path))}
    methods = {r.name: r for r in load_suite("cifar10_lt_methods", str(tmp_path))}
    shared = sorted(proxy.keys() & methods.keys())
    assert shared == ["ce_seed0", "ce_seed1", "ldam_drw_safa_seed0", "ldam_drw_seed0"]
    assert all(proxy[name].spec() == methods[name].spec() for name in shared)


def test_reports_of_two_suites_share_one_page_each_in_its_own_section(tmp_path):
    write_run(tmp_path / "a", [30.0, 25.0], done=True, final_error=26.5)
    page = tmp_path / "results.md"
    page.write_text("# An older report with no sections\n")
    suite_report.write_report("one", [Run("a", "configs/digits_lt.py")], tmp_path, page)
    suite_report.write_report("two", [Run("b", "configs/digits_lt.py")], tmp_path, page)
    first = page.read_text()
    assert "older report" not in first and first.index("suite `one`") < first.index("suite `two`")
    assert "| a |  | **26.50** |" in first and "| b |  | (not run) |" in first

    (tmp_path / "a" / "eval_results.json").write_text(json.dumps({  # the run re-evaluated: only its section changes
        "top1_error": 20.0, "many_shot_accuracy": 91.0, "medium_shot_accuracy": 50.5, "few_shot_accuracy": 12.25}))
    suite_report.write_report("one", [Run("a", "configs/digits_lt.py")], tmp_path, page)
    second = page.read_text()
    assert second == first.replace("| a |  | **26.50** |", "| a |  | **20.00** |")
    assert second.count("<!-- suite one:") == 1 and second.count("<!-- end of suite two -->") == 1


def test_report_sets_runs_beside_the_run_they_are_compared_to(tmp_path):
    write_run(tmp_path / "safa", [30.0, 25.0], done=True, final_error=26.5)
    write_run(tmp_path / "ce", [40.0, 35.0], done=True, final_error=30.25)
    write_run(tmp_path / "running", [40.0], done=False)
    (tmp_path / "ce" / "eval_results_logit_adjust_tau1.json").write_text(json.dumps({
        "top1_error": 26.0, "many_shot_accuracy": 80.0, "medium_shot_accuracy": 60.0, "few_shot_accuracy": None}))
    runs = [Run("safa", "configs/digits_lt.py"),
            Run("ce", "configs/digits_lt.py", posthoc=(("logit_adjust", 1.0),), compare_to="safa"),
            Run("running", "configs/digits_lt.py", compare_to="safa")]
    check_runs("demo", runs)
    suite_report.write_report("demo", runs, tmp_path, tmp_path / "out.md")
    table = (tmp_path / "out.md").read_text()
    assert "| ce | 30.25 | safa | 26.50 | +3.75 |" in table
    assert "| ce + logit_adjust tau 1 | 26.00 | safa | 26.50 | -0.50 |" in table
    assert "| running |" not in table.split("Pairs:")[1]  # not finished: no pair yet
    assert "Lower final error than the run they are measured against: ce + logit_adjust tau 1." in table
    with pytest.raises(ValueError, match="suite 'demo' compares runs to runs it does not have: nope"):
        check_runs("demo", [Run("a", "configs/digits_lt.py", compare_to="nope")])
    with pytest.raises(ValueError, match="suite 'demo' names these runs more than once: a"):
        check_runs("demo", [Run("a", "configs/digits_lt.py"), Run("a", "configs/digits_lt.py")])
    check_runs("demo", [Run("a_seed0", "configs/digits_lt.py", {"seed": 0, "batch_size": 8}),
                        Run("a_seed1", "configs/digits_lt.py", {"batch_size": 8, "seed": 1})])
    with pytest.raises(ValueError, match=r"names runs a_seedN that differ in more than the seed \(a_seed1: "):
        check_runs("demo", [Run("a_seed0", "configs/digits_lt.py", {"seed": 0, "batch_size": 8}),
                            Run("a_seed1", "configs/digits_lt.py", {"seed": 1, "batch_size": 16})])


def test_report_draws_each_runs_test_error_over_epochs_and_final_accuracy_per_class(tmp_path):
    write_run(tmp_path / "a", [30.0, None, 25.0, 27.0], done=True, final_error=26.5)
    write_run(tmp_path / "b", [40.0, 35.0], done=False)
    results = json.loads((tmp_path / "a" / "eval_results.json").read_text())
    results.update(per_class_accuracy=[90.0, 10.0, 50.0], train_class_counts=[100, 5, 20],
                   class_names=["x", "y", "z"])
    (tmp_path / "a" / "eval_results.json").write_text(json.dumps(results))
    runs = [Run("a", "configs/digits_lt.py"), Run("b", "configs/digits_lt.py"), Run("c", "configs/digits_lt.py")]
    over_epochs, per_class = suite_figure.suite_figure("demo", runs, tmp_path).axes
    assert [(line.get_label(), list(line.get_xdata()), list(line.get_ydata())) for line in over_epochs.lines] == [
        ("a", [1, 3, 4], [30.0, 25.0, 27.0]), ("b", [1, 2], [40.0, 35.0])]  # epochs from 1; c has none
    [line] = per_class.lines  # only the finished run; classes from most to fewest training images
    assert list(line.get_ydata()) == [90.0, 50.0, 10.0]
    assert [tick.get_text() for tick in per_class.get_xticklabels()] == ["x\n100", "z\n20", "y\n5"]
    suite_report.write_report("demo", runs, tmp_path, tmp_path / "docs" / "out.md")
    assert (tmp_path / "docs" / "demo.png").read_bytes().startswith(b"\x89PNG")
    assert "![suite demo: test error over epochs, final accuracy per class](demo.png)" in (
        tmp_path / "docs" / "out.md").read_text()
    results.update(per_class_accuracy=[1.0] * 31, train_class_counts=list(range(31, 0, -1)), class_names=["n"] * 31)
    (tmp_path / "a" / "eval_results.json").write_text(json.dumps(results))  # too many classes to name: ranks
    per_class = suite_figure.suite_figure("demo", runs, tmp_path).axes[1]
    assert "n" not in {tick.get_text().split("\n")[0] for tick in per_class.get_xticklabels()}
    suite_report.write_report("empty", [Run("c", "configs/digits_lt.py")], tmp_path, tmp_path / "docs" / "out.md")
    assert not (tmp_path / "docs" / "empty.png").exists()
    assert "](empty.png)" not in (tmp_path / "docs" / "out.md").read_text()


def test_docs_results_is_the_report_of_the_committed_results():
    """docs/results.md is, section by section, what `--report --root=results/SUITE --output=docs/results.md` writes
    from the committed results: a hand edit, or a result or NOTES.md committed without regenerating, fails here."""
    page = (REPO / "docs" / "results.md").read_text()
    suites = re.findall(r"^<!-- suite (\S+): written by", page, re.M)
    assert suites
    for suite in suites:
        root = REPO / "results" / suite
        results = [suite_report.run_result(run, root / run.name) for run in load_suite(suite, "")]
        figure = f"{suite}.png"
        assert (REPO / "docs" / figure).exists(), f"docs/{figure} is missing"
        section = suite_report.markdown(suite, results, root, figure)
        assert suite_report.with_section(page, suite, section) == page, (
            f"docs/results.md's section of {suite} is stale: run `python -m safa_jax.suite --suite={suite} "
            f"--root=results/{suite} --report --output=docs/results.md`")


def test_report_gives_mean_and_range_over_seeds(tmp_path):
    for name, error in (("safa_seed0", 26.5), ("safa_seed1", 25.0), ("safa_seed2", 27.25), ("ce_seed0", 30.0)):
        write_run(tmp_path / name, [30.0, 25.0], done=True, final_error=error)
    write_run(tmp_path / "ce_seed1", [40.0], done=False)
    runs = [Run(name, "configs/digits_lt.py") for name in ("safa_seed0", "safa_seed1", "safa_seed2", "ce_seed0",
                                                            "ce_seed1")]
    suite_report.write_report("demo", runs, tmp_path, tmp_path / "out.md")
    table = (tmp_path / "out.md").read_text()
    assert "| safa | 0, 1, 2 | 26.25 | 25.00 - 27.25 | 26.50, 25.00, 27.25 |" in table  # (26.5 + 25 + 27.25) / 3
    assert "| ce |" not in table  # one finished seed: no row
