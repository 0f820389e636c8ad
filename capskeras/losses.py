"""Capsule network losses: margin, spread and reconstruction losses.

The functions follow the Keras loss signature `fn(y_true, y_pred)` and return
one value per sample (shape `[batch]`), so Keras applies sample weights and
reduces to the batch mean. Half precision predictions are upcast to
`float32`.
"""

import keras
from keras import ops


def _as_float(x):
    x = ops.convert_to_tensor(x)
    dtype = keras.backend.standardize_dtype(x.dtype)
    if dtype in ("float16", "bfloat16") or "float" not in dtype:
        return ops.cast(x, "float32")
    return x


def _one_hot_targets(y_true, num_classes, dtype):
    """One-hot `[B, K]` from one-hot `[B, K]` or integer `[B]` / `[B, 1]`."""
    y_true = ops.convert_to_tensor(y_true)
    rank = len(y_true.shape)
    if rank == 1 or (rank == 2 and y_true.shape[-1] == 1 and num_classes != 1):
        labels = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        return ops.one_hot(labels, num_classes, dtype=dtype)
    if rank == 2 and y_true.shape[-1] == num_classes:
        return ops.cast(y_true, dtype)
    raise ValueError(
        "margin_loss expects y_true as integer labels of shape (batch,) or "
        f"(batch, 1), or one-hot of shape (batch, {num_classes}). Received: "
        f"y_true.shape={tuple(y_true.shape)}"
    )


@keras.saving.register_keras_serializable(package="capskeras")
def margin_loss(y_true, y_pred, m_plus=0.9, m_minus=0.1, down_weight=0.5):
    """Margin loss of Sabour et al. (2017), per sample.

    `L = sum_k T_k max(0, m_plus - |v_k|)^2
    + down_weight (1 - T_k) max(0, |v_k| - m_minus)^2`.

    Args:
        y_true: One-hot targets `(batch, K)`, or integer labels `(batch,)` or
            `(batch, 1)` (told apart by rank and last dimension).
        y_pred: Capsule lengths `(batch, K)`, e.g. from `CapsuleLength`.
        m_plus: Lower margin for the present class. Defaults to `0.9`.
        m_minus: Upper margin for absent classes. Defaults to `0.1`.
        down_weight: Weight `lambda` of the absent-class term.
            Defaults to `0.5`.

    Returns:
        Loss per sample, shape `(batch,)`.

    Example:

    ```python
    margin_loss([0, 1], [[0.95, 0.2], [0.3, 0.5]])
    # [0.5 * 0.1**2, 0.4**2 + 0.5 * 0.2**2] = [0.005, 0.18]
    ```

    Reference:
        Sabour, Frosst & Hinton, "Dynamic Routing Between Capsules",
        NeurIPS 2017, eq. 4. https://arxiv.org/abs/1710.09829
    """
    y_pred = _as_float(y_pred)
    targets = _one_hot_targets(y_true, y_pred.shape[-1], y_pred.dtype)
    present = ops.square(ops.relu(m_plus - y_pred))
    absent = ops.square(ops.relu(y_pred - m_minus))
    per_class = targets * present + down_weight * (1.0 - targets) * absent
    return ops.sum(per_class, axis=-1)


@keras.saving.register_keras_serializable(package="capskeras")
def reconstruction_loss(images, reconstructions, scale=0.0005):
    """Scaled sum of squared pixel errors per image.

    `images` and `reconstructions` may have different shapes with the same
    number of values per sample (e.g. `(B, 28, 28, 1)` and `(B, 784)`).

    Args:
        images: Target images, `(batch, ...)`.
        reconstructions: Decoder outputs, `(batch, ...)`.
        scale: Multiplier, `0.0005` in the paper so that the reconstruction
            term does not dominate the margin loss.

    Returns:
        `scale * sum((images - reconstructions)**2)` per sample, shape
        `(batch,)`.

    Example:

    ```python
    reconstruction_loss(ops.ones((2, 28, 28, 1)), ops.zeros((2, 784)))
    # [0.392, 0.392] = 0.0005 * 784
    ```

    Reference:
        Sabour, Frosst & Hinton, "Dynamic Routing Between Capsules",
        NeurIPS 2017, section 4.1. https://arxiv.org/abs/1710.09829
    """
    reconstructions = _as_float(reconstructions)
    images = ops.cast(images, reconstructions.dtype)
    batch = ops.shape(reconstructions)[0]
    images = ops.reshape(images, (batch, -1))
    reconstructions = ops.reshape(reconstructions, (batch, -1))
    return scale * ops.sum(ops.square(images - reconstructions), axis=-1)


