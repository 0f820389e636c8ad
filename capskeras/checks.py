"""Argument checks shared by layers, data pipelines and evaluation."""


def check_positive_int(name, value):
    """Raises ValueError unless `value` is an int >= 1 (a bool is not)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"Received: {name}={value!r}; expected an int >= 1")
