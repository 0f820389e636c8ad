"""The trainer's absl flags: one per trainer setting and per task setting.

Nothing is defined at import. `define_flags()` defines the trainer's flags
and every registered task's on a `FlagValues` (absl's global `FLAGS` in the
`capskeras-train` binary); `--helpfull` then lists the trainer's flags and
each task's under its own name. A setting several tasks share (such as
`--pad_to`) is one flag, listed under each of them.

`config_from_flags()` reads parsed flags back into a `TrainConfig`;
`config_from_arguments()` and `config_from_flagfile()` parse arguments or a
flagfile into a `TrainConfig` without touching the global flags.
"""

import dataclasses

from absl import flags as absl_flags

from capskeras import tasks
from capskeras.training.config import TrainConfig
from capskeras.training.config import trainer_fields

TRAINER_HELP_MODULE = "capskeras-train"


def task_help_module(name):
    """The name `--helpfull` lists task `name`'s flags under."""
    return f"capskeras-train --model={name}"


def define_flags(flag_values):
    """Defines the trainer's and every registered task's flags on `flag_values`."""
    _define(trainer_fields(), TRAINER_HELP_MODULE, flag_values)
    for name, task_class in sorted(tasks.TASKS.items()):
        _define(dataclasses.fields(task_class.Settings), task_help_module(name), flag_values)


def _define(fields, module_name, flag_values):
    for field in fields:
        if field.name in flag_values:
            _check_same_setting(field, flag_values[field.name], module_name)
            flag_values.register_flag_by_module(module_name, flag_values[field.name])
            continue
        help_text = field.metadata["help"]
        default = field.default
        choices = field.metadata.get("choices")
        common = dict(flag_values=flag_values, module_name=module_name)
        if choices and field.type is str:
            absl_flags.DEFINE_enum(field.name, default, choices, help_text, **common)
        elif field.type is bool:
            absl_flags.DEFINE_boolean(field.name, default, help_text, **common)
        elif field.type is int:
            absl_flags.DEFINE_integer(field.name, default, help_text, **common)
        elif field.type is float:
            absl_flags.DEFINE_float(field.name, default, help_text, **common)
        elif field.type is tuple:
            absl_flags.DEFINE_list(field.name, [str(v) for v in default], help_text, **common)
        else:
            absl_flags.DEFINE_string(field.name, default, help_text, **common)


def _check_same_setting(field, flag, module_name):
    """A setting several tasks share must mean one thing: same default and help."""
    default = [str(v) for v in field.default] if field.type is tuple else field.default
    if flag.default != default or not flag.help.endswith(field.metadata["help"]):
        raise ValueError(
            f"Received: setting {field.name!r} of {module_name!r} with default {default!r} "
            f"and help {field.metadata['help']!r}; another task defines --{field.name} with "
            f"default {flag.default!r} and help {flag.help!r}. Expected the same, or "
            "another name"
        )


def config_from_flags(flag_values):
    """A `TrainConfig` from parsed flags.

    Raises:
        ValueError: an unknown `--model`, a malformed list, or a setting of
            another task given a value other than its default.
    """
    model = flag_values["model"].value
    task_class = tasks.get_task(model)
    own = {field.name: field for field in dataclasses.fields(task_class.Settings)}
    trainer = {field.name for field in trainer_fields()}
    for name, task_other in sorted(tasks.TASKS.items()):
        for field in dataclasses.fields(task_other.Settings):
            flag = flag_values[field.name]
            if (field.name not in own and field.name not in trainer and flag.present
                    and flag.value != flag.default):
                owners = sorted(other for other, task in tasks.TASKS.items()
                                if field.name in {f.name for f in dataclasses.fields(task.Settings)})
                raise ValueError(
                    f"Received: --{field.name}={_text(flag.value)} with --model={model}; it is "
                    f"a setting of {owners}. Expected the settings of {model!r}: {sorted(own)}"
                )
    values = {name: flag_values[name].value for name in trainer}
    settings = {name: _parsed(field, flag_values[name].value) for name, field in own.items()}
    return TrainConfig(settings=task_class.Settings(**settings), **values)


def _parsed(field, value):
    return parse_ints(field.name, value) if field.type is tuple else value


def parse_ints(name, items):
    """The strings of list flag `name` as a tuple of ints; a clear error otherwise."""
    try:
        return tuple(int(item) for item in items)
    except ValueError:
        raise ValueError(
            f"Received: {name}={','.join(items)}; expected comma-separated ints"
        ) from None


def _text(value):
    return ",".join(value) if isinstance(value, list) else value


def config_from_arguments(arguments=()):
    """The `TrainConfig` of command-line `--flag=value` arguments.

    Parses into a fresh `FlagValues`, so absl's global flags are untouched;
    unset flags keep their defaults.

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
