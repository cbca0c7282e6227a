"""One writer per run folder: an OS file lock held by the training process for as long as it lives.

Why: two processes training into one folder corrupt its checkpoints (seen: one crashed, the other hung, a
temporary checkpoint left). The lock is `fcntl.flock` on `<workdir>/.lock`, released by the OS when its
holder exits or dies, so a crash never leaves a stale lock. Object-store folders (gs://) cannot be locked
this way; there the launch scripts start one job per run folder (README, "Several hosts").
"""

import fcntl
import json
import os
import pathlib
import socket

LOCK_FILE = ".lock"


class RunLocked(ValueError):
    """Another process holds the run folder's lock."""


class RunLock:
    def __init__(self, workdir: str | pathlib.Path):
        self.path = pathlib.Path(workdir) / LOCK_FILE
        self._file = None

    def __enter__(self) -> "RunLock":
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()
            handle.close()
            try:
                info = json.loads(holder)
                who = f"pid {info['pid']} on host {info['host']}"
            except (ValueError, KeyError):
                who = "another process"
            raise RunLocked(f"{self.path.parent} is being trained by {who}; one process per run folder "
                            "(stop it, or use another --workdir)") from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
        handle.flush()
        self._file = handle
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            self._file.close()  # closing releases the lock.
            self._file = None
