"""Console entry points, and the one way every capskeras command runs its flags.

`capskeras-train` and `capskeras-eval` land here rather than in the modules
that define them, so that `TF_ENABLE_ONEDNN_OPTS=1` is set (unless the user
set it) before anything imports TensorFlow: see `capskeras.onednn`. Nothing
here imports TensorFlow at module level.

Every command (the two above, `python -m capskeras.data.prepare` and the
scripts in `tools/`) defines its absl flags in a `define_flags(flag_values)`
function that only its entry point calls, through `run_command`: importing
a command's module defines nothing, so tests and other commands can import
it beside the trainer.
"""

import sys

from capskeras import onednn


def run_command(prog, define_flags, main, argv=None):
    """Defines a command's flags, parses them and runs its absl `main`.

    `define_flags(flag_values)` defines the flags on absl's global `FLAGS`
    (so `--flagfile`, `--help` and `--helpfull` work as usual); `argv`
    (default `sys.argv`) is parsed and `main(argv)` runs, as in `app.run`.

    Args:
        prog: the command's name, which starts its error messages.
        define_flags: a function defining the command's flags on the
            `FlagValues` it is given.
        main: the absl main, taking the positional arguments left.
        argv: the command line, its first item the program.

    An unknown flag, a malformed or out-of-range value, or a missing
    required flag exits with status 2 and `<prog>: error: <message>`, the
    message naming the flag, the value and what it accepts.
    """
    from absl import app
    from absl import flags

    define_flags(flags.FLAGS)

    def parse(arguments):
        try:
            return flags.FLAGS(arguments)
        except flags.Error as error:
            print(f"{prog}: error: {error}", file=sys.stderr)
            sys.exit(2)

    app.run(main, argv=argv, flags_parser=parse)


def train():
    """`capskeras-train`: `capskeras.training.train.run` with oneDNN on."""
    onednn.enable()
    from capskeras.training import train as trainer

    trainer.run()


def evaluate():
    """`capskeras-eval`: `capskeras.evaluation.evaluate.run` with oneDNN on."""
    onednn.enable()
    from capskeras.evaluation import evaluate as evaluator

    evaluator.run()
