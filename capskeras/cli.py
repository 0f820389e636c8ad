"""Console entry points: oneDNN first, then the trainer or the evaluator.

`capskeras-train` and `capskeras-eval` land here rather than in the modules
that define them, so that `TF_ENABLE_ONEDNN_OPTS=1` is set (unless the user
set it) before anything imports TensorFlow: see `capskeras.onednn`. Nothing
here imports TensorFlow at module level.
"""

from capskeras import onednn


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
