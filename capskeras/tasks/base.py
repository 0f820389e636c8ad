"""Tasks: what the trainer needs to know of a model family, and nothing more.

A task owns everything model-specific: its settings (a `Settings`
dataclass, whose fields become the trainer's flags), their validation, its
model, its inputs, and any training stages before the model's own (the
k-sparse autoencoder today), and where the frozen encoder that
`tools/study_heads.py` trains heads on comes from (`frozen_encoder`,
`heads_model`). The trainer owns the loop: strategy, steps, checkpoints,
resume, logs, evaluation and export. It finds a task by name in `TASKS`,
and knows no family by name.

    @register_task("my_family")
    class MyTask(MnistTask):
        @dataclasses.dataclass
        class Settings(MnistTask.Settings):
            width: int = setting(32, "Filters of each layer.", check=at_least(1),
                                 resume=MODEL)

        def build_model(self, pretrained):
            return my_models.build(self.image_shape(), self.settings.width)

After Model Garden's `official/core` `Task` and keras-hub's `Task`, in a
fraction of their size.
"""

import dataclasses
from typing import Callable

from capskeras.models import registry
from capskeras.models.contract import check_supports
from capskeras.models.study import frozen_under_head
from capskeras.settings import Settings

TASKS = {}


@dataclasses.dataclass(frozen=True)
class InputOptions:
    """How the trainer wants a split: batch, size, order and where the data is.

    Attributes:
        batch_size: the global batch size.
        num_examples: use only the first N examples; None for all.
        seed: seeds the shuffle and the augmentation.
        data_dir: a prepared TFDS directory; None for `$TFDS_DATA_DIR`.
        download: let TFDS download missing data.
        validation_examples: the last N digits of the training split are
            the `"validation"` split, never trained on; 0 for none.
    """

    batch_size: int
    num_examples: int = None
    seed: int = 0
    data_dir: str = None
    download: bool = True
    validation_examples: int = 0


SPLITS = ("train", "validation", "test")


@dataclasses.dataclass
class Stage:
    """A training stage that runs before the model's own training.

    The trainer trains, checkpoints and resumes each stage like the main
    one, under `<model_dir>/<name>/`, and passes `result(model)` on to
    `Task.build_model` as `pretrained[name]`.

    Attributes:
        name: the stage's directory and its key in `pretrained`.
        epochs: how many epochs it trains.
        build_model: `() -> keras.Model`, uncompiled, following the model
            contract (`capskeras.models.contract`).
        result: `(trained model) -> object` handed to later stages.
        callbacks: `() -> list` of Keras callbacks for its training.
    """

    name: str
    epochs: int
    build_model: Callable
    result: Callable
    callbacks: Callable = list


@dataclasses.dataclass
class FrozenEncoder:
    """Where a run's frozen encoder comes from, for heads trained on its code.

    `tools/study_heads.py` restores the checkpoint of `stage` (the model's
    own training when None) into `build_model()`, takes `result(model)` as
    the encoder, and puts each head on it with `Task.heads_model`.

    Attributes:
        name: the encoder's name, in output names and metrics.
        stage: the `Stage` whose checkpoints hold its weights; None for the
            model's own training.
        build_model: `() -> keras.Model` the checkpoints were written from;
            None for an encoder that is never trained (`heads_model` then
            builds it from the task's seed).
        result: `(restored model) -> encoder`.
    """

    name: str
    stage: str = None
    build_model: Callable = None
    result: Callable = None


