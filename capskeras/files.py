"""Writing files so that a reader never sees a partial one."""

import os


def write_text_atomically(path, text):
    """Writes `text` to `path` through a temporary file renamed into place.

    A run killed mid-write leaves the previous file (or none), never a
    truncated one: `os.replace` is atomic on one filesystem.
    """
    partial = f"{path}.partial"
    with open(partial, "w") as f:
        f.write(text)
    os.replace(partial, path)
