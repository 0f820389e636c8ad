"""Sparse Unsupervised Capsules (Rawlinson, Ahmed and Kowadlo 2018), trained without labels."""

import dataclasses

from capskeras.models.sparsecaps import SparseCaps
from capskeras.settings import MODEL
from capskeras.settings import at_least
from capskeras.settings import setting
from capskeras.tasks.base import register_task
from capskeras.tasks.mnist import MnistTask


@register_task("sparsecaps")
class SparseCapsTask(MnistTask):
    """SparseCaps on MNIST, or on the 40x40 affNIST canvas with `--pad_to=40`."""

    @dataclasses.dataclass
    class Settings(MnistTask.Settings):
        routing_iterations: int = setting(
            3, "Capsule models: routing-by-agreement iterations.", check=at_least(1),
            resume=MODEL,
        )

    def build_model(self, pretrained):
        model = SparseCaps(self.image_shape(), routing_iterations=self.settings.routing_iterations,
                           name="sparsecaps")
        model.build((None,) + self.image_shape())
        return model
