"""Sparse Unsupervised Capsules (Rawlinson, Ahmed and Kowadlo 2018), trained without labels."""

from capskeras.models.sparsecaps import SparseCaps
from capskeras.tasks.base import register_task
from capskeras.tasks.capsnet import CapsNetTask


@register_task("sparsecaps")
class SparseCapsTask(CapsNetTask):
    """SparseCaps on MNIST, or on the 40x40 affNIST canvas with `--pad_to=40`.

    Its settings are CapsNet's: the canvas, the shifts and the routing.
    """

    def build_model(self, pretrained):
        model = SparseCaps(self.image_shape(), routing_iterations=self.settings.routing_iterations,
                           name="sparsecaps")
        model.build((None,) + self.image_shape())
        return model
