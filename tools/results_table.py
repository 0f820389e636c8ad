"""The equivariance study's results table, as Markdown.

    python tools/results_table.py                      # from runs/*/metrics.json
    python tools/results_table.py --runs_dir=runs/heads,runs   # study_heads' heads first
    python tools/results_table.py --train --epochs=2 --train_examples=10000

For each encoder (untrained, deep BP, k-sparse, PredCaps and its three
ablations) the table shows the accuracy of its classification experiment
`enc_<encoder>_dec_class` and the MSE of its reconstruction experiment
`enc_<encoder>_dec_recon` on the training, validation and test splits (each
in inference mode, after training), the epochs each was trained for, and the
published figures beside the split they match. The study's table names no
split; its figures match our training-split figures (a frozen random code at
99.4% would be far beyond random-feature models' test accuracy on MNIST, and
at 99.4% on its training digits is what the 1024-512 head does), so they are
set beside the training column, and the test column is the library's own
result.

Without `--train` it reads `<runs_dir>/<experiment>/metrics.json`; runs
that are missing show as "not run", with the command that produces them.
With `--train` it first trains the experiments in this process, each
from its flagfile `flags/<experiment>.cfg` into `<runs_dir>/<experiment>`
(resuming from checkpoints there), exporting to
`<runs_dir>/<experiment>/saved_model`. Trainer flags given on the command
line (`--epochs`, `--train_examples`, `--pretrain_epochs`, ...) override
every flagfile. The table goes to stdout (and `--output`); training logs go
to stderr.
"""

# oneDNN on (unless TF_ENABLE_ONEDNN_OPTS is set) before anything imports TensorFlow.
from capskeras import onednn

onednn.enable()

import contextlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import pathlib  # noqa: E402
import sys  # noqa: E402

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from capskeras import cli  # noqa: E402
from capskeras.training.config import TrainConfig  # noqa: E402
from capskeras.training.flags import config_from_flagfile  # noqa: E402
from capskeras.training.flags import define_flags as define_trainer_flags  # noqa: E402

FLAGS = flags.FLAGS

REPO = pathlib.Path(__file__).resolve().parents[1]
FLAGS_DIR = REPO / "flags"

ENCODERS = ("untrained", "deep_bp", "ksparse", "predcaps", "predcaps_layernorm", "predcaps_units",
            "predcaps_nofeedback")
ENCODER_LABELS = {
    "untrained": "untrained (frozen)",
    "deep_bp": "deep BP",
    "ksparse": "k-sparse (frozen)",
    "predcaps": "PredCaps (frozen)",
    "predcaps_layernorm": "PredCaps, layer norm",
    "predcaps_units": "PredCaps, unit top-k",
    "predcaps_nofeedback": "PredCaps, no feedback",
}
# Published (test accuracy, test reconstruction MSE); None where there is none.
PUBLISHED = {
    "untrained": (0.994, 0.014),
    "deep_bp": (0.996, 0.004),
    "ksparse": None,
    "predcaps": (0.997, 0.005),
}
# Trainer flags a run's identity depends on: the tool sets them per experiment.
PER_EXPERIMENT_FLAGS = ("experiment", "model", "encoder", "head", "model_dir", "export_dir")
NOT_RUN = "not run"
DASH = "—"


def experiment_name(encoder, head):
    """`enc_<encoder>_dec_<head>`, the name of a flagfile in `flags/`."""
    return f"enc_{encoder}_dec_{head}"


def experiment_names():
    """The experiments of the table, class then recon for each encoder."""
    return [experiment_name(e, h) for e in ENCODERS for h in ("class", "recon")]


def train_command(name, runs_dir="runs", overrides=()):
    """The shell command that trains experiment `name` into `<runs_dir>/<name>`."""
    words = [
        "capskeras-train",
        f"--flagfile=flags/{name}.cfg",
        f"--model_dir={os.path.join(runs_dir, name)}",
        f"--export_dir={os.path.join(runs_dir, name, 'saved_model')}",
        *overrides,
    ]
    return " ".join(words)


