"""One trainer per run directory: a lock file naming who holds it.

    <model_dir>/trainer.lock               held by the run's chief
    <model_dir>/trainer-worker-<i>.lock    held by worker i of a multi-worker run

The lock is an advisory `flock` on the file, which the kernel drops when the
holding process ends however it ends, and the file's text names the holder
(host, PID, start time) for the error a second trainer gets. A file left by
a process that no longer holds it is taken over; the caller records that.
A lock written on another host cannot be checked from here, so it is not
taken over: the error says how to remove it once that run is known to be
over.
"""

import dataclasses
import fcntl
import json
import os
import socket
import time

LOCK_FILE = "trainer.lock"


class RunLockedError(ValueError):
    """Another trainer holds the run directory's lock."""


@dataclasses.dataclass(frozen=True)
class Holder:
    """Who holds a lock: host, process ID and when it started."""

    host: str
    pid: int
    started: str

    @classmethod
    def this_process(cls):
        return cls(socket.gethostname(), os.getpid(), time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    def describe(self):
        return f"process {self.pid} on host {self.host!r}, started {self.started}"


def lock_path(model_dir, worker=0):
    """The lock file of `worker` (0: the chief or a single trainer) in `model_dir`."""
    return os.path.join(model_dir, LOCK_FILE if worker == 0 else f"trainer-worker-{worker}.lock")


class RunLock:
    """The held lock of one trainer on one run directory; `release()` it when done.

    Attributes:
        path: the lock file.
        taken_over: the `Holder` of a lock left by a process that had
            ended, which this one took over; None when the lock was free.
    """

    def __init__(self, path, descriptor, taken_over, created_directory=False):
        self.path = path
        self._descriptor = descriptor
        self.taken_over = taken_over
        self._created_directory = created_directory

    def release(self):
        """Removes the lock file, then drops the lock. Safe to call twice.

        A run directory that the lock created and nothing else wrote into
        (a request refused after the lock was taken) is removed too.
        """
        if self._descriptor is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self._descriptor)
        self._descriptor = None
        if self._created_directory:
            try:
                os.rmdir(os.path.dirname(self.path))
            except OSError:
                pass  # Not empty: the run wrote there.


def acquire(model_dir, worker=0):
    """Takes the lock of `worker` on `model_dir`, creating the directory if needed.

    Returns:
        A `RunLock`.

    Raises:
        RunLockedError: a live process holds the lock, or a process on
            another host left it. The message names the holder.
    """
    created_directory = not os.path.isdir(model_dir)
    os.makedirs(model_dir, exist_ok=True)
    path = lock_path(model_dir, worker)
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(descriptor)
            os.close(descriptor)
            described = holder.describe() if holder else "a process that has not named itself yet"
            raise RunLockedError(
                f"Received: model_dir={model_dir!r}, which another trainer is using ({described}; "
                f"lock file {path}); expected one trainer per run directory: wait for that run "
                "to finish or stop it, then run the same command again, or use a new --model_dir"
            ) from None
        # A releasing holder unlinks the file before dropping the lock: if
        # ours is no longer the file at `path`, lock the new one instead.
        try:
            same_file = os.stat(path).st_ino == os.fstat(descriptor).st_ino
        except FileNotFoundError:
            same_file = False
        if same_file:
            break
        os.close(descriptor)

    previous = _read_holder(descriptor)
    this = Holder.this_process()
    if previous is not None and previous.host != this.host:
        os.close(descriptor)
        raise RunLockedError(
            f"Received: model_dir={model_dir!r}, locked by {previous.describe()} (lock file "
            f"{path}); this host cannot tell whether that run still goes on. Expected one "
            "trainer per run directory: if that run is over, delete the lock file and run "
            "the same command again"
        )
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, json.dumps(dataclasses.asdict(this)).encode(), 0)
    os.fsync(descriptor)
    return RunLock(path, descriptor, taken_over=previous, created_directory=created_directory)


def _read_holder(descriptor):
    """The `Holder` written in an open lock file, or None if it holds none (yet)."""
    text = os.pread(descriptor, 4096, 0).decode(errors="replace")
    try:
        fields = json.loads(text)
        return Holder(str(fields["host"]), int(fields["pid"]), str(fields["started"]))
    except (ValueError, KeyError, TypeError):
        return None
