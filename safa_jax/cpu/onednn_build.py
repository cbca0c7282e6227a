"""Compiling the oneDNN convolution handlers (`onednn_conv.cc`) on first use; no JAX import at module level.

The source is compiled with the machine's C++ compiler against the headers of the pinned
`onednn-devel-cpu-gomp` wheel and jaxlib's FFI headers, linked to the `onednn-cpu-gomp` wheel's libdnnl, and
cached under `$SAFA_JAX_CACHE_DIR` (default `~/.cache/safa_jax`), keyed by the source, jaxlib and oneDNN
versions. `safa_jax.cpu.xla_flags` asks `installed_blocker` (before JAX starts) which XLA flags suit the step.
"""

import hashlib
import importlib.metadata
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile

SOURCE = pathlib.Path(__file__).with_name("onednn_conv.cc")
LIBRARY_WHEEL, HEADERS_WHEEL = "onednn-cpu-gomp", "onednn-devel-cpu-gomp"


class OnednnUnavailable(RuntimeError):
    """The oneDNN convolutions cannot run here; the message says why and what to install."""


def _wheel_file(wheel: str, suffix: str) -> pathlib.Path:
    try:
        distribution = importlib.metadata.distribution(wheel)
    except importlib.metadata.PackageNotFoundError:
        raise OnednnUnavailable(f"the {wheel} wheel is not installed (pip install -r requirements.txt)") from None
    for file in distribution.files or ():
        path = pathlib.Path(distribution.locate_file(file)).resolve()  # RECORD paths may start with ../
        if path.as_posix().endswith(suffix):
            return path
    raise OnednnUnavailable(f"the {wheel} wheel holds no {suffix}")


def _compiler() -> str:
    for name in (os.environ.get("CXX", ""), "c++", "g++"):
        if name and shutil.which(name):
            return shutil.which(name)
    raise OnednnUnavailable("no C++ compiler on PATH (install g++ or set CXX)")


def cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("SAFA_JAX_CACHE_DIR", pathlib.Path.home() / ".cache" / "safa_jax"))


def _inputs() -> tuple[pathlib.Path, pathlib.Path, str]:
    """(oneDNN include folder, libdnnl, compiler), or OnednnUnavailable naming what is missing."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        raise OnednnUnavailable(f"the oneDNN wheels are for x86_64 Linux; this is {sys.platform} {platform.machine()}")
    header = _wheel_file(HEADERS_WHEEL, "include/oneapi/dnnl/dnnl.hpp")
    return header.parents[2], _wheel_file(LIBRARY_WHEEL, "lib/libdnnl.so.3"), _compiler()


def installed_blocker() -> str | None:
    """What keeps the handlers from being built here (platform, wheels, compiler), or None; builds nothing."""
    try:
        _inputs()
    except OnednnUnavailable as error:
        return str(error)
    return None


def build_library() -> pathlib.Path:
    """Path of the compiled handlers, compiling them first if this source/jaxlib/oneDNN has no cached build."""
    import jax  # Here, not at module level: safa_jax.cpu.xla_flags imports this module before JAX starts.

    include_dir, library, compiler = _inputs()
    source = SOURCE.read_bytes()
    versions = f"jaxlib {importlib.metadata.version('jaxlib')}, {LIBRARY_WHEEL} {importlib.metadata.version(LIBRARY_WHEEL)}"
    digest = hashlib.sha256(source + versions.encode() + str(library).encode()).hexdigest()[:16]
    target = cache_dir() / f"onednn_conv-{digest}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: concurrent processes (pytest -n 2) never load a half-written file.
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        partial = pathlib.Path(scratch) / target.name
        command = [compiler, "-O2", "-std=c++17", "-shared", "-fPIC", "-w", "-I", jax.ffi.include_dir(),
                   "-I", str(include_dir), str(SOURCE), str(library), f"-Wl,-rpath,{library.parent}",
                   "-o", str(partial)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise OnednnUnavailable(f"compiling {SOURCE.name} failed ({versions}):\n{result.stderr[-2000:]}")
        os.replace(partial, target)
    return target


