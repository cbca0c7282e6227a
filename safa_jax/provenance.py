"""Which code and machine trained a run: one JSON line per start (a resumed run adds a line), `provenance.jsonl`.

Why: a long run may be stopped and resumed under newer code; its results must say every commit that
trained it and from which step.
"""

import datetime
import json
import pathlib
import platform
import socket
import subprocess

PROVENANCE_FILE = "provenance.jsonl"
REPOSITORY = pathlib.Path(__file__).resolve().parents[1]


def git_commit() -> tuple[str, bool | None]:
    """(commit, whether tracked files differ from it) of the checkout this package runs from; ("unknown", None)
    outside a git checkout (an installed package)."""
    try:
        commit = subprocess.run(["git", "-C", str(REPOSITORY), "rev-parse", "HEAD"], capture_output=True,
                                text=True, check=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPOSITORY), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True, timeout=30).stdout.strip() != ""
    except (OSError, subprocess.SubprocessError):
        return "unknown", None
    return commit, dirty


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name and widest vector extension ("AMD EPYC, AVX-512"), or the platform's processor
    string: the speed of a run depends on both, and one model name covers machines with and without AVX-512."""
    if cpuinfo is None:
        try:
            cpuinfo = pathlib.Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    model = flags = ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and not model:
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = value
    if not model:
        return platform.processor() or "unknown"
    names = set(flags.split())
    vector = "AVX-512" if "avx512f" in names else "AVX2" if "avx2" in names else ""
    return f"{model}, {vector}" if vector else model


def record_start(workdir: str | pathlib.Path, *, start_step: int, device: str) -> dict:
    """Appends this start's line to the run's provenance.jsonl and returns it."""
    commit, dirty = git_commit()
    line = {"commit": commit, "dirty": dirty, "start_step": int(start_step),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "host": socket.gethostname(), "cpu": cpu_model(), "device": device}
    with open(pathlib.Path(workdir) / PROVENANCE_FILE, "a") as out:
        out.write(json.dumps(line) + "\n")
    return line


def read_provenance(workdir: str | pathlib.Path) -> list[dict]:
    path = pathlib.Path(workdir) / PROVENANCE_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
