"""The trainer's configuration: one dataclass, the single source of defaults.

`capskeras.training.flags` turns every field into an absl flag of the same
name, so the command line, flagfiles and `train(TrainConfig(...))` in user
code all share these defaults, help texts and checks.
"""

import dataclasses
import json

from capskeras.training.strategy import STRATEGIES

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


def _field(default, help, choices=None):
    metadata = {"help": help}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    if isinstance(default, (list, tuple)):
        return dataclasses.field(default=tuple(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass
class TrainConfig:
    """Everything one training run needs; see each field's help."""

    experiment: str = _field(
        "", "Name of the run; defaults to the model's name, enc_<encoder>_dec_<head> for the study."
    )
    model: str = _field("study", "Model, a name registered in capskeras.models.MODELS.")
    encoder: str = _field("deep_bp", "Study model: encoder, a name in capskeras.models.ENCODERS.")
    head: str = _field("class", "Study model: head, a name in capskeras.models.HEADS.")
    epochs: int = _field(1, "Epochs of the head (and trained-through encoder).")
    train_examples: int = _field(0, "Use only the first N training examples; 0 for all.")
    eval_examples: int = _field(0, "Evaluate on the first N test examples; 0 for all.")
    batch_size: int = _field(128, "Global batch size, split across replicas.")
    learning_rate: float = _field(1e-3, "Adam's initial learning rate.")
    learning_rate_decay: float = _field(
        1.0, "Exponential decay of the learning rate per epoch; 1.0 keeps it constant."
    )
    seed: int = _field(0, "Seeds initializers, shuffling and augmentation.")
    data_dir: str = _field("", "Prepared TFDS directory; empty for $TFDS_DATA_DIR or TFDS's default.")
    download: bool = _field(True, "Let TFDS download the dataset when it is missing.")
    model_dir: str = _field("", "Checkpoints, logs, flags and metrics; defaults to runs/<experiment>.")
    export_dir: str = _field("", "Export a SavedModel to <export_dir>/<version>/; empty to skip.")
    distribution_strategy: str = _field(
        "default", "tf.distribute strategy.", choices=STRATEGIES
    )
    cpu_devices: int = _field(
        0, "Split the host CPU into N logical devices (to try mirrored on one CPU); 0 leaves it whole."
    )
    translate_pixels: int = _field(0, "Random shift of training images, up to N pixels each way.")
    pad_to: int = _field(0, "Centre digits on a black canvas of this side (40 for affNIST); 0 for none.")
    jit_compile: bool = _field(False, "Compile train and predict steps with XLA.")
    precision: str = _field("float32", "Keras dtype policy.", choices=PRECISIONS)
    ksparse_k: tuple = _field(
        (640, 320, 32), "k-sparse encoder: units kept per sample in each of the three layers."
    )
    ksparse_alpha: float = _field(1.0, "k-sparse encoder: inference keeps alpha * k units.")
    ksparse_initial_factor: float = _field(
        1.0, "k-sparse encoder: k starts at this multiple and falls linearly to k."
    )
    ksparse_schedule_epochs: int = _field(
        0, "k-sparse encoder: pretraining epochs over which k falls to its target."
    )
    routing_iterations: int = _field(3, "Capsule models: routing-by-agreement iterations.")
    pretrain_epochs: int = _field(1, "Epochs of autoencoder pretraining, for encoders that need it.")
    keep_checkpoints: int = _field(3, "Epoch checkpoints kept in <model_dir>/checkpoints.")
    plot_reconstructions: bool = _field(
        True, "Reconstruction heads: save test digits beside their reconstructions as a PNG."
    )
    verbose: int = _field(-1, "Keras fit verbosity: 0 silent, 1 progress bar, 2 a line per epoch, -1 auto.")

    def __post_init__(self):
        self.ksparse_k = tuple(int(k) for k in self.ksparse_k)
        if not self.experiment:
            self.experiment = (
                f"enc_{self.encoder}_dec_{self.head}" if self.model == "study" else self.model
            )
        if not self.model_dir:
            self.model_dir = f"runs/{self.experiment}"

    def validate(self):
        """Raises ValueError naming the first bad value and what is accepted."""
        from capskeras.models import registry

        registry.model_spec(self.model)
        if self.model == "study":
            registry.encoder_spec(self.encoder)
            registry.build_head(self.head)
        for field in dataclasses.fields(self):
            choices = field.metadata.get("choices")
            value = getattr(self, field.name)
            if not _has_type(value, field.type):
                raise ValueError(
                    f"Received: {field.name}={value!r}; expected {_TYPE_NAMES[field.type]}"
                )
            if choices and value not in choices:
                raise ValueError(
                    f"Received: {field.name}={value!r}; expected one of {list(choices)}"
                )
        _check(self, "epochs", lambda v: v >= 1, "an int >= 1")
        _check(self, "batch_size", lambda v: v >= 1, "an int >= 1")
        _check(self, "train_examples", lambda v: v >= 0, "an int >= 0 (0 for all)")
        _check(self, "eval_examples", lambda v: v >= 0, "an int >= 0 (0 for all)")
        _check(self, "learning_rate", lambda v: v > 0, "a float > 0")
        _check(self, "learning_rate_decay", lambda v: 0 < v <= 1, "a float in (0, 1]")
        _check(self, "cpu_devices", lambda v: v >= 0, "an int >= 0")
        _check(self, "translate_pixels", lambda v: v >= 0, "an int >= 0")
        _check(self, "pad_to", lambda v: v == 0 or v >= 28, "0 or an int >= 28")
        _check(self, "ksparse_k", lambda v: len(v) == 3 and min(v) >= 1, "three ints >= 1")
        _check(self, "ksparse_alpha", lambda v: v >= 1, "a float >= 1")
        _check(self, "ksparse_initial_factor", lambda v: v >= 1, "a float >= 1")
        _check(self, "ksparse_schedule_epochs", lambda v: v >= 0, "an int >= 0")
        _check(self, "routing_iterations", lambda v: v >= 1, "an int >= 1")
        _check(self, "pretrain_epochs", lambda v: v >= 1, "an int >= 1")
        _check(self, "keep_checkpoints", lambda v: v >= 1, "an int >= 1")
        _check(self, "verbose", lambda v: v in (-1, 0, 1, 2), "one of -1, 0, 1, 2")
        return self

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    def to_flagfile(self):
        """The configuration as absl flag lines, reusable with --flagfile."""
        lines = []
        for name, value in dataclasses.asdict(self).items():
            if isinstance(value, bool):
                lines.append(f"--{name}" if value else f"--no{name}")
            elif isinstance(value, tuple):
                lines.append(f"--{name}={','.join(str(v) for v in value)}")
            else:
                lines.append(f"--{name}={value}")
        return "\n".join(lines) + "\n"


_TYPE_NAMES = {int: "an int", float: "a float", str: "a string", bool: "a bool", tuple: "a tuple"}


def _has_type(value, expected):
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def _check(config, name, accepts, expected):
    value = getattr(config, name)
    if not accepts(value):
        raise ValueError(f"Received: {name}={value!r}; expected {expected}")
