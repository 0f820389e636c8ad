"""Checkpoints that survive damage and a full disk.

`tf.train.CheckpointManager` writes each checkpoint's files first and its
`checkpoint` state file (atomically) after them, so a crash mid-write leaves
the state naming the previous, complete checkpoint. What is left is damage
after the fact (a truncated or overwritten data file, a lost index) and a
disk that fills up mid-save:

- `restore_newest_readable` restores the newest checkpoint that reads,
  setting damaged newer ones aside as `damaged-ckpt-N.*` (kept for
  inspection, out of the manager's list), and says what it skipped.
- `save` turns a failed write into a `CheckpointWriteError` naming the
  directory, after removing the partial files, so the previous checkpoint
  stays the newest one referenced.
"""

import contextlib
import glob
import os
import re
import shutil
import time

from absl import logging
import tensorflow as tf

from capskeras.files import WriteError
from capskeras.files import error_summary
from capskeras.files import write_text_atomically

DAMAGED_PREFIX = "damaged-"


class UnreadableCheckpointError(RuntimeError):
    """No checkpoint of a run directory can be read; nothing was overwritten."""


class CheckpointWriteError(WriteError):
    """A checkpoint could not be written (a full disk, say); the previous one is kept."""


def checkpoint_number(path):
    """The number at the end of a checkpoint prefix (`.../ckpt-250` -> 250)."""
    match = re.search(r"-(\d+)$", path)
    return int(match.group(1)) if match else None


def candidates(manager):
    """The checkpoints a resume may start from, newest first.

    The manager's list, or, when its state file is lost or unreadable, every
    `ckpt-N` whose index file is in the directory.
    """
    listed = list(manager.checkpoints)
    if manager.latest_checkpoint and manager.latest_checkpoint not in listed:
        listed.append(manager.latest_checkpoint)
    if not listed:
        indexes = glob.glob(os.path.join(glob.escape(manager.directory), "ckpt-*.index"))
        listed = [index[:-len(".index")] for index in indexes]
    return sorted(listed, key=lambda path: checkpoint_number(path) or 0, reverse=True)


def restore_newest_readable(checkpoint, manager, newest=None, partial=False):
    """Restores the newest readable checkpoint of `manager` into `checkpoint`.

    Args:
        checkpoint: the `tf.train.Checkpoint` to restore into.
        manager: the `tf.train.CheckpointManager` of the run's directory.
        newest: a checkpoint prefix; only it and older ones are tried (the
            newest one every worker of a cluster holds). None for no limit.
        partial: `checkpoint` holds part of what was saved (the weights
            alone); the rest of the file is not read.

    Returns:
        `(path, skipped)`: the restored checkpoint's prefix (None when the
        directory holds none) and a list of `{"checkpoint", "error"}` for
        the damaged newer ones that were set aside.

    Raises:
        UnreadableCheckpointError: checkpoints exist and none can be read.
            Nothing is renamed or overwritten then.
    """
    skipped = []
    for path in candidates(manager):
        if newest and checkpoint_number(path) > checkpoint_number(newest):
            continue
        try:
            status = checkpoint.restore(path)
            if partial:
                status.expect_partial()
            status.assert_existing_objects_matched()
        except (tf.errors.OpError, ValueError, IndexError, AssertionError) as error:
            message = error_summary(error)
            logging.warning("Checkpoint %s cannot be read (%s); trying the next older one",
                            path, message)
            skipped.append({"checkpoint": path, "error": message})
            continue
        if skipped:
            _set_aside([entry["checkpoint"] for entry in skipped], path, manager)
        return path, skipped
    if skipped:
        raise UnreadableCheckpointError(
            f"None of the {len(skipped)} checkpoints in {manager.directory} can be read ("
            + "; ".join(f"{os.path.basename(entry['checkpoint'])}: {entry['error']}"
                        for entry in skipped)
            + "). Nothing was overwritten. To start over, move that directory aside or use a "
            "new --model_dir"
        )
    return None, skipped


def save(manager, number):
    """`manager.save(checkpoint_number=number)`; a failed write raises `CheckpointWriteError`.

    The partial files of the failed checkpoint are removed; the state file
    still names the previous checkpoint, which stays intact.
    """
    try:
        return manager.save(checkpoint_number=number)
    except (tf.errors.OpError, OSError) as error:
        prefix = os.path.join(manager.directory, f"ckpt-{number}")
        if manager.latest_checkpoint != prefix:
            for partial in glob.glob(glob.escape(prefix) + ".*") + \
                    glob.glob(glob.escape(prefix) + "_temp*"):
                if os.path.isdir(partial):
                    shutil.rmtree(partial, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        os.remove(partial)
        raise CheckpointWriteError(
            f"Could not write checkpoint {prefix} ({error_summary(error)}); training stopped. "
            f"The previous checkpoint is kept: {manager.latest_checkpoint or 'none yet'}. "
            "Free space there (or fix the directory), then run the same command again to resume"
        ) from error


def _set_aside(damaged, restored, manager):
    """Renames the damaged checkpoints' files and rewrites the state without them."""
    for path in damaged:
        directory, name = os.path.split(path)
        for file in glob.glob(glob.escape(path) + ".*"):
            suffix = file[len(path):]
            os.replace(file, os.path.join(directory, DAMAGED_PREFIX + name + suffix))
    state = tf.train.get_checkpoint_state(manager.directory)
    listed = list(state.all_model_checkpoint_paths) if state else []
    times = list(state.all_model_checkpoint_timestamps) if state else []
    if len(times) != len(listed):
        times = [time.time()] * len(listed)
    kept = [(os.path.basename(path), when) for path, when in zip(listed, times)
            if path not in damaged and checkpoint_number(path) <= checkpoint_number(restored)]
    if not kept or kept[-1][0] != os.path.basename(restored):
        kept.append((os.path.basename(restored), time.time()))
    proto = tf.compat.v1.train.generate_checkpoint_state_proto(
        manager.directory, os.path.basename(restored),
        all_model_checkpoint_paths=[name for name, _ in kept],
        all_model_checkpoint_timestamps=[when for _, when in kept],
        # The manager tracks (and so later deletes) only checkpoints newer than this.
        last_preserved_timestamp=min(when for _, when in kept) - 1)
    write_text_atomically(os.path.join(manager.directory, "checkpoint"), str(proto))
