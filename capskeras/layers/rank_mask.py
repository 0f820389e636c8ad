"""RankMask: Sparse Unsupervised Capsules' rank-weighted decoder mask with boosting."""

import keras
from keras import ops

from capskeras.checks import check_positive_int


@keras.saving.register_keras_serializable(package="capskeras")
class RankMask(keras.layers.Layer):
    """Weights capsules by the rank of their routing support, for the decoder's input.

    Replaces CapsNet's label mask in unsupervised training. For each sample
    and each of the `J` capsules `j`, with `c_ij` the final coupling
    coefficients of the routing that produced the capsules, input capsules
    grouped as `positions x input_types`:

    1. score `s_j = beta_j * sum_positions max_types c_ij`, `beta_j` the
       capsule's boost;
    2. rank `r_j` (0 for the highest score of the sample, ties by index);
    3. weight `w_j = exp(-sharpness * r_j / (J - 1))`, set to 0 below
       `threshold`; the output is `w_j * v_j`.

    A sample whose couplings hold NaN or inf has no ranking: its ranks,
    weights and output are NaN, and no capsule of it counts as first.

    No gradient flows through the ranking: the weights are constants of
    the step, the gradient reaches the capsules only through `w_j * v_j`.

    Lifetime sparsity by boosting (training only): `f_j`, an exponential
    moving average (decay `frequency_decay`) of how often capsule `j`
    ranks first, and every `boost_interval` training calls `beta_j` gains
    `boost_step` where `f_j < low_frequency` and loses `boost_step` (not
    below 1) where `f_j > high_frequency`.

    Args:
        input_types: int >= 1, capsule types per input position (the
            coupling's input axis is `positions * input_types`, types
            fastest, as `PrimaryCapsules` flattens).
        sharpness: float > 0, 12 in the paper.
        threshold: float, weights below it are zeroed; 0.01 in the paper.
        frequency_decay: float in [0, 1), 0.99 in the paper.
        boost_interval: int >= 1, training calls between boost updates (50).
        boost_step: float >= 0 (0.1).
        low_frequency: float, boost capsules winning less often (0.03).
        high_frequency: float, unboost those winning more often (0.12).
        **kwargs: Base `Layer` arguments.

    Call arguments:
        capsules: `(batch, J, dim)` capsules.
        couplings: `(batch, input_capsules, J)` coupling coefficients.
        training: Python bool; updates the frequencies and boosts.

    Input shape:
        `capsules` `(batch, J, dim)`, `couplings` `(batch, positions *
        input_types, J)`.

    Output shape:
        `(batch, J, dim)`.

    Example:

    >>> mask = RankMask(input_types=2)
    >>> v = keras.ops.ones((1, 3, 4))
    >>> c = keras.ops.convert_to_tensor([[[0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]])
    >>> keras.ops.convert_to_numpy(mask(v, c))[0, :, 0].round(4).tolist()
    [0.0, 1.0, 0.0]

    Reference:
        Rawlinson, Ahmed and Kowadlo, "Sparse Unsupervised Capsules
        Generalize Better", 2018, section 3.
    """

    def __init__(self, input_types, sharpness=12.0, threshold=0.01, frequency_decay=0.99,
                 boost_interval=50, boost_step=0.1, low_frequency=0.03,
                 high_frequency=0.12, **kwargs):
        super().__init__(**kwargs)
        check_positive_int("input_types", input_types)
        check_positive_int("boost_interval", boost_interval)
        if not sharpness > 0:
            raise ValueError(f"Received: sharpness={sharpness!r}; expected a float > 0")
        if not 0.0 <= frequency_decay < 1.0:
            raise ValueError(
                f"Received: frequency_decay={frequency_decay!r}; expected a float in [0, 1)"
            )
        if not boost_step >= 0:
            raise ValueError(f"Received: boost_step={boost_step!r}; expected a float >= 0")
        self.input_types = input_types
        self.sharpness = float(sharpness)
        self.threshold = float(threshold)
        self.frequency_decay = float(frequency_decay)
        self.boost_interval = boost_interval
        self.boost_step = float(boost_step)
        self.low_frequency = float(low_frequency)
        self.high_frequency = float(high_frequency)

    def build(self, capsules_shape, couplings_shape=None):
        self.num_capsules = int(capsules_shape[1])
        if self.num_capsules < 2:
            raise ValueError(
                f"Received: capsules_shape={tuple(capsules_shape)}; expected >= 2 capsules to rank"
            )
        if couplings_shape is not None and couplings_shape[1] is not None \
                and couplings_shape[1] % self.input_types:
            raise ValueError(
                f"Received: input_types={self.input_types} for {couplings_shape[1]} input "
                "capsules; expected a divisor"
            )
        self.boost = self.add_weight(name="boost", shape=(self.num_capsules,),
                                     initializer="ones", trainable=False, dtype="float32",
                                     autocast=False)
        self.frequency = self.add_weight(
            name="frequency", shape=(self.num_capsules,),
            initializer=keras.initializers.Constant(1.0 / self.num_capsules),
            trainable=False, dtype="float32", autocast=False)
        self.steps = self.add_weight(name="steps", shape=(), initializer="zeros",
                                     trainable=False, dtype="int64", autocast=False)

    def rank_weights(self, couplings):
        """The decoder weights `(batch, J)` and the ranks, from the couplings."""
        couplings = ops.stop_gradient(ops.cast(couplings, "float32"))
        shape = ops.shape(couplings)
        grouped = ops.reshape(couplings, (shape[0], -1, self.input_types, self.num_capsules))
        scores = ops.sum(ops.max(grouped, axis=2), axis=1) * self.boost.value
        # rank_j = number of capsules scoring above j, ties to the lower index.
        above = ops.cast(ops.expand_dims(scores, 1) > ops.expand_dims(scores, 2), "float32")
        index = ops.arange(self.num_capsules)
        tied_before = ops.cast(
            (ops.expand_dims(scores, 1) == ops.expand_dims(scores, 2))
            & (ops.expand_dims(index, 0) < ops.expand_dims(index, 1)), "float32")
        ranks = ops.sum(above + tied_before, axis=2)
        weights = ops.exp(-self.sharpness * ranks / (self.num_capsules - 1))
        weights = ops.where(weights < self.threshold, 0.0, weights)
        # NaN compares false, so a NaN score would rank first: no weights instead.
        finite = ops.all(ops.isfinite(scores), axis=-1, keepdims=True)
        weights = ops.where(finite, weights, float("nan"))
        return weights, ops.where(finite, ranks, float("nan"))

    def call(self, capsules, couplings, training=False):
        weights, ranks = self.rank_weights(couplings)
        if training:
            first = ops.mean(ops.cast(ranks == 0, "float32"), axis=0)
            frequency = self.frequency_decay * self.frequency.value + (
                1.0 - self.frequency_decay) * first
            self.frequency.assign(frequency)
            steps = self.steps.value + 1
            self.steps.assign(steps)
            due = ops.cast(steps % self.boost_interval == 0, "float32")
            change = self.boost_step * (
                ops.cast(frequency < self.low_frequency, "float32")
                - ops.cast(frequency > self.high_frequency, "float32"))
            self.boost.assign(ops.maximum(self.boost.value + due * change, 1.0))
        weights = ops.cast(ops.expand_dims(weights, -1), capsules.dtype)
        return capsules * weights

    def compute_output_shape(self, capsules_shape, couplings_shape=None):
        return capsules_shape

    def get_config(self):
        config = super().get_config()
        config.update({
            "input_types": self.input_types, "sharpness": self.sharpness,
            "threshold": self.threshold, "frequency_decay": self.frequency_decay,
            "boost_interval": self.boost_interval, "boost_step": self.boost_step,
            "low_frequency": self.low_frequency, "high_frequency": self.high_frequency,
        })
        return config
