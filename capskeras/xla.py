"""XLA compilation of one hot function, and where capskeras uses it.

Compiling a whole CapsNet with XLA slows its CPU convolution backprop many
times over, while compiling the routing alone speeds it up: the compiler
fuses its element-wise work and writes the predictions in the layout the
routing reads. `compiled` compiles just such a function and leaves the rest
of the model to the backend's own kernels.

Layers choose per call whether to use it, from a serialized argument (see
`CapsuleDense`'s `routing_jit_compile`, `PredCaps`' `selection_jit_compile`),
never from global state. Their
`"auto"` setting compiles only inside the train, test and predict steps that
Keras traces for `fit`, `evaluate`, `predict` and the `*_on_batch` methods
(`in_keras_step`), so that every other trace, among them every SavedModel
export (`capskeras.export`, `model.export()`, `tf.saved_model.save`),
holds the plain kernels that TensorFlow Serving runs without extra flags.

All of this is the TensorFlow backend's. On JAX and PyTorch `compiled`
returns its function unchanged and `compiles_now` answers False, so the
layers run their plain `keras.ops` routing or selection, which JAX's `jit` (Keras's
`fit`, `evaluate`, `predict`) compiles with the rest of the step; TensorFlow
is never imported there.
"""

import keras

# The functions in which Keras 3's TensorFlow trainer traces its steps
# (keras/src/backend/tensorflow/trainer.py): `one_step_on_data` for train
# and test steps (and jit-compiled predict steps), the others for predict
# steps. Should a Keras release rename them, `in_keras_step` answers False
# and the "auto" setting falls back to the plain kernels: slower, never
# wrong; tests/test_xla.py then fails.
# `capskeras_train_step` is the step of capskeras's own trainer loop
# (capskeras/training/loop.py), which runs the model's `train_step` too.
KERAS_STEP_FUNCTIONS = frozenset(
    {"one_step_on_data", "one_step_on_data_distributed", "multi_step_on_data",
     "multi_step_on_iterator", "capskeras_train_step"}
)


def available():
    """Whether `compiled` compiles on this backend (TensorFlow)."""
    return keras.backend.backend() == "tensorflow"


def in_keras_step():
    """Whether the caller runs while Keras traces a train, test or predict step.

    True while `Model.fit`, `evaluate`, `predict`, `train_on_batch`,
    `test_on_batch` or `predict_on_batch` traces its step function on the
    TensorFlow backend (the traced graph, or one it is nested in, is one of
    `KERAS_STEP_FUNCTIONS`); False eagerly, in any other `tf.function`
    (SavedModel exports among them) and on other backends.
    """
    if not available():
        return False
    import tensorflow as tf  # Only on the TensorFlow backend.

    graph = tf.compat.v1.get_default_graph()
    while graph is not None:
        if getattr(graph, "name", None) in KERAS_STEP_FUNCTIONS:
            return True
        graph = getattr(graph, "outer_graph", None)
    return False


def runs_on_cpu():
    """Whether this process has no GPU for TensorFlow, so kernels run on its CPU."""
    if not available():
        return False
    import tensorflow as tf  # Only on the TensorFlow backend.

    return not tf.config.list_logical_devices("GPU")


def compiled(function):
    """Returns `function` compiled with XLA on the TensorFlow backend.

    On TensorFlow the result is a `tf.function(jit_compile=True)`: called
    inside a traced step it becomes one XLA cluster in that graph, compiled
    once per distinct input shape (a fraction of a second), and TensorFlow
    differentiates through it. On other backends it is `function` itself.

    Python arguments (ints, bools) are static: each distinct value gets its
    own trace.

    Args:
        function: a pure function of tensors written with `keras.ops`, its
            Python control flow depending on Python values only (AutoGraph
            is off).

    Returns:
        A function with the same signature and results.

    Example:

    ```python
    fused_routing = compiled(route_by_agreement)
    outputs = fused_routing(capsules, kernel, 3)
    ```
    """
    if not available():
        return function
    import tensorflow as tf  # Only on the TensorFlow backend.

    return tf.function(function, jit_compile=True, autograph=False)


def check_jit_compile_setting(value, name):
    """Raises ValueError, naming setting `name`, unless `value` is `"auto"`, `True` or `False`.

    Args:
        value: a layer's jit-compile setting (`routing_jit_compile`,
            `selection_jit_compile`).
        name: the setting's name, as the error says it.
    """
    if not (isinstance(value, bool) or value == "auto"):
        raise ValueError(f"Received: {name}={value!r}; expected 'auto', True or False")


def compiles_now(jit_compile):
    """Whether a layer with this jit-compile setting runs its compiled function now.

    The setting is a layer's `routing_jit_compile` (its routing) or
    `selection_jit_compile` (`PredCaps`' selection). `"auto"` compiles
    inside the steps Keras traces for `fit`, `evaluate` and `predict`
    (`in_keras_step`), so exports hold plain kernels; `True` compiles
    wherever XLA is available; `False` never.
    """
    if jit_compile == "auto":
        return in_keras_step()
    return bool(jit_compile) and available()
