"""What a suite is: a named list of runs (config file + argument + overrides), defined in configs/suites/NAME.py.

A suite file defines `get_suite(data: str) -> list[Run]`; `data` is the `--data` folder the user gave (or ""),
so nothing in the repository names a path outside it. Runs are plain data: the suite runner turns each into
one `python -m safa_jax.main` command, so a suite run trains exactly as that command would.
"""

import dataclasses
import importlib
import json
import os
import pathlib
import re
from typing import Any

import ml_collections

REPOSITORY = pathlib.Path(__file__).resolve().parents[1]
SUITES_DIR = REPOSITORY / "configs" / "suites"
FOLDER_PREFIX = "folder:"
RUN_SPEC_FILE = "suite_run.json"  # in each run folder: the run a suite started there (`Run.spec`).


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run of a suite.

    name: its folder under the suite root. config: `configs/FILE.py[:ARG]`, relative to the repository.
    overrides: config fields as `{"loss.name": "ldam"}`. paper: the published top-1 error (%) this run
    reproduces, with `paper_source` naming the table; None where the paper has no number. posthoc: the
    post-hoc adjustments to evaluate the finished run with, as (`config.eval.posthoc`, `config.eval.tau`)
    pairs, e.g. `("logit_adjust", 1.0)`: no retraining, one `--mode=eval` each. compare_to: the name of the
    suite's run this one is measured against (SAFA beside its baseline, a rival beside SAFA); the report puts
    their final errors side by side.
    """

    name: str
    config: str
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    paper: float | None = None
    paper_source: str = ""
    posthoc: tuple[tuple[str, float], ...] = ()
    compare_to: str = ""

    def flags(self, root: pathlib.Path | None = None) -> list[str]:
        """The run's `--config...` flags of `python -m safa_jax.main`; `run_folder` values point into `root`."""
        values = {k: _in_root(v, root) for k, v in self.overrides.items()}
        return [f"--config={self.config}"] + [f"--config.{k}={_flag_value(v)}" for k, v in values.items()]

    def spec(self) -> dict[str, Any]:
        """What makes two runs the same run: config file and overrides (as JSON keeps them), not the name's
        suite, the paper's number or the post-hoc list. Two suites that name the same run alike share its
        folder under one root, and it trains once."""
        return json.loads(json.dumps({"config": self.config, "overrides": dict(sorted(self.overrides.items()))}))

    def build_config(self) -> ml_collections.ConfigDict:
        """The run's config as `python -m safa_jax.main` would build it (no JAX needed): for listings."""
        path, _, arg = self.config.partition(":")
        module = importlib.import_module(".".join(pathlib.Path(path).with_suffix("").parts))
        return with_overrides(module.get_config(arg or None), self.overrides)


def with_overrides(config: ml_collections.ConfigDict, overrides: dict[str, Any]) -> ml_collections.ConfigDict:
    """`config` with dotted overrides set in place, as `--config.a.b=value` flags would (JSON's lists as tuples)."""
    for dotted, value in overrides.items():
        node = config
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = tuple(value) if isinstance(value, list) else value
    return config


_ROOT_PLACEHOLDER = "{root}"


def run_folder(name: str) -> str:
    """An override value naming another run of the same suite (e.g. `init_from` of a second stage), resolved
    against the suite's `--root` when the run starts; the suite runs the named run first if it comes first."""
    return f"{_ROOT_PLACEHOLDER}/{name}"


def _in_root(value: Any, root: pathlib.Path | None) -> Any:
    if isinstance(value, str) and value.startswith(_ROOT_PLACEHOLDER + "/"):
        if root is None:
            raise ValueError(f"the override {value!r} names a run folder; the suite's root is needed to resolve it")
        return str(pathlib.Path(root).resolve() / value[len(_ROOT_PLACEHOLDER) + 1:])
    return value


def _flag_value(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return "(" + ",".join(str(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return str(value)


def available_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.py") if not p.stem.startswith("_"))


def load_suite(name: str, data: str) -> list[Run]:
    """The runs of suite `name`; an unknown name or a suite with repeated run names is one clear error."""
    if name not in available_suites():
        raise ValueError(f"unknown suite {name!r}; allowed: {', '.join(available_suites())} "
                         f"(files in {SUITES_DIR.relative_to(REPOSITORY)})")
    runs = importlib.import_module(f"configs.suites.{name}").get_suite(data)
    check_runs(name, runs)
    return runs


SEED_SUFFIX = re.compile(r"^(?P<stem>.+)_seed(?P<seed>\d+)$")  # STEM_seedN: one setting, several seeds


def check_runs(name: str, runs: list[Run]) -> None:
    """One clear error for a suite that names a run twice, compares a run to one it does not have, or names runs
    STEM_seedN alike that differ in more than the seed (the report averages those over seeds)."""
    names = [run.name for run in runs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"suite {name!r} names these runs more than once: {', '.join(repeated)}")
    unknown = sorted({run.compare_to for run in runs if run.compare_to and run.compare_to not in names})
    if unknown:
        raise ValueError(f"suite {name!r} compares runs to runs it does not have: {', '.join(unknown)}")
    settings: dict[str, dict[str, Any]] = {}
    for run in runs:
        match = SEED_SUFFIX.match(run.name)
        if match:
            spec = run.spec()
            spec["overrides"].pop("seed", None)
            first = settings.setdefault(match["stem"], spec)
            if spec != first:
                raise ValueError(f"suite {name!r} names runs {match['stem']}_seedN that differ in more than the seed "
                                 f"({run.name}: {spec} against {first})")


def select_runs(runs: list[Run], only: str) -> list[Run]:
    """The runs named in `only` (comma-separated; "" = all), in the suite's order."""
    if not only:
        return runs
    wanted = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in {run.name for run in runs}]
    if unknown:
        raise ValueError(f"--only names runs not in the suite: {', '.join(unknown)}; "
                         f"allowed: {', '.join(run.name for run in runs)}")
    return [run for run in runs if run.name in wanted]


def data_source(data: str) -> str:
    """`folder:DATA` for a suite that trains on a user's image folder, the path relative to the repository (the
    runs train from there); "folder:" where no folder was given (`check_data` refuses that before training)."""
    if not data:
        return FOLDER_PREFIX
    return FOLDER_PREFIX + os.path.relpath(pathlib.Path(data).resolve(), REPOSITORY)


def check_data(runs: list[Run]) -> None:
    """One clear error, before any training, for a run whose image folder is missing or not one."""
    for run in runs:
        source = str(run.overrides.get("data.source", ""))
        if not source.startswith(FOLDER_PREFIX):
            continue
        folder = source[len(FOLDER_PREFIX):]
        if not folder:
            raise ValueError(f"run {run.name!r} trains on an image folder: give it as --data=PATH/cifar10 "
                             "(PATH/cifar10/{train,test}/<class>/<image>)")
        path = REPOSITORY / folder
        if not (path / "train").is_dir() or not (path / "test").is_dir():
            raise ValueError(f"--data={path} has no train/ and test/ folders; "
                             "expected PATH/{train,test}/<class>/<image>")
