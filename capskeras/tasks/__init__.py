"""Model families the trainer can train, each a `Task` registered by name.

Importing this package registers the built-in tasks: `study` (the
equivariance study's encoders and heads), `capsnet`, `sparsecaps`,
`em_capsnet_mnist` and `em_capsnet_smallnorb`, `lenet5`, `cnn_baseline`,
and `p4cnn` and `z2cnn` on rotated MNIST; then
the tasks of installed packages that declare their module under the
entry-point group `capskeras.tasks`, so that `capskeras-train
--model=<theirs>` finds them:

    [options.entry_points]
    capskeras.tasks =
        tiny_cnn = my_package.tiny_cnn
"""

from capskeras.tasks import baselines  # noqa: F401  Registers lenet5, cnn_baseline.
from capskeras.tasks import capsnet  # noqa: F401  Registers capsnet.
from capskeras.tasks import em_capsnet  # noqa: F401  Registers em_capsnet_mnist, _smallnorb.
from capskeras.tasks import gcnn  # noqa: F401  Registers p4cnn, z2cnn.
from capskeras.tasks import sparsecaps  # noqa: F401  Registers sparsecaps.
from capskeras.tasks import study  # noqa: F401  Registers study.
from capskeras.tasks.base import TASKS
from capskeras.tasks.base import InputOptions
from capskeras.tasks.base import Stage
from capskeras.tasks.base import Task
from capskeras.tasks.base import build_model
from capskeras.tasks.base import get_task
from capskeras.tasks.base import register_task
from capskeras.tasks.mnist import MnistTask
from capskeras.tasks.smallnorb import SmallNorbTask

__all__ = [
    "TASKS", "InputOptions", "MnistTask", "SmallNorbTask", "Stage", "Task", "build_model",
    "get_task", "register_task",
]


def _register_installed_families():
    """Imports the task modules other packages declare (entry points `capskeras.tasks`)."""
    from importlib.metadata import entry_points

    for entry_point in entry_points(group="capskeras.tasks"):
        entry_point.load()


_register_installed_families()
