"""The k-sparse activation of Makhzani and Frey."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="capskeras")
class KSparse(keras.layers.Layer):
    """Keeps the k largest units of each sample and zeroes the rest.

    During training the k largest activations of each sample (over all
    non-batch axes) pass through and every other unit is set to zero, so the
    gradient flows only through the kept units. At inference `alpha * k`
    units are kept, as Makhzani and Frey recommend, which makes the code a
    little denser than the one the decoder was trained on.

    `k` is held in a non-trainable variable so a schedule (see
    `capskeras.tasks.study.KSparseSchedule`) can lower it during
    training without retracing, also under `jit_compile=True`. The threshold
    is the k-th largest value of the sorted sample; units tied with it are
    all kept.

    Args:
        k: int >= 1, the number of units kept per sample in training.
        alpha: float >= 1, inference keeps `round(alpha * k)` units (capped
            at the number of units).
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: A tensor of rank >= 2.
        training: Python bool; selects k (training) or alpha * k (inference).

    Input shape:
        Any shape `(batch_size, ...)`.

    Output shape:
        Same as the input.

    Example:

    >>> layer = KSparse(k=2)
    >>> x = keras.ops.convert_to_tensor([[0.1, 0.9, 0.5, 0.3]])
    >>> keras.ops.convert_to_numpy(layer(x, training=True)).tolist()
    [[0.0, 0.8999999761581421, 0.5, 0.0]]

    Reference:
        Makhzani and Frey, "k-Sparse Autoencoders", ICLR 2014.
    """

    def __init__(self, k, alpha=1.0, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"Received: k={k!r}; expected an int >= 1")
        if not alpha >= 1.0:
            raise ValueError(f"Received: alpha={alpha!r}; expected a float >= 1")
        self.k = k
        self.alpha = float(alpha)

    def build(self, input_shape):
        self.num_units = 1
        for dim in input_shape[1:]:
            if dim is None:
                raise ValueError(
                    "KSparse needs fully defined non-batch dimensions. "
                    f"Received: input_shape={input_shape}"
                )
            self.num_units *= dim
        if self.k > self.num_units:
            raise ValueError(
                f"Received: k={self.k} for inputs of {self.num_units} units "
                f"(input_shape={input_shape}); expected 1 <= k <= {self.num_units}"
            )
        # The schedule assigns to this variable; it is state, not a weight.
        self.current_k = self.add_weight(
            name="current_k",
            shape=(),
            dtype="int32",
            initializer=keras.initializers.Constant(self.k),
            trainable=False,
        )

    def call(self, inputs, training=False):
        k = self.current_k.value
        if not training:
            k = ops.cast(
                ops.round(ops.cast(k, "float32") * self.alpha), "int32"
            )
        k = ops.clip(k, 1, self.num_units)
        flat = ops.reshape(inputs, (-1, self.num_units))
        descending = ops.flip(ops.sort(flat, axis=-1), axis=-1)
        threshold = ops.take(descending, ops.expand_dims(k - 1, 0), axis=1)
        keep = ops.stop_gradient(ops.cast(flat >= threshold, flat.dtype))
        return ops.reshape(flat * keep, ops.shape(inputs))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"k": self.k, "alpha": self.alpha})
        return config
