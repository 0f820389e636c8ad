"""Matrix capsules with EM routing (Hinton, Sabour and Frosst 2018), on smallNORB and MNIST.

`em_capsnet_smallnorb` is the paper's network on 32x32 smallNORB crops;
`em_capsnet_mnist` is the same family on 28x28 MNIST digits. Both default
to the small size (A=64, B=8, C=D=16); `--em_sizes=32,32,32,32` is the
paper's model.
"""

import dataclasses

from capskeras.data import mnist
from capskeras.data import smallnorb
from capskeras.models.em_capsnet import EmCapsNet
from capskeras.models.em_capsnet import SMALL
from capskeras.settings import MODEL
from capskeras.settings import at_least
from capskeras.settings import setting
from capskeras.tasks.base import register_task
from capskeras.tasks.mnist import MnistTask
from capskeras.tasks.smallnorb import SmallNorbTask

SIZE_NAMES = ("conv_channels", "primary_types", "conv1_types", "conv2_types")
DEFAULT_SIZES = ",".join(str(SMALL[name]) for name in SIZE_NAMES)


def _sizes(text):
    """`"A,B,C,D"` -> the four sizes, or None when it is not four ints >= 1."""
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except (AttributeError, ValueError):
        return None
    return sizes if len(sizes) == 4 and min(sizes) >= 1 else None


def _positive(value):
    return value > 0


@dataclasses.dataclass
class EmSettings:
    """The settings both EM tasks add, as a mixin of their `Settings`."""

    em_sizes: str = setting(
        DEFAULT_SIZES, "EM capsules: A,B,C,D (conv channels, primary, conv-capsule 1 and 2 "
        "types); 32,32,32,32 is the paper's model.",
        check=(lambda text: _sizes(text) is not None, "four comma-separated ints >= 1"),
        resume=MODEL)
    em_iterations: int = setting(3, "EM capsules: EM routing iterations per capsule layer.",
                                 check=at_least(1), resume=MODEL)
    em_inverse_temperature: float = setting(
        0.01, "EM capsules: inverse temperature lambda of the last EM iteration.",
        check=(_positive, "a float > 0"), resume=MODEL)
    spread_margin_steps: int = setting(
        10000, "EM capsules: training steps over which the spread loss's margin grows "
        "from 0.2 to 0.9.", check=at_least(1))


def _build(task, num_classes):
    settings = task.settings
    model = EmCapsNet(
        task.image_shape(), num_classes,
        **dict(zip(SIZE_NAMES, _sizes(settings.em_sizes))),
        routing_iterations=settings.em_iterations,
        inverse_temperature=settings.em_inverse_temperature,
        margin_steps=settings.spread_margin_steps,
        name="em_capsnet",
    )
    model.build((None,) + task.image_shape())
    return model


@register_task("em_capsnet_smallnorb")
class EmCapsNetSmallNorbTask(SmallNorbTask):
    """The paper's matrix-capsule network on smallNORB's 5 categories."""

    @dataclasses.dataclass
    class Settings(SmallNorbTask.Settings, EmSettings):
        pass

    def build_model(self, pretrained):
        return _build(self, smallnorb.NUM_CLASSES)


@register_task("em_capsnet_mnist")
class EmCapsNetMnistTask(MnistTask):
    """The matrix-capsule network on MNIST digits."""

    @dataclasses.dataclass
    class Settings(MnistTask.Settings, EmSettings):
        pass

    def build_model(self, pretrained):
        return _build(self, mnist.NUM_CLASSES)