class Task:
    """A model family the trainer can train; subclass and `register_task` it.

    Class attributes:
        Settings: the family's settings dataclass (a `capskeras.settings.Settings`).
        name: set by `register_task`.

    Args:
        settings: an instance of `Settings`; validated here.
        seed: int, seeds the model's initializers where the family uses one.
    """

    Settings = Settings
    name = None

    def __init__(self, settings=None, seed=0):
        self.seed = seed
        settings = self.Settings() if settings is None else settings
        if type(settings) is not self.Settings:
            raise TypeError(
                f"Received: settings of type {type(settings).__name__} for task "
                f"{self.name!r}; expected {self.Settings.__qualname__}"
            )
        self.settings = settings.validate()

    @classmethod
    def default_experiment(cls, settings):
        """The run's name when `--experiment` is not given."""
        return cls.name

    def image_shape(self):
        """`(H, W, C)` of the images the model takes."""
        raise NotImplementedError

    def prepared_builder(self, options):
        """The prepared TFDS builder of the task's data; an error naming how to prepare it."""
        raise NotImplementedError

    def check_data(self, options):
        """Raises an error naming how to prepare the data when it is missing."""
        self.prepared_builder(options)

    def images(self, split, options, shuffle):
        """A batched `tf.data.Dataset` of `(images, labels)` for `split`.

        `split` is one of `SPLITS`; read it through `tfds_split` (or
        `pipeline_arguments`). The training pipeline (`"train"`, shuffled)
        is the one that augments.
        """
        raise NotImplementedError

    def pipeline_arguments(self, split, options, shuffle):
        """What every `capskeras.data` loader takes for `split` under `options`, as keywords.

        `split` (the TFDS split, see `tfds_split`), `batch_size`,
        `data_dir`, `download`, `num_examples`, `shuffle` and `seed`.
        """
        return dict(split=self.tfds_split(split, options), batch_size=options.batch_size,
                    data_dir=options.data_dir, download=options.download,
                    num_examples=options.num_examples, shuffle=shuffle, seed=options.seed)

    def tfds_split(self, split, options):
        """The TFDS split that `split` reads under `options`.

        With `options.validation_examples = N`, `"train"` is the dataset's
        training split less its last N examples and `"validation"` those N;
        `"test"` is the test split. Raises a ValueError naming the value
        when the split is unknown, or when N leaves no training examples.
        """
        if split not in SPLITS:
            raise ValueError(f"Received: split={split!r}; expected one of {SPLITS}")
        held_out = options.validation_examples
        if split == "test" or (split == "train" and not held_out):
            return split
        if not held_out:
            raise ValueError("Received: split='validation' with validation_examples=0; "
                             "expected validation_examples >= 1 to hold a validation split out")
        size = self.prepared_builder(options).info.splits["train"].num_examples
        if held_out >= size:
            raise ValueError(
                f"Received: validation_examples={held_out}; expected fewer than the {size} "
                "examples of the training split")
        return f"train[:{size - held_out}]" if split == "train" else f"train[{size - held_out}:]"

    def num_examples(self, split, options):
        """How many examples one epoch of `split` holds under `options`."""
        size = self.prepared_builder(options).info.splits[
            self.tfds_split(split, options)].num_examples
        return min(size, options.num_examples or size)

    def pretraining(self):
        """The `Stage`s that train before the model; none by default."""
        return []

    def build_model(self, pretrained):
        """The model to train, uncompiled, following the model contract.

        Args:
            pretrained: dict of the earlier stages' results, by stage name.
        """
        raise NotImplementedError

    def frozen_encoder(self):
        """Where the run's frozen encoder comes from (`FrozenEncoder`), for heads on its code.

        By default, the trained model's `heads_encoder()` (an optional
        member of the model contract), restored from the model's own
        checkpoints.
        """
        def result(model):
            return check_supports(model, "heads_encoder",
                                  purpose="Training heads on its frozen code").heads_encoder()

        return FrozenEncoder(self.name, build_model=lambda: self.build_model({}), result=result)

    def heads_model(self, encoder, head, encoder_name=None):
        """A built study model: `encoder` frozen under a new head from `capskeras.models.HEADS`.

        Args:
            encoder: the `FrozenEncoder`'s result.
            head: a head name.
            encoder_name: names the model `enc_<encoder_name>_dec_<head>`;
                defaults to the task's name.
        """
        shape = self.image_shape()
        return frozen_under_head(encoder, registry.build_head(head, shape), shape,
                                 name=f"enc_{encoder_name or self.name}_dec_{head}")


def register_task(name):
    """Class decorator registering a `Task` subclass under `name`."""

    def decorate(task_class):
        if name in TASKS:
            raise ValueError(f"Received: task name {name!r}; it is already registered")
        task_class.name = name
        TASKS[name] = task_class
        return task_class

    return decorate


def get_task(name):
    """The `Task` class registered under `name`; a clear error otherwise."""
    if name not in TASKS:
        raise ValueError(f"Received: model={name!r}; expected one of {sorted(TASKS)}")
    return TASKS[name]


def build_model(name, seed=0, **settings):
    """The uncompiled model of task `name`, its pretraining stages skipped.

    For trying a family outside the trainer: `build_model("capsnet",
    pad_to=40)` is the model `--model=capsnet --pad_to=40` trains.

    Args:
        name: a registered task name.
        seed: seeds the initializers where the family uses one.
        **settings: fields of the task's `Settings`; the rest keep their
            defaults.
    """
    task_class = get_task(name)
    return task_class(task_class.Settings(**settings), seed=seed).build_model({})