SPLITS = ("train", "validation", "test")
PUBLISHED_SPLIT = "train"


def _metric(metrics, split, key):
    """`metrics[split][key]`, or None when the file does not have it."""
    try:
        return float(metrics[split][key])
    except (KeyError, TypeError, ValueError):
        return None


def _epochs(metrics, config):
    """Epochs trained, with k-sparse pretraining and a train_examples subset noted."""
    text = str(metrics.get("epochs", "?"))
    pretrain = metrics.get("pretrain")
    if isinstance(pretrain, dict) and "epochs" in pretrain:
        text += f" (+{pretrain['epochs']} pretrain)"
    examples = (config or {}).get("train_examples")
    if examples:
        text += f" on {examples:,} examples"
    return text


def _published(encoder, index, as_percent):
    figures = PUBLISHED.get(encoder)
    if figures is None:
        return DASH
    value = figures[index]
    return f"{value:.1%}" if as_percent else f"{value:g}"


def markdown_table(metrics, configs=None, commands=None,
                   all_command="python tools/results_table.py --train"):
    """The study's results table as Markdown.

    Args:
        metrics: dict mapping experiment names (`enc_<encoder>_dec_<head>`)
            to their `metrics.json` dicts; a missing name or a None value is
            a run that has not been done.
        configs: optional dict mapping experiment names to their resolved
            `config.json` dicts, to note runs on a subset of the data.
        commands: optional dict mapping experiment names to the command that
            produces them, listed under the table for runs not done.
        all_command: the command that produces every run, for that note.

    Returns:
        A Markdown string: the table, then a note per missing run.

    Example:

    >>> table = markdown_table({"enc_deep_bp_dec_class": {
    ...     "epochs": 20, "train": {"accuracy": 0.9992}, "test": {"accuracy": 0.9951}}})
    >>> "99.92%" in table and "99.51%" in table
    True
    """
    configs = configs or {}
    commands = commands or {}
    header = (
        "| encoder | accuracy: train | validation | test | published (train split) "
        "| MSE: train | validation | test | published (train split) "
        "| epochs (class) | epochs (recon) |"
    )
    lines = [header, "|" + "---|" * 11]
    missing = []
    for encoder in ENCODERS:
        cells = {}
        for head, key in (("class", "accuracy"), ("recon", "mse")):
            name = experiment_name(encoder, head)
            run = metrics.get(name)
            if run is None:
                missing.append(name)
                cells[head] = ([NOT_RUN, DASH, DASH], DASH)
                continue
            shown = []
            for split in SPLITS:
                value = _metric(run, split, key)
                shown.append(DASH if value is None else
                             f"{value:.2%}" if head == "class" else f"{value:.4f}")
            cells[head] = (shown, _epochs(run, configs.get(name)))
        lines.append(
            "| "
            + " | ".join(
                [
                    ENCODER_LABELS.get(encoder, encoder),
                    *cells["class"][0],
                    _published(encoder, 0, as_percent=True),
                    *cells["recon"][0],
                    _published(encoder, 1, as_percent=False),
                    cells["class"][1],
                    cells["recon"][1],
                ]
            )
            + " |"
        )
    lines.append("")
    lines.append(
        "Each split is measured in inference mode after training (the training split "
        "unaugmented); validation is the last 5,000 training digits, never trained on. The "
        "published figures name no split and match our training-split figures: they stand "
        "beside the training columns.")
    if missing:
        lines.append("")
        lines.append(f"Not run yet; produce them with `{all_command}`, or one by one:")
        lines.append("")
        for name in missing:
            command = commands.get(name, train_command(name))
            lines.append(f"- `{name}`: `{command}`")
    return "\n".join(lines) + "\n"


