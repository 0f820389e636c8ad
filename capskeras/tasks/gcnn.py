"""P4CNN and Z2CNN on rotated MNIST (Cohen and Welling 2016), as trainer tasks.

Both train on `rotated_mnist_regen` (regenerated from real MNIST, see
`capskeras.data.rotated_mnist`) unless `--rotated_dataset=rotated_mnist`
(the MNIST-rot files) or `--rotated_dataset=mnist` (upright MNIST, to see
how far the built-in symmetry carries to turns never trained on). The
regenerated set's default (seed 0, 12,000
training and 50,000 test digits) is prepared on first use;
`--regen_seed`, `--regen_train_examples` and `--regen_test_examples`
select another draw. Exports hold plain convolutions
(`StudyModel.serving_model`).
"""

import dataclasses

from capskeras.data import builders
from capskeras.data import mnist
from capskeras.data import rotated_mnist
from capskeras.layers import group_algebra
from capskeras.models import gcnn
from capskeras.settings import MODEL
from capskeras.settings import at_least
from capskeras.settings import setting
from capskeras.tasks.base import Task
from capskeras.tasks.base import register_task

DEFAULT_REGEN = rotated_mnist.RotatedMnistRegenConfig(name="seed0")
UPRIGHT = "mnist"


def _rate(value):
    return 0.0 <= value < 1.0


class RotatedMnistTask(Task):
    """A task on rotated MNIST digits: MNIST-rot or its regenerated stand-in."""

    @dataclasses.dataclass
    class Settings(Task.Settings):
        rotated_dataset: str = setting(
            "rotated_mnist_regen", "Digits: the regenerated rotated set, MNIST-rot, or "
            "upright MNIST.", choices=rotated_mnist.DATASETS + (UPRIGHT,),
        )
        regen_seed: int = setting(0, "Seed of the regenerated set's digits and angles.",
                                  check=at_least(0))
        regen_train_examples: int = setting(
            12000, "Training digits of the regenerated set.", check=at_least(1))
        regen_test_examples: int = setting(
            50000, "Test digits of the regenerated set.", check=at_least(1))

    def image_shape(self):
        return rotated_mnist.IMAGE_SHAPE

    def _builder_kwargs(self):
        settings = self.settings
        if settings.rotated_dataset != "rotated_mnist_regen":
            return {}
        draw = (settings.regen_seed, settings.regen_train_examples, settings.regen_test_examples)
        if draw == (DEFAULT_REGEN.seed, DEFAULT_REGEN.train_examples,
                    DEFAULT_REGEN.test_examples):
            return {}
        return {"config": rotated_mnist.RotatedMnistRegenConfig(
            name="seed{}_train{}_test{}".format(*draw), seed=draw[0],
            train_examples=draw[1], test_examples=draw[2])}

    def prepared_builder(self, options):
        return builders.prepared_builder(self.settings.rotated_dataset,
                                         data_dir=options.data_dir, download=options.download,
                                         **self._builder_kwargs())

    def images(self, split, options, shuffle):
        if self.settings.rotated_dataset == UPRIGHT:
            return mnist.load_mnist(**self.pipeline_arguments(split, options, shuffle))
        return rotated_mnist.load_rotated_mnist(
            **self.pipeline_arguments(split, options, shuffle),
            dataset=self.settings.rotated_dataset, **self._builder_kwargs())


@register_task("p4cnn")
class P4CnnTask(RotatedMnistTask):
    """P4CNN (or P4M-CNN with `--gcnn_group=p4m`): seven group convolutions, invariant scores."""

    @dataclasses.dataclass
    class Settings(RotatedMnistTask.Settings):
        gcnn_group: str = setting("p4", "Group of P4CNN's convolutions.",
                                  choices=sorted(group_algebra.GROUP_ORDERS), resume=MODEL)
        gcnn_channels: int = setting(
            0, "Channels per group convolution; 0 for round(20 / sqrt(G)).", check=at_least(0),
            resume=MODEL)
        gcnn_dropout: float = setting(0.0, "Dropout after each hidden layer of P4CNN.",
                                      check=(_rate, "a float in [0, 1)"))

    def build_model(self, pretrained):
        return gcnn.build_p4cnn(self.image_shape(), seed=self.seed,
                                group=self.settings.gcnn_group,
                                channels=self.settings.gcnn_channels or None,
                                dropout=self.settings.gcnn_dropout)


@register_task("z2cnn")
class Z2CnnTask(RotatedMnistTask):
    """Z2CNN, P4CNN's plain baseline: seven convolutions of 20 channels, dropout."""

    @dataclasses.dataclass
    class Settings(RotatedMnistTask.Settings):
        z2cnn_channels: int = setting(gcnn.Z2CNN_CHANNELS, "Channels per convolution of Z2CNN.",
                                      check=at_least(1), resume=MODEL)
        z2cnn_dropout: float = setting(gcnn.Z2CNN_DROPOUT,
                                       "Dropout after each hidden layer of Z2CNN.",
                                       check=(_rate, "a float in [0, 1)"))

    def build_model(self, pretrained):
        return gcnn.build_z2cnn(self.image_shape(), seed=self.seed,
                                channels=self.settings.z2cnn_channels,
                                dropout=self.settings.z2cnn_dropout)
