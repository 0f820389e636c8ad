"""Writing files so that a reader never sees a partial one."""

import contextlib
import os


class WriteError(OSError):
    """A file of a run could not be written (a full disk, say); the previous version is kept."""


def write_text_atomically(path, text):
    """Writes `text` to `path` through a temporary file renamed into place.

    A run killed mid-write leaves the previous file (or none), never a
    truncated one: `os.replace` is atomic on one filesystem. A write that
    fails (a full disk) removes its temporary file and raises.
    """
    partial = f"{path}.partial"
    try:
        with open(partial, "w") as f:
            f.write(text)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(partial)
        raise
    os.replace(partial, path)


@contextlib.contextmanager
def reported_as_write_error(path):
    """Re-raises a failed write inside the block as a `WriteError` naming `path`."""
    try:
        yield
    except WriteError:
        raise
    except Exception as error:
        if not _is_write_failure(error):
            raise
        raise WriteError(
            f"Could not write {path} ({error_summary(error)}); "
            "what was there before is kept. Free space there (or fix the directory), then run "
            "the same command again"
        ) from error


def error_summary(error):
    """The first line of `error`'s message (TensorFlow's or Python's), at most 300 characters."""
    text = (getattr(error, "message", None) or str(error)).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


def _is_write_failure(error):
    if isinstance(error, OSError):
        return True
    # TensorFlow's file system reports through its own errors (tf.errors.OpError).
    return type(error).__module__.startswith("tensorflow") and hasattr(error, "error_code")