class _PerSampleLoss(keras.losses.Loss):
    """A `Loss` calling a per-sample loss function with its own attributes.

    `function(y_true, y_pred, **{name: self.<name> for name in arguments})`;
    the config holds those attributes as floats.
    """

    function = None
    arguments = ()

    def call(self, y_true, y_pred):
        arguments = {name: getattr(self, name) for name in self.arguments}
        return self.function(y_true, y_pred, **arguments)

    def get_config(self):
        config = super().get_config()
        config.update({name: float(ops.convert_to_numpy(getattr(self, name)))
                       for name in self.arguments})
        return config


@keras.saving.register_keras_serializable(package="capskeras")
class MarginLoss(_PerSampleLoss):
    """Margin loss of Sabour et al. (2017) as a `keras.losses.Loss`.

    See `margin_loss`. `y_true` may be one-hot `(batch, K)` or integer labels
    `(batch,)` / `(batch, 1)`; `y_pred` are capsule lengths `(batch, K)`.

    Args:
        m_plus: Lower margin for the present class. Defaults to `0.9`.
        m_minus: Upper margin for absent classes. Defaults to `0.1`.
        down_weight: Weight of the absent-class term. Defaults to `0.5`.
        reduction: Keras reduction. Defaults to `"sum_over_batch_size"`.
        name: Loss name. Defaults to `"margin_loss"`.
        dtype: Dtype of the loss computation. Defaults to `None` (floatx).

    Example:

    ```python
    model.compile(optimizer="adam", loss=MarginLoss())
    ```

    Reference:
        Sabour, Frosst & Hinton, "Dynamic Routing Between Capsules",
        NeurIPS 2017, eq. 4. https://arxiv.org/abs/1710.09829
    """

    function = staticmethod(margin_loss)
    arguments = ("m_plus", "m_minus", "down_weight")

    def __init__(
        self,
        m_plus=0.9,
        m_minus=0.1,
        down_weight=0.5,
        reduction="sum_over_batch_size",
        name="margin_loss",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.m_plus = float(m_plus)
        self.m_minus = float(m_minus)
        self.down_weight = float(down_weight)



@keras.saving.register_keras_serializable(package="capskeras")
class ReconstructionLoss(_PerSampleLoss):
    """Scaled sum-of-squares reconstruction loss as a `keras.losses.Loss`.

    See `reconstruction_loss`. `y_true` are the images, `y_pred` the decoder
    outputs; they may differ in shape but not in values per sample.

    Args:
        scale: Multiplier of the per-image sum of squared errors.
            Defaults to `0.0005`.
        reduction: Keras reduction. Defaults to `"sum_over_batch_size"`.
        name: Loss name. Defaults to `"reconstruction_loss"`.
        dtype: Dtype of the loss computation. Defaults to `None` (floatx).

    Example:

    ```python
    model.compile(
        optimizer="adam",
        loss={"lengths": MarginLoss(), "reconstruction": ReconstructionLoss()},
    )
    ```

    Reference:
        Sabour, Frosst & Hinton, "Dynamic Routing Between Capsules",
        NeurIPS 2017, section 4.1. https://arxiv.org/abs/1710.09829
    """

    function = staticmethod(reconstruction_loss)
    arguments = ("scale",)

    def __init__(
        self,
        scale=0.0005,
        reduction="sum_over_batch_size",
        name="reconstruction_loss",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.scale = float(scale)



@keras.saving.register_keras_serializable(package="capskeras")
def spread_loss(y_true, y_pred, margin=0.9):
    """Spread loss of Hinton, Sabour and Frosst (2018), per sample.

    `L = sum_{i != t} max(0, margin - (a_t - a_i))^2`: every wrong class's
    activation must sit `margin` below the target's.

    Args:
        y_true: One-hot targets `(batch, K)`, or integer labels `(batch,)` or
            `(batch, 1)`.
        y_pred: Class activations `(batch, K)`, e.g. from
            `ClassMatrixCapsules`.
        margin: Float or scalar tensor; the paper grows it from 0.2 to 0.9
            during training (`SpreadMarginSchedule`).

    Returns:
        Loss per sample, shape `(batch,)`.

    Example:

    ```python
    spread_loss([0], [[0.9, 0.5, 0.1]], margin=0.5)
    # [max(0, 0.5 - 0.4)**2 + max(0, 0.5 - 0.8)**2] = [0.01]
    ```

    Reference:
        Hinton, Sabour and Frosst, "Matrix capsules with EM routing",
        ICLR 2018, section 3.1. https://openreview.net/forum?id=HJWLfGWRb
    """
    y_pred = _as_float(y_pred)
    targets = _one_hot_targets(y_true, y_pred.shape[-1], y_pred.dtype)
    target_activation = ops.sum(targets * y_pred, axis=-1, keepdims=True)
    margin = ops.cast(margin, y_pred.dtype)
    gaps = ops.square(ops.relu(margin - (target_activation - y_pred)))
    return ops.sum((1.0 - targets) * gaps, axis=-1)


@keras.saving.register_keras_serializable(package="capskeras")
class SpreadLoss(_PerSampleLoss):
    """Spread loss of Hinton, Sabour and Frosst (2018) as a `keras.losses.Loss`.

    See `spread_loss`. The margin may be a float or a scalar variable that
    the training step updates (`EmCapsNet` moves it along a
    `SpreadMarginSchedule`); it is read at every call.

    Args:
        margin: Float or scalar variable. Defaults to `0.9`.
        reduction: Keras reduction. Defaults to `"sum_over_batch_size"`.
        name: Loss name. Defaults to `"spread_loss"`.
        dtype: Dtype of the loss computation. Defaults to `None` (floatx).

    Example:

    ```python
    model.compile(optimizer="adam", loss=SpreadLoss(margin=0.9))
    ```

    Reference:
        Hinton, Sabour and Frosst, "Matrix capsules with EM routing",
        ICLR 2018, section 3.1. https://openreview.net/forum?id=HJWLfGWRb
    """

    function = staticmethod(spread_loss)
    arguments = ("margin",)

    def __init__(self, margin=0.9, reduction="sum_over_batch_size", name="spread_loss",
                 dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.margin = margin



@keras.saving.register_keras_serializable(package="capskeras")
class SpreadMarginSchedule:
    """The spread loss's margin, growing linearly from `start` to `stop` over `steps`.

    Args:
        start: Margin at step 0. Defaults to `0.2`, as in the paper.
        stop: Margin from step `steps` on. Defaults to `0.9`.
        steps: Positive int, training steps of the ramp.

    Example:

    >>> schedule = SpreadMarginSchedule(steps=1000)
    >>> float(schedule(500))
    0.55

    Reference:
        Hinton, Sabour and Frosst, "Matrix capsules with EM routing",
        ICLR 2018, section 3.1. https://openreview.net/forum?id=HJWLfGWRb
    """

    def __init__(self, start=0.2, stop=0.9, steps=10000):
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"Received: steps={steps!r}; expected an int >= 1")
        if not 0.0 <= start <= stop:
            raise ValueError(
                f"Received: start={start!r}, stop={stop!r}; expected 0 <= start <= stop")
        self.start = float(start)
        self.stop = float(stop)
        self.steps = steps

    def __call__(self, step):
        progress = ops.minimum(ops.cast(step, "float32") / float(self.steps), 1.0)
        return self.start + (self.stop - self.start) * progress

    def get_config(self):
        return {"start": self.start, "stop": self.stop, "steps": self.steps}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
