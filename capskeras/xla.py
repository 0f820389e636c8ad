"""XLA compilation of one hot function, on the backends that have it.

Compiling a whole CapsNet with XLA slows its CPU convolution backprop many
times over, while compiling the routing alone speeds it up: the compiler
fuses its element-wise work and writes the predictions in the layout the
routing reads. `compiled` compiles just such a function and leaves the rest
of the model to the backend's own kernels.

SavedModel exports are traced inside `disabled()`: TensorFlow Serving runs
XLA clusters only behind an experimental flag, so exported graphs hold the
plain kernels.
"""

import contextlib
import functools
import threading

import keras

_state = threading.local()


@contextlib.contextmanager
def disabled():
    """Within this context, functions from `compiled` run their fallback.

    It acts when a function is traced (or run eagerly), so trace the graphs
    that must not hold XLA clusters inside it.

    Example:

    ```python
    with capskeras.xla.disabled():
        archive.add_endpoint("serve", serve, input_signature)
    ```
    """
    previous = getattr(_state, "disabled", False)
    _state.disabled = True
    try:
        yield
    finally:
        _state.disabled = previous


def is_enabled():
    """Whether a function from `compiled` would run compiled here."""
    return keras.backend.backend() == "tensorflow" and not getattr(_state, "disabled", False)


def compiled(function, fallback=None):
    """Returns `function` compiled with XLA on the TensorFlow backend.

    On TensorFlow the result calls a `tf.function(jit_compile=True)`: called
    inside a traced Keras step it becomes one XLA cluster in that graph,
    compiled once per distinct input shape (a fraction of a second), and
    TensorFlow differentiates through it. On other backends, and inside
    `disabled()`, it calls `fallback` instead.

    Python arguments (ints, bools) are static: each distinct value gets its
    own trace.

    Args:
        function: a pure function of tensors written with `keras.ops`, its
            Python control flow depending on Python values only (AutoGraph
            is off).
        fallback: a function with the same signature and results, for when
            XLA is not used; one whose formulation suits the backend's own
            kernels. Defaults to `function`.

    Returns:
        A function with the same signature and results.

    Example:

    ```python
    route = compiled(fused_routing, fallback=routing)
    outputs = route(capsules, kernel, 3)
    ```
    """
    fallback = function if fallback is None else fallback
    compiled_function = None

    @functools.wraps(function)
    def call(*args, **kwargs):
        nonlocal compiled_function
        if not is_enabled():
            return fallback(*args, **kwargs)
        if compiled_function is None:
            import tensorflow as tf  # Only on the TensorFlow backend.

            compiled_function = tf.function(function, jit_compile=True, autograph=False)
        return compiled_function(*args, **kwargs)

    return call
