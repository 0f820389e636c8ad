"""The trainer's absl flags, one per `TrainConfig` field.

Importing this module defines the flags on absl's global `FLAGS`; none is
required at import time, so tools and tests can import it freely.
`config_from_flags()` reads them back into a `TrainConfig` once absl has
parsed the command line; `config_from_arguments()` and
`config_from_flagfile()` read arguments or a flagfile into a `TrainConfig`
without touching the global flags.
"""

import dataclasses

from absl import flags as absl_flags

from capskeras.training.config import TrainConfig

FLAGS = absl_flags.FLAGS


def define_flags(flag_values=FLAGS):
    """Defines one flag per `TrainConfig` field on `flag_values`."""
    for field in dataclasses.fields(TrainConfig):
        if field.name in flag_values:
            continue
        help_text = field.metadata["help"]
        default = field.default
        choices = field.metadata.get("choices")
        if choices:
            absl_flags.DEFINE_enum(field.name, default, choices, help_text, flag_values=flag_values)
        elif field.type is bool:
            absl_flags.DEFINE_boolean(field.name, default, help_text, flag_values=flag_values)
        elif field.type is int:
            absl_flags.DEFINE_integer(field.name, default, help_text, flag_values=flag_values)
        elif field.type is float:
            absl_flags.DEFINE_float(field.name, default, help_text, flag_values=flag_values)
        elif field.type is tuple:
            absl_flags.DEFINE_list(
                field.name, [str(v) for v in default], help_text, flag_values=flag_values
            )
        else:
            absl_flags.DEFINE_string(field.name, default, help_text, flag_values=flag_values)


def config_from_flags(flag_values=FLAGS):
    """A `TrainConfig` from parsed flags; bad list items raise ValueError."""
    values = {}
    for field in dataclasses.fields(TrainConfig):
        value = flag_values[field.name].value
        if field.type is tuple:
            try:
                value = tuple(int(item) for item in value)
            except ValueError:
                raise ValueError(
                    f"Received: {field.name}={','.join(value)}; expected comma-separated ints"
                ) from None
        values[field.name] = value
    return TrainConfig(**values)


def config_from_arguments(arguments=()):
    """The `TrainConfig` of command-line `--flag=value` arguments.

    Parses into a fresh `FlagValues`, so absl's global flags are untouched;
    unset flags keep the trainer's defaults.

    Raises:
        ValueError: an argument names an unknown flag or a malformed value.
    """
    flag_values = absl_flags.FlagValues()
    define_flags(flag_values)
    try:
        flag_values(["capskeras", *arguments])
    except absl_flags.Error as error:
        raise ValueError(f"Received: {list(arguments)}; {error}") from None
    return config_from_flags(flag_values)


def config_from_flagfile(path, overrides=()):
    """The `TrainConfig` of flagfile `path`, with `--flag=value` overrides after it.

    Raises:
        ValueError: the file is missing or a flag in it or in `overrides`
            is unknown or malformed.
    """
    try:
        with open(path):
            pass
    except OSError as error:
        raise ValueError(f"Received: flagfile={str(path)!r}; {error}") from None
    return config_from_arguments([f"--flagfile={path}", *overrides])


define_flags()