def read_runs(runs_dirs, names=None):
    """`(metrics, configs)` dicts of the runs found under `runs_dirs`.

    `runs_dirs` is a directory or a list of them; an experiment is read from
    the first that holds its `metrics.json`.
    """
    if isinstance(runs_dirs, (str, os.PathLike)):
        runs_dirs = [runs_dirs]
    metrics, configs = {}, {}
    for name in names or experiment_names():
        found = [d for d in runs_dirs if os.path.exists(os.path.join(d, name, "metrics.json"))]
        if not found:
            continue
        for target, filename in ((metrics, "metrics.json"), (configs, "config.json")):
            path = os.path.join(found[0], name, filename)
            if os.path.exists(path):
                with open(path) as f:
                    target[name] = json.load(f)
    return metrics, configs


def trainer_overrides(flag_values=FLAGS):
    """Trainer flags given on the command line, as `--flag=value` strings.

    Raises:
        ValueError: one of them is set per experiment by this tool.
    """
    overrides = []
    for name in TrainConfig(model="study").to_flat():
        flag = flag_values[name]
        if not flag.present:
            continue
        if name in PER_EXPERIMENT_FLAGS:
            raise ValueError(
                f"Received: --{name}={flag.value}; it is set per experiment "
                f"(use --runs_dir); expected none of {['--' + n for n in PER_EXPERIMENT_FLAGS]}"
            )
        overrides.append(flag.serialize())
    return overrides


def train_all(runs_dir, overrides=(), names=None):
    """Trains each experiment in this process; returns `(metrics, configs)`."""
    from capskeras.training.train import train  # TensorFlow, only when training.

    metrics, configs = {}, {}
    for name in names or experiment_names():
        model_dir = os.path.join(runs_dir, name)
        config = config_from_flagfile(
            str(FLAGS_DIR / f"{name}.cfg"),
            [
                *overrides,
                f"--model_dir={model_dir}",
                f"--export_dir={os.path.join(model_dir, 'saved_model')}",
            ],
        )
        print(f"results_table: training {name} into {model_dir}", file=sys.stderr)
        metrics[name] = train(config)
        configs[name] = config.to_flat()
    return metrics, configs


def define_flags(flag_values):
    """Defines the tool's own flags and the trainer's on `flag_values`."""
    define_trainer_flags(flag_values)
    flags.DEFINE_boolean(
        "train", False, "Train the table's experiments first, in this process.",
        flag_values=flag_values,
    )
    flags.DEFINE_list(
        "runs_dir", ["runs"], "Directories holding one model_dir per experiment (the first "
        "that has an experiment's metrics.json is read; --train trains into the first), e.g. "
        "runs/heads,runs for tools/study_heads.py's heads beside the trainer's runs.",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "output", None, "Also write the table to this file.", flag_values=flag_values
    )


@contextlib.contextmanager
def _stdout_to_stderr():
    """Sends everything printed to stdout (Keras progress, too) to stderr."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Received unexpected arguments {argv[1:]}; expected flags only")
    try:
        if not FLAGS.runs_dir:
            raise ValueError("Received: --runs_dir= (empty); expected one or more directories")
        overrides = trainer_overrides()
        if FLAGS.train:
            with _stdout_to_stderr():
                metrics, configs = train_all(FLAGS.runs_dir[0], overrides)
        else:
            metrics, configs = read_runs(FLAGS.runs_dir)
    except (ValueError, FileNotFoundError) as error:  # Bad flags; MNIST not found.
        print(f"results_table.py: error: {error}", file=sys.stderr)
        sys.exit(2)
    commands = {
        name: train_command(name, FLAGS.runs_dir[0], overrides) for name in experiment_names()
    }
    all_command = " ".join(
        ["python tools/results_table.py --train", f"--runs_dir={FLAGS.runs_dir[0]}", *overrides]
    )
    table = markdown_table(metrics, configs, commands, all_command)
    if FLAGS.output:
        with open(FLAGS.output, "w") as f:
            f.write(table)
    sys.stdout.write(table)


if __name__ == "__main__":
    cli.run_command("results_table.py", define_flags, main)
