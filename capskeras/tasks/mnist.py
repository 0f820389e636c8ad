"""The base of tasks that train on MNIST: its settings and its pipelines."""

import dataclasses

from capskeras.data import builders
from capskeras.data import mnist
from capskeras.settings import MODEL
from capskeras.settings import at_least
from capskeras.settings import setting
from capskeras.tasks.base import Task


def _pad_to_accepts(value):
    return value == 0 or value >= mnist.IMAGE_SHAPE[0]


class MnistTask(Task):
    """A task on MNIST digits, optionally padded and shifted (affNIST protocol)."""

    @dataclasses.dataclass
    class Settings(Task.Settings):
        translate_pixels: int = setting(
            0, "Random shift of training images, up to N pixels each way.", check=at_least(0)
        )
        pad_to: int = setting(
            0, "Centre digits on a black canvas of this side (40 for affNIST); 0 for none.",
            check=(_pad_to_accepts, "0 or an int >= 28"), resume=MODEL,
        )

    def image_shape(self):
        side = self.settings.pad_to
        return (side, side, 1) if side else mnist.IMAGE_SHAPE

    def prepared_builder(self, options):
        return builders.prepared_builder("mnist", data_dir=options.data_dir,
                                         download=options.download)

    def images(self, split, options, shuffle):
        training = split == "train" and shuffle
        return mnist.load_mnist(
            **self.pipeline_arguments(split, options, shuffle),
            translate_pixels=self.settings.translate_pixels if training else 0,
            pad_to=self.settings.pad_to or None,
        )
