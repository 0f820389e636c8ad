"""The trainer's configuration: its own settings plus the task's.

`TrainConfig` holds what every run has (epochs, batch, optimizer, paths,
strategy, checkpoints) and, in `settings`, the chosen task's own settings
dataclass. `capskeras.training.flags` turns both into absl flags of the same
names, so the command line, flagfiles and Python share defaults, help texts
and checks:

    config = TrainConfig.from_flat(model="study", encoder="deep_bp", head="class", epochs=2)
"""

import dataclasses
import json

from capskeras import tasks
from capskeras.settings import FREE
from capskeras.settings import MODEL
from capskeras.settings import Settings
from capskeras.settings import at_least
from capskeras.settings import setting
from capskeras.training import epoch_eval
from capskeras.training.strategy import STRATEGIES

# Keras dtype policies, and "auto": `capskeras.precision.auto_precision` picks one per machine.
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16", "auto")


@dataclasses.dataclass
class TrainConfig(Settings):
    """Everything one training run needs; see each field's help.

    `settings` is the task's `Settings` instance; None gives its defaults.
    """

    model: str = setting("study", "Model family, a task name in capskeras.tasks.TASKS.",
                         resume=MODEL)
    experiment: str = setting(
        "", "Name of the run; defaults to the task's (enc_<encoder>_dec_<head> for the study).",
        resume=FREE,
    )
    epochs: int = setting(1, "Epochs of the model's training (after any pretraining).",
                          check=at_least(1), resume=FREE)
    train_examples: int = setting(0, "Use only the first N training examples; 0 for all.",
                                  check=at_least(0))
    validation_examples: int = setting(
        0, "Hold out the last N training examples as a validation split, never trained on and "
        "evaluated after every epoch; 0 for none.", check=at_least(0))
    eval_examples: int = setting(
        0, "Evaluate on the first N test (and validation) examples; 0 for all.",
        check=at_least(0), resume=FREE)
    eval_each_epoch: str = setting(
        "", "After every epoch, the model's accuracy on these test sets, as <dataset>_accuracy "
        "in history.json: comma-separated, of mnist, mnist_shifted (the test digits shifted by "
        "up to --translate_pixels, seeded once), affnist, affnist_regen[/config]; empty for "
        "none. See capskeras.training.epoch_eval.",
        check=(epoch_eval.accepts, epoch_eval.EXPECTED), resume=FREE)
    eval_each_epoch_examples: int = setting(
        0, "--eval_each_epoch: the first N examples of each test set; 0 for all.",
        check=at_least(0), resume=FREE)
    eval_each_epoch_svm_examples: int = setting(
        5000, "--eval_each_epoch, models without class outputs (SparseCaps): fit the RBF SVM "
        "read-out on the codes of the first N training digits after every epoch.",
        check=at_least(1), resume=FREE)
    batch_size: int = setting(128, "Global batch size, split across replicas.", check=at_least(1))
    learning_rate: float = setting(
        1e-3, "Adam's initial learning rate.", check=(lambda v: v > 0, "a float > 0")
    )
    learning_rate_decay: float = setting(
        1.0, "Exponential decay of the learning rate per epoch; 1.0 keeps it constant.",
        check=(lambda v: 0 < v <= 1, "a float in (0, 1]"),
    )
    seed: int = setting(0, "Seeds initializers, shuffling and augmentation.")
    data_dir: str = setting(
        "", "Prepared TFDS directory; empty for $TFDS_DATA_DIR or TFDS's default.", resume=FREE
    )
    download: bool = setting(True, "Let TFDS download the dataset when it is missing.",
                             resume=FREE)
    model_dir: str = setting(
        "", "Checkpoints, logs, flags and metrics; defaults to runs/<experiment>.", resume=FREE
    )
    export_dir: str = setting(
        "", "Export a SavedModel to <export_dir>/<version>/; empty to skip.", resume=FREE
    )
    distribution_strategy: str = setting(
        "default", "tf.distribute strategy; multi_worker reads the cluster from TF_CONFIG.",
        choices=STRATEGIES,
    )
    collective_timeout_seconds: int = setting(
        0, "multi_worker: a collective that waits longer than this for a peer worker fails "
        "(exit code 4); 0 for none. TensorFlow holds a thread per collective this long.",
        check=at_least(0), resume=FREE,
    )
    cpu_devices: int = setting(
        0, "Split the host CPU into N logical devices (to try mirrored on one CPU); 0 leaves it whole.",
        check=at_least(0),
    )
    jit_compile: bool = setting(False, "Compile the train step with XLA.", resume=FREE)
    precision: str = setting(
        "float32", "Keras dtype policy; auto: mixed_bfloat16 where the GPU (compute capability "
        ">= 8.0) or CPU (AMX, AVX-512 BF16) multiplies bfloat16, float32 elsewhere. A run "
        "records the policy auto chose, and resumes under it on any machine.",
        choices=PRECISIONS, resume=MODEL)
    checkpoint_every_steps: int = setting(
        250, "Also checkpoint every N steps within an epoch (with the input position); "
        "0 for epoch ends only.", check=at_least(0), resume=FREE,
    )
    keep_checkpoints: int = setting(3, "Checkpoints kept in <model_dir>/checkpoints.",
                                    check=at_least(1), resume=FREE)
    allow_setting_changes: bool = setting(
        False, "Resume a run under settings that change its arithmetic (batch, learning "
        "rate, ...) instead of refusing.", resume=FREE,
    )
    deterministic: bool = setting(
        False, "Run TensorFlow ops deterministically (slower; for the whole process), for "
        "bit-reproducible runs.",
        resume=FREE,
    )
    pretrain_only: bool = setting(
        False, "Stop after the pretraining stages: their checkpoints and metrics.json, no model, "
        "model.keras or export (for tools/study_heads.py, or a later run that trains the model).",
        resume=FREE,
    )
    plot_reconstructions: bool = setting(
        True, "Reconstruction models: save test digits beside their reconstructions as a PNG.",
        resume=FREE,
    )
    verbose: int = setting(
        -1, "Progress: 0 silent, 1 progress bar, 2 a line per epoch, -1 auto.",
        choices=(-1, 0, 1, 2), resume=FREE,
    )
    settings: object = None

    def __post_init__(self):
        task_class = tasks.TASKS.get(self.model)
        if task_class is not None:
            if self.settings is None:
                self.settings = task_class.Settings()
            if not self.experiment and isinstance(self.settings, task_class.Settings):
                self.experiment = task_class.default_experiment(self.settings)
        if not self.model_dir and self.experiment:
            self.model_dir = f"runs/{self.experiment}"

    def task(self):
        """The `Task` this configuration trains; a clear error for a bad model or settings."""
        return tasks.get_task(self.model)(self.settings, seed=self.seed)

    def validate(self):
        """Checks the trainer's and the task's settings; returns self."""
        tasks.get_task(self.model)
        super().validate()
        self.task()
        return self

    @classmethod
    def from_flat(cls, **values):
        """A config from one flat mapping of trainer and task setting names.

        Raises:
            ValueError: a name is neither a trainer setting nor one of the
                task's.
        """
        model = values.get("model", "study")
        task_class = tasks.get_task(model)
        trainer_names = {field.name for field in trainer_fields()}
        task_names = {field.name for field in dataclasses.fields(task_class.Settings)}
        unknown = sorted(set(values) - trainer_names - task_names)
        if unknown:
            raise ValueError(
                f"Received: settings {unknown} for model={model!r}; expected trainer settings "
                f"or the task's own: {sorted(task_names)}"
            )
        settings = task_class.Settings(**{k: v for k, v in values.items() if k in task_names})
        return cls(settings=settings, **{k: v for k, v in values.items() if k in trainer_names})

    def to_flat(self):
        """Trainer and task settings as one flat dict (the task's after the trainer's)."""
        flat = {field.name: getattr(self, field.name) for field in trainer_fields()}
        flat.update(dataclasses.asdict(self.settings))
        return flat

    def to_json(self):
        return json.dumps(self.to_flat(), indent=2, sort_keys=True)

    def to_flagfile(self):
        """The configuration as absl flag lines, reusable with --flagfile."""
        lines = []
        for name, value in self.to_flat().items():
            if isinstance(value, bool):
                lines.append(f"--{name}" if value else f"--no{name}")
            elif isinstance(value, tuple):
                lines.append(f"--{name}={','.join(str(v) for v in value)}")
            else:
                lines.append(f"--{name}={value}")
        return "\n".join(lines) + "\n"


def trainer_fields():
    """The trainer's own setting fields (all but `settings`)."""
    return [field for field in dataclasses.fields(TrainConfig) if field.name != "settings"]


def setting_fields(config):
    """`{name: field}` of every trainer and task setting of `config`."""
    fields = {field.name: field for field in trainer_fields()}
    fields.update({field.name: field for field in dataclasses.fields(config.settings)})
    return fields
