"""XLA compilation of one hot function, on the backends that have it.

Compiling a whole CapsNet with XLA slows its CPU convolution backprop many
times over, while compiling the routing alone speeds up a training step: the
compiler fuses the element-wise work of routing by agreement and its
gradient. `compiled` compiles just such a function and leaves the rest of
the model to the backend's own kernels.
"""

import functools

import keras

_compiled = {}


def compiled(function):
    """Returns `function` compiled with XLA on the TensorFlow backend.

    On TensorFlow the result is a `tf.function(jit_compile=True)`: called
    inside a traced Keras step it becomes one XLA cluster in that graph,
    compiled once per distinct input shape, and TensorFlow differentiates
    through it. On other backends `function` is returned unchanged.

    Python arguments (ints, bools) are static: each distinct value gets its
    own trace. Tensor arguments must have the same dtypes and ranks on
    every call for the trace to be reused.

    Args:
        function: a pure function of tensors written with `keras.ops`.

    Returns:
        A function with the same signature and results.

    Example:

    ```python
    route = compiled(route_by_agreement)
    outputs, couplings = route(capsules, kernel, 3)
    ```
    """
    if keras.backend.backend() != "tensorflow":
        return function

    @functools.wraps(function)
    def call(*args, **kwargs):
        if function not in _compiled:
            import tensorflow as tf  # Only on the TensorFlow backend.

            _compiled[function] = tf.function(
                function, jit_compile=True, reduce_retracing=True
            )
        return _compiled[function](*args, **kwargs)

    return call
