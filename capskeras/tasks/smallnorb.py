"""The base of tasks that train on smallNORB: its settings and its pipelines."""

import dataclasses

from capskeras.data import smallnorb
from capskeras.settings import at_least
from capskeras.settings import setting
from capskeras.tasks.base import Task


class SmallNorbTask(Task):
    """A task on smallNORB's five categories, preprocessed as for matrix capsules.

    Images are the left camera's, resized to 48x48, standardised per image
    and cropped to 32x32: at random with brightness and contrast jitter for
    training, in the centre for evaluation (`capskeras.data.smallnorb`).
    Subclass it and `register_task` the subclass with a `build_model`.
    """

    @dataclasses.dataclass
    class Settings(Task.Settings):
        brightness_delta: float = setting(
            smallnorb.BRIGHTNESS_DELTA,
            "smallNORB training: largest random brightness offset, in standard deviations.",
            check=at_least(0.0),
        )
        contrast_lower: float = setting(
            smallnorb.CONTRAST_RANGE[0],
            "smallNORB training: smallest random contrast factor.", check=at_least(0.0),
        )
        contrast_upper: float = setting(
            smallnorb.CONTRAST_RANGE[1],
            "smallNORB training: largest random contrast factor.", check=at_least(0.0),
        )

        def validate(self):
            super().validate()
            if self.contrast_lower > self.contrast_upper:
                raise ValueError(
                    f"Received: contrast_lower={self.contrast_lower}, contrast_upper="
                    f"{self.contrast_upper}; expected contrast_lower <= contrast_upper"
                )
            return self

    def image_shape(self):
        return smallnorb.IMAGE_SHAPE

    def prepared_builder(self, options):
        return smallnorb.prepared_builder(data_dir=options.data_dir, download=options.download)

    def images(self, split, options, shuffle):
        return smallnorb.load_smallnorb(
            **self.pipeline_arguments(split, options, shuffle),
            augment=split == "train" and shuffle,
            brightness_delta=self.settings.brightness_delta,
            contrast_range=(self.settings.contrast_lower, self.settings.contrast_upper),
        )
