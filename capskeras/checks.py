"""Argument checks shared by layers, data pipelines and evaluation."""


def check_positive_int(name, value):
    """Raises ValueError unless `value` is an int >= 1 (a bool is not)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"Received: {name}={value!r}; expected an int >= 1")


def check_non_negative_int(name, value):
    """Raises ValueError unless `value` is an int >= 0 (a bool is not)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"Received: {name}={value!r}; expected an int >= 0")


def check_positive_float(name, value):
    """Raises ValueError unless `value` is a real number > 0 (a bool is not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"Received: {name}={value!r}; expected a float > 0")


def check_positive_int_pair(name, value):
    """`value` as a pair of ints >= 1 (an int stands for both); ValueError otherwise."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    value = tuple(value)
    if len(value) != 2 or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value
    ):
        raise ValueError(f"Received: {name}={value!r}; expected an int >= 1 or a pair of them")
    return value
