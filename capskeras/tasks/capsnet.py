"""CapsNet with its reconstruction decoder (Sabour, Frosst and Hinton 2017)."""

import dataclasses

from capskeras.models.capsnet import CapsNet
from capskeras.settings import MODEL
from capskeras.settings import at_least
from capskeras.settings import setting
from capskeras.tasks.base import register_task
from capskeras.tasks.mnist import MnistTask


def routing_iterations_setting():
    """The `routing_iterations` setting of every task with a CapsNet capsule stack.

    CapsNet, SparseCaps and the study's `capsnet` encoder share it.
    """
    return setting(3, "Capsule models: routing-by-agreement iterations.", check=at_least(1),
                   resume=MODEL)


@register_task("capsnet")
class CapsNetTask(MnistTask):
    """CapsNet on MNIST, or on the 40x40 affNIST canvas with `--pad_to=40`."""

    @dataclasses.dataclass
    class Settings(MnistTask.Settings):
        routing_iterations: int = routing_iterations_setting()

    def build_model(self, pretrained):
        model = CapsNet(self.image_shape(), routing_iterations=self.settings.routing_iterations,
                        name="capsnet")
        model.build((None,) + self.image_shape())
        return model
