"""Settings dataclasses: typed fields with help, checks and resume rules.

The trainer's own settings (`capskeras.training.config.TrainConfig`) and
each task's (`capskeras.tasks`) are dataclasses of `setting(...)` fields.
One declaration gives the default, the absl flag's help text, the accepted
values (checked by `validate()`, with errors that name the value and what
is accepted) and what a change of the value means for a run that resumes.

    @dataclasses.dataclass
    class MySettings(Settings):
        depth: int = setting(3, "Layers of the encoder.", check=at_least(1),
                             resume=MODEL)

`dtype_policy(precision)` applies the one setting that acts on Keras's
global state while a model is built and run: its dtype policy.
"""

import contextlib
import dataclasses

import keras

# What changing a setting between a run and its resumption means:
FREE = "free"  # nothing: paths, verbosity, the number of epochs.
RUN = "run"  # the run's arithmetic; a resume refuses unless told to continue.
MODEL = "model"  # the model's variables; a resume always refuses.
RESUME_RULES = (FREE, RUN, MODEL)

_TYPE_NAMES = {int: "an int", float: "a float", str: "a string", bool: "a bool", tuple: "a tuple"}


def setting(default, help, check=None, choices=None, resume=RUN):
    """A settings field.

    Args:
        default: the default value; lists become tuples.
        help: one line, the flag's help text.
        check: optional `(accepts, expected)`: a predicate on the value and
            the words for what it accepts, as from `at_least`.
        choices: optional sequence of the accepted values.
        resume: one of `FREE`, `RUN`, `MODEL` (see above).
    """
    if resume not in RESUME_RULES:
        raise ValueError(f"Received: resume={resume!r}; expected one of {RESUME_RULES}")
    metadata = {"help": help, "check": check, "resume": resume,
                "choices": tuple(choices) if choices is not None else None}
    if isinstance(default, (list, tuple)):
        return dataclasses.field(default=tuple(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def at_least(minimum):
    """A `check` accepting numbers >= `minimum`."""
    kind = "an int" if isinstance(minimum, int) else "a float"
    return (lambda value: value >= minimum, f"{kind} >= {minimum}")


@dataclasses.dataclass
class Settings:
    """Base of settings dataclasses: validation and flat serialization."""

    def validate(self):
        """Raises ValueError naming the first bad value and what is accepted."""
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not _has_type(value, field.type):
                raise ValueError(
                    f"Received: {field.name}={value!r}; expected {_TYPE_NAMES[field.type]}"
                )
            choices = field.metadata.get("choices")
            if choices and value not in choices:
                raise ValueError(
                    f"Received: {field.name}={value!r}; expected one of {list(choices)}"
                )
            check = field.metadata.get("check")
            if check is not None and not check[0](value):
                raise ValueError(f"Received: {field.name}={value!r}; expected {check[1]}")
        return self

    def to_dict(self):
        return dataclasses.asdict(self)


@contextlib.contextmanager
def dtype_policy(policy):
    """Within this context, Keras builds layers under `policy`; the previous one is restored after.

    Args:
        policy: a Keras dtype policy or its name (`"float32"`,
            `"mixed_float16"`, `"mixed_bfloat16"`).
    """
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _has_type(value, expected):
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)
