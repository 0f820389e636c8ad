"""What a model directory holds, and whether a new request may continue it.

    <model_dir>/config.json, flags.cfg   the settings the run goes by
    <model_dir>/resumes.jsonl            one line per resume (when, what changed) and per
                                         fault met on the way (a lock taken over, damaged
                                         checkpoints set aside)
    <model_dir>/trainer.lock             held while a trainer runs (see run_lock.py)
    <model_dir>/checkpoints/             the model's training (see loop.py)
    <model_dir>/<stage>/checkpoints/     each pretraining stage's
"""

import json
import os
import tempfile
import time

from capskeras.files import write_text_atomically
from capskeras.settings import FREE
from capskeras.settings import MODEL
from capskeras.training.config import setting_fields

CONFIG_FILE = "config.json"
FLAGS_FILE = "flags.cfg"
RESUMES_FILE = "resumes.jsonl"
CHECKPOINTS = "checkpoints"


class IncompatibleRunError(ValueError):
    """`model_dir` holds a run that the requested settings cannot continue."""


def stage_directory(model_dir, stage_name=None):
    """The checkpoint directory of a pretraining stage, or of the model's own training."""
    if stage_name is None:
        return os.path.join(model_dir, CHECKPOINTS)
    return os.path.join(model_dir, stage_name, CHECKPOINTS)


def has_checkpoint(directory):
    return os.path.exists(os.path.join(directory, "checkpoint"))


def check_writable(name, path):
    """Raises ValueError unless directory `path` exists writable or can be made.

    Probes the nearest existing ancestor with a temporary directory, so a
    directory that does not exist yet is not created here.
    """
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"Received: {name}={path!r}, which is a file; expected a directory")
    ancestor = os.path.abspath(path)
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".capskeras-probe-", dir=ancestor))
    except OSError as error:
        raise ValueError(
            f"Received: {name}={path!r}; expected a directory this process can create and "
            f"write, but {ancestor!r} refuses: {error.strerror}"
        ) from None


def saved_settings(model_dir):
    """The flat settings the run in `model_dir` started with, or None."""
    path = os.path.join(model_dir, CONFIG_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def changed_settings(config):
    """`{name: (recorded, requested)}` of the settings that differ from the saved run.

    Raises:
        IncompatibleRunError: a setting that fixes the model's variables
            differs, or one that changes the run's arithmetic differs and
            `config.allow_setting_changes` is False.
    """
    saved = saved_settings(config.model_dir)
    if saved is None:
        return {}
    fields = setting_fields(config)
    rules = {name: field.metadata["resume"] for name, field in fields.items()}
    changes = {}
    for name, requested in config.to_flat().items():
        if rules[name] == FREE:
            continue
        # A setting added since the run started had its default then.
        recorded = saved.get(name, fields[name].default)
        if isinstance(requested, tuple):
            recorded = tuple(recorded)
        if recorded != requested:
            changes[name] = (recorded, requested)
    fixed = {name: change for name, change in changes.items() if rules[name] == MODEL}
    if fixed or (changes and not config.allow_setting_changes):
        listed = ", ".join(f"{name}={requested!r} (the run has {recorded!r})"
                           for name, (recorded, requested) in sorted((fixed or changes).items()))
        advice = ("these settings define the model's variables; expected the run's values "
                  "or a new --model_dir") if fixed else (
                  "expected the run's values, a new --model_dir, or --allow_setting_changes "
                  "to continue the run under the new values")
        raise IncompatibleRunError(
            f"Received: {listed}, but model_dir={config.model_dir!r} holds a run started with "
            f"other values; {advice}"
        )
    return changes


def check_checkpoint_format(model_dir, stages=()):
    """Refuses a model_dir holding epoch checkpoints of capskeras before tasks.

    Args:
        model_dir: the run's directory.
        stages: the task's pretraining `Stage`s, whose directories are read too.
    """
    directories = [stage_directory(model_dir)]
    directories += [stage_directory(model_dir, stage.name) for stage in stages]
    for directory in directories:
        if os.path.exists(os.path.join(directory, "latest.json")):
            raise IncompatibleRunError(
                f"Received: model_dir={model_dir!r} holding epoch checkpoints of an earlier "
                "capskeras (checkpoints/latest.json), which this trainer cannot resume; "
                "expected a new --model_dir (the run's model.keras still loads)"
            )


def check_stages(config, stages):
    """Refuses to change a pretraining stage that the run has already finished.

    A stage is finished once a later one (or the model's own training) has
    checkpoints: its result is already inside them.
    """
    later = [stage_directory(config.model_dir, stage.name) for stage in stages[1:]]
    later.append(stage_directory(config.model_dir))
    for stage, next_directory in zip(stages, later):
        history_file = os.path.join(stage_directory(config.model_dir, stage.name), "history.json")
        if not (has_checkpoint(next_directory) and os.path.exists(history_file)):
            continue
        with open(history_file) as f:
            done = len(json.load(f))
        if done != stage.epochs:
            raise IncompatibleRunError(
                f"Received: {stage.epochs} epochs of the {stage.name!r} stage, but "
                f"model_dir={config.model_dir!r} finished that stage after {done} epochs and "
                f"went on from there; expected {done}, or a new --model_dir"
            )


def record_start(config, changes):
    """Writes the settings of a new run, or logs a resume in `resumes.jsonl`.

    A resume under changed settings (`--allow_setting_changes`) also
    rewrites `config.json` and `flags.cfg`: the run goes on under them.
    """
    os.makedirs(config.model_dir, exist_ok=True)
    new_run = saved_settings(config.model_dir) is None
    if new_run or changes:
        write_text_atomically(os.path.join(config.model_dir, CONFIG_FILE), config.to_json())
        write_text_atomically(os.path.join(config.model_dir, FLAGS_FILE), config.to_flagfile())
    if new_run:
        return
    line = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "changed": {name: list(change) for name, change in changes.items()}}
    with open(os.path.join(config.model_dir, RESUMES_FILE), "a") as f:
        f.write(json.dumps(line) + "\n")


def record_event(model_dir, event, **details):
    """Appends one line about `event` (a lock taken over, checkpoints skipped) to `resumes.jsonl`."""
    line = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "event": event, **details}
    with open(os.path.join(model_dir, RESUMES_FILE), "a") as f:
        f.write(json.dumps(line) + "\n")
