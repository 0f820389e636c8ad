"""PredCapsLayer: convolutional capsules selected by self-prediction."""

import keras
from keras import ops

from capskeras import convolution
from capskeras import ops as capsule_ops
from capskeras import xla
from capskeras.checks import check_positive_int
from capskeras.checks import check_positive_int_pair

_NORMALIZATIONS = ("unit_total", "layer_norm")
_SELECTIONS = ("capsule", "unit")
_PADDINGS = ("same", "valid")
_LIFETIMES = ("boost", "standardize")
_EPSILON = 1e-12  # inside the float32 norms; sqrt(eps) is far below any drive


@keras.saving.register_keras_serializable(package="capskeras")
class PredCapsLayer(keras.layers.Layer):
    """Convolutional capsules with group top-k selection, competition and feedback.

    At every output position the layer holds `capsules` capsules of
    `capsule_dim` dimensions. Its only nonlinearities are the selection of
    whole capsules (sparsity by group) and the scaling of the winners to a
    unit total (competition). Which capsules win is decided by their
    feed-forward drive together with a prediction of the layer's output
    made by the layer above (consensus by self-prediction).

    With `x` the input, `c` a capsule at one output position and `p` the
    optional feedback (the layer above's decoding of its own output,
    `p_l = dec_{l+1}(y_{l+1})`, shaped like this layer's output):

    1. Drive: `z = conv(x, W_hat) + b`, a Conv2D with `kernel_size` and
       `strides`, split into capsules `z_c` of `capsule_dim` units. With
       `normalize_kernel=True` (the default) each capsule's kernel is used
       at unit norm, `W_hat_c = W_c / |W_c|` (over the kernel window, the
       input channels and the capsule's units), so that a capsule's drive,
       and with it its rank, measures how well the input matches it and
       not how long its kernel is. The unit-total output (5) is blind to a
       winner's scale, so no loss trains a kernel's length, yet with raw
       kernels that length scales the drive and so decides ranks (after
       one epoch of local learning on MNIST the first layer's kernel norms
       spread over a factor of 1.9).
    2. Score: `s_c = |z_c| * (1 + w * cos(z_c, p_c) * |p_c| / max_c' |p_c'|)`
       `    = |z_c| + w * <z_c, p_c> / max_c' |p_c'|`.
       The first term is the capsule's evidence from below. The second is
       the drive projected on the predicted direction, weighted by how
       strongly the prediction names this capsule relative to the others
       at the position; dividing by the position's largest prediction makes
       the score independent of the feedback's overall scale, and with
       `0 <= w <= 1` the score stays `>= 0`, between `(1 - w) |z_c|`
       (prediction opposed) and `(1 + w) |z_c|` (prediction confirmed).
       Without feedback `s_c = |z_c|`.
    3. Lifetime sparsity. `f_c` tracks how often capsule `c` wins
       (exponential moving average over training batches and positions,
       decay `frequency_decay`), `t = k / capsules` is the fair share and
       `beta_c = exp(boost_strength * (t - f_c) / t)` the boost, so a
       capsule that wins too rarely is boosted until it wins. Boosting
       only ranks; it never scales an output. The rank score `r_c` is:
       - `lifetime="standardize"`: each capsule's score is compared with
         its own distribution over inputs,
         `r_c = (s_c - mu_c) / sigma_c + log(beta_c)`, with `mu_c` and
         `sigma_c^2` the mean and variance of `s_c` over the batch and the
         positions in training, and at inference their moving averages
         over training batches (decay `statistics_decay`, divided by
         `1 - statistics_decay^steps` so that early estimates are not
         biased towards the initial zeros; before any training step
         `mu_c = 0`, `sigma_c = 1`). A capsule wins where the input drives
         it more than it drives it on other inputs. A capsule whose kernel
         matches what every input shares has the largest `s_c` everywhere,
         but only its variation across inputs ranks it; and within each
         training batch every capsule's `r_c - log(beta_c)` has mean 0 and
         unit variance, so the capsules share the wins input by input
         instead of by boosting whole batches from one capsule to another.
       - `lifetime="boost"`: `r_c = s_c * beta_c` (frequency boosting
         alone; at inference, where the boosts are near 1, one capsule
         can win on every input).
    4. Group top-k: the `k` capsules with the largest rank scores win at
       each position (exactly `k`, ties broken by index); every unit of the
       other capsules is zero. At inference `inference_k` capsules win.
    5. Competition, `normalization="unit_total"`:
       `y_c = m_c z_c / sum_c' m_c' |z_c'|`, so the norms of the capsules
       at a position sum to 1: one capsule grows only at the others'
       expense. `normalization="layer_norm"` (ablation) instead
       standardises the drive over the position's units (zero mean, unit
       variance, no learned scale) before masking: `y = m * LN(z)`.
    6. Decoder: `dec(y) = conv_transpose(y, V) + a`, the adjoint geometry of
       the convolution, cropped to the input's size, maps the output back
       to the input space. The layer's local loss is the reconstruction
       error `|stop_gradient(x) - dec(y)|^2` (see `reconstruction_loss`),
       and the layer below's feedback is `dec(y)`.

    `selection="unit"` (ablation) drops the groups: every unit is its own
    group of one, and `k` counts units.

    Norms and scores are computed in `float32` under mixed precision; the
    output is cast back to the compute dtype.

    Args:
        capsules: int >= 1, capsules per position.
        capsule_dim: int >= 1, units per capsule.
        kernel_size: int or pair, the convolution's kernel.
        strides: int or pair, the convolution's strides.
        k: int >= 1, winners per position in training: capsules, or units
            with `selection="unit"`.
        inference_k: int >= 1 or None (the default: `k`), winners per
            position at inference.
        padding: `"same"` (default) or `"valid"`, as in Conv2D.
        feedback_weight: float in [0, 1], `w` above. Defaults to `1.0`.
        normalization: `"unit_total"` (default) or `"layer_norm"`.
        selection: `"capsule"` (default) or `"unit"`.
        boost_strength: float >= 0, 0 disables boosting. Defaults to `3.0`.
        frequency_decay: float in [0, 1), decay of the win-frequency average.
        lifetime: `"standardize"` or `"boost"` (the default, for
            compatibility with the layers trained before), how ranks are
            made comparable across inputs (see 3).
        statistics_decay: float in [0, 1), decay of the moving score
            statistics of `lifetime="standardize"`. Defaults to `0.5`: the
            statistics must follow the kernels as they learn (with `0.9`,
            after 10,000 MNIST digits of local learning the top layer's
            statistics lagged its kernels, and one capsule never won at
            inference).
        normalize_kernel: bool, drive with unit-norm capsule kernels (see 1).
            Defaults to `True`.
        selection_jit_compile: `"auto"` (the default), `True` or `False`:
            whether steps 2 to 5 run as one XLA cluster, which fuses their
            element-wise work (on CPU, 6% more images/s in local learning
            and in inference, docs/speed_results.md). `"auto"` compiles
            inside the steps Keras traces for
            `fit`, `evaluate` and `predict`, so exports hold plain kernels
            (see `capskeras.xla`).
        kernel_initializer: Initializer of the convolution kernel `W`.
        bias_initializer: Initializer of the drive's bias `b`; defaults to
            a normal of stddev 0.01, so that on a silent input (a blank
            patch, `z = b`) the capsules are not tied and their unit total
            is defined.
        decoder_initializer: Initializer of the decoder kernel `V`.
        **kwargs: Base `Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: `(batch, H, W, channels)` tensor.
        feedback: Optional tensor shaped like the output, the prediction of
            this layer's output from the layer above.
        training: Python bool: `k` or `inference_k` winners, and whether the
            win frequencies are updated.
        update_frequency: Python bool (default `True`), lets a caller that
            runs the layer several times per step count only the last pass.

    Input shape:
        `(batch, H, W, channels)` with `H`, `W` and `channels` known.

    Output shape:
        `(batch, H', W', capsules * capsule_dim)`, `H'`, `W'` as a Conv2D
        with the same kernel, strides and padding; capsule `c` is the
        channels `c * capsule_dim ... (c + 1) * capsule_dim - 1`.

    Weights:
        `kernel` `(kh, kw, channels, capsules * capsule_dim)`, `bias`;
        `decoder_kernel` `(kh, kw, channels, capsules * capsule_dim)` and
        `decoder_bias` `(channels,)`; non-trainable `win_frequency` with one
        entry per group (capsule, or unit); with `lifetime="standardize"`
        also non-trainable `score_mean` and `score_variance`, one entry per
        group, and the scalar `score_weight` (`1 - statistics_decay^steps`).

    Example:

    >>> layer = PredCapsLayer(capsules=4, capsule_dim=2, kernel_size=3, strides=2, k=1)
    >>> x = keras.random.uniform((2, 8, 8, 1), seed=0)
    >>> y = layer(x, training=True)
    >>> y.shape
    (2, 4, 4, 8)
    >>> layer.decode(y).shape
    (2, 8, 8, 1)

    Reference:
        Rawlinson, Ahmed and Kowadlo, "Sparse Unsupervised Capsules
        Generalize Better", 2018; the equivariance study's PredCaps
        description (homogeneous layers, local learning, self-prediction
        instead of routing, sparsity and unit-total scaling only).
    """

    def __init__(
        self,
        capsules,
        capsule_dim,
        kernel_size,
        strides=1,
        k=1,
        inference_k=None,
        padding="same",
        feedback_weight=1.0,
        normalization="unit_total",
        selection="capsule",
        boost_strength=3.0,
        frequency_decay=0.99,
        normalize_kernel=True,
        lifetime="boost",
        statistics_decay=0.5,
        selection_jit_compile="auto",
        kernel_initializer="glorot_uniform",
        bias_initializer=None,
        decoder_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_positive_int("capsules", capsules)
        check_positive_int("capsule_dim", capsule_dim)
        check_positive_int("k", k)
        if inference_k is not None:
            check_positive_int("inference_k", inference_k)
        self.capsules = capsules
        self.capsule_dim = capsule_dim
        self.kernel_size = check_positive_int_pair("kernel_size", kernel_size)
        self.strides = check_positive_int_pair("strides", strides)
        self.k = k
        self.inference_k = inference_k
        if padding not in _PADDINGS:
            raise ValueError(f"Received: padding={padding!r}; expected one of {list(_PADDINGS)}")
        self.padding = padding
        if not 0.0 <= feedback_weight <= 1.0:
            raise ValueError(
                f"Received: feedback_weight={feedback_weight!r}; expected a float in [0, 1]"
            )
        self.feedback_weight = float(feedback_weight)
        if normalization not in _NORMALIZATIONS:
            raise ValueError(
                f"Received: normalization={normalization!r}; expected one of "
                f"{list(_NORMALIZATIONS)}"
            )
        self.normalization = normalization
        if selection not in _SELECTIONS:
            raise ValueError(
                f"Received: selection={selection!r}; expected one of {list(_SELECTIONS)}"
            )
        self.selection = selection
        if not boost_strength >= 0.0:
            raise ValueError(
                f"Received: boost_strength={boost_strength!r}; expected a float >= 0"
            )
        self.boost_strength = float(boost_strength)
        if not 0.0 <= frequency_decay < 1.0:
            raise ValueError(
                f"Received: frequency_decay={frequency_decay!r}; expected a float in [0, 1)"
            )
        self.frequency_decay = float(frequency_decay)
        self.normalize_kernel = bool(normalize_kernel)
        if lifetime not in _LIFETIMES:
            raise ValueError(
                f"Received: lifetime={lifetime!r}; expected one of {list(_LIFETIMES)}"
            )
        self.lifetime = lifetime
        if not 0.0 <= statistics_decay < 1.0:
            raise ValueError(
                f"Received: statistics_decay={statistics_decay!r}; expected a float in [0, 1)"
            )
        self.statistics_decay = float(statistics_decay)
        xla.check_jit_compile_setting(selection_jit_compile, "selection_jit_compile")
        self.selection_jit_compile = selection_jit_compile
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(
            bias_initializer or keras.initializers.RandomNormal(stddev=0.01)
        )
        self.decoder_initializer = keras.initializers.get(decoder_initializer)
        self.units = capsules * capsule_dim
        # Selection groups: whole capsules, or single units.
        if selection == "capsule":
            self.groups, self.group_dim = capsules, capsule_dim
        else:
            self.groups, self.group_dim = self.units, 1
        for name, value in (("k", k), ("inference_k", inference_k)):
            if value is not None and value > self.groups:
                raise ValueError(
                    f"Received: {name}={value} with {self.groups} {selection}s per "
                    f"position; expected 1 <= {name} <= {self.groups}"
                )

    def build(self, input_shape):
        if len(input_shape) != 4 or any(dim is None for dim in input_shape[1:]):
            raise ValueError(
                "PredCapsLayer expects (batch, H, W, channels) inputs with H, W and "
                f"channels known. Received: input_shape={tuple(input_shape)}"
            )
        self.input_spatial = tuple(int(dim) for dim in input_shape[1:3])
        channels = int(input_shape[-1])
        kernel_shape = self.kernel_size + (channels, self.units)
        self.kernel = self.add_weight(
            name="kernel", shape=kernel_shape, initializer=self.kernel_initializer
        )
        self.bias = self.add_weight(
            name="bias", shape=(self.units,), initializer=self.bias_initializer
        )
        self.decoder_kernel = self.add_weight(
            name="decoder_kernel", shape=kernel_shape, initializer=self.decoder_initializer
        )
        self.decoder_bias = self.add_weight(
            name="decoder_bias", shape=(channels,), initializer="zeros"
        )
        self.win_frequency = self.add_weight(
            name="win_frequency",
            shape=(self.groups,),
            initializer=keras.initializers.Constant(self.k / self.groups),
            trainable=False,
            dtype="float32",
            autocast=False,
        )
        if self.lifetime == "standardize":
            # Only in this mode: boosting keeps no score statistics.
            self.score_mean = self.add_weight(
                name="score_mean", shape=(self.groups,), initializer="zeros",
                trainable=False, dtype="float32", autocast=False,
            )
            self.score_variance = self.add_weight(
                name="score_variance", shape=(self.groups,), initializer="zeros",
                trainable=False, dtype="float32", autocast=False,
            )
            self.score_weight = self.add_weight(
                name="score_weight", shape=(), initializer="zeros",
                trainable=False, dtype="float32", autocast=False,
            )

    # ------------------------------------------------------------ forward

    def drive(self, inputs):
        """The feed-forward drive `z = conv(x, W_hat) + b`, `(batch, H', W', units)`."""
        dtype = self.compute_dtype
        kernel = self.kernel
        if self.normalize_kernel:
            grouped = ops.reshape(ops.cast(kernel, "float32"), (-1, self.groups, self.group_dim))
            norms = ops.sqrt(ops.sum(ops.square(grouped), axis=(0, 2), keepdims=True) + _EPSILON)
            kernel = ops.reshape(grouped / norms, ops.shape(self.kernel))
        kernel, bias = ops.cast(kernel, dtype), ops.cast(self.bias, dtype)
        z = convolution.conv2d(ops.cast(inputs, dtype), kernel, self.strides, self.padding)
        return z + bias

    def call(self, inputs, feedback=None, training=False, update_frequency=True):
        z = self.drive(inputs)
        if feedback is None or self.feedback_weight == 0.0:
            feedback = None
        # log(beta_c), see 3.
        target = self.k / self.groups
        log_boost = self.boost_strength * (target - self.win_frequency.value) / target
        statistics = None
        if self.lifetime == "standardize" and not training:
            statistics = self._moving_statistics()
        select = _compiled_select if xla.compiles_now(self.selection_jit_compile) \
            else _select
        outputs, mask, batch_statistics = select(
            z, feedback, log_boost, statistics, self._selection_settings(training))
        if training and update_frequency:
            wins = ops.mean(mask, axis=(0, 1, 2))
            self.win_frequency.assign(
                self.frequency_decay * self.win_frequency.value
                + (1.0 - self.frequency_decay) * wins
            )
            if batch_statistics is not None:
                d = self.statistics_decay
                mean, variance = batch_statistics
                self.score_mean.assign(d * self.score_mean.value + (1 - d) * mean)
                self.score_variance.assign(d * self.score_variance.value + (1 - d) * variance)
                self.score_weight.assign(d * self.score_weight.value + (1 - d))
        return ops.cast(outputs, self.compute_dtype)

    def _selection_settings(self, training):
        """The Python values `_select` depends on, as one hashable tuple."""
        return (self.groups, self.group_dim, self.feedback_weight, self.boost_strength,
                self.lifetime, self.normalization,
                self.k if training or self.inference_k is None else self.inference_k)

    def _moving_statistics(self):
        """`(mu_c, sigma_c^2)` at inference for `lifetime="standardize"`, see 3."""
        weight = self.score_weight.value
        seen = ops.cast(weight > 0, "float32")
        weight = ops.maximum(weight, 1e-12)
        mean = seen * self.score_mean.value / weight
        variance = seen * self.score_variance.value / weight + (1 - seen)
        return mean, variance

    def decode(self, outputs):
        """Maps outputs `(batch, H', W', units)` back to the input space `(batch, H, W, channels)`."""
        dtype = self.compute_dtype
        full = convolution.conv2d_transpose(
            ops.cast(outputs, dtype), ops.cast(self.decoder_kernel, dtype), self.strides)
        rows = self._crop(1, self.input_spatial[0], full)
        cols = self._crop(2, self.input_spatial[1], full)
        full = ops.pad(full, ((0, 0), (0, rows[2]), (0, cols[2]), (0, 0)))
        cropped = full[:, rows[0] : rows[1], cols[0] : cols[1], :]
        return cropped + ops.cast(self.decoder_bias, dtype)

    def reconstruction_loss(self, inputs, outputs):
        """Mean squared error of `decode(outputs)` against `stop_gradient(inputs)`.

        Gradients reach only this layer's weights through `outputs` and the
        decoder; the input is a constant, so no gradient crosses layers.
        """
        target = ops.cast(ops.stop_gradient(inputs), "float32")
        return ops.mean(ops.square(ops.cast(self.decode(outputs), "float32") - target))

    # ------------------------------------------------------------ helpers

    def _crop(self, axis, size, full):
        """(start, stop, pad_after) recovering the input rows of a "valid" transpose."""
        kernel, stride = self.kernel_size[axis - 1], self.strides[axis - 1]
        out = self._output_size(size, kernel, stride)
        start = convolution.same_padding(size, kernel, stride)[0] if self.padding == "same" else 0
        length = (out - 1) * stride + kernel
        return start, start + size, max(start + size - length, 0)

    def _output_size(self, size, kernel, stride):
        if size is None:
            return None
        if self.padding == "same":
            return -(-size // stride)
        return (size - kernel) // stride + 1

    def compute_output_shape(self, input_shape):
        return (
            input_shape[0],
            self._output_size(input_shape[1], self.kernel_size[0], self.strides[0]),
            self._output_size(input_shape[2], self.kernel_size[1], self.strides[1]),
            self.units,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "capsules": self.capsules,
                "capsule_dim": self.capsule_dim,
                "kernel_size": self.kernel_size,
                "strides": self.strides,
                "k": self.k,
                "inference_k": self.inference_k,
                "padding": self.padding,
                "feedback_weight": self.feedback_weight,
                "normalization": self.normalization,
                "selection": self.selection,
                "boost_strength": self.boost_strength,
                "frequency_decay": self.frequency_decay,
                "normalize_kernel": self.normalize_kernel,
                "lifetime": self.lifetime,
                "statistics_decay": self.statistics_decay,
                "selection_jit_compile": self.selection_jit_compile,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "decoder_initializer": keras.initializers.serialize(self.decoder_initializer),
            }
        )
        return config


def _select(drive, feedback, log_boost, statistics, settings):
    """Steps 2 to 5 of `PredCapsLayer`: scores, ranks, group top-k and competition.

    A pure function of tensors and Python values, so that it can run as one
    XLA cluster (`_compiled_select`), which fuses its element-wise work.

    Args:
        drive: `z`, `(batch, H', W', units)`.
        feedback: None or `p`, shaped like `drive`.
        log_boost: `log(beta_c)`, `(groups,)` float32.
        statistics: None (batch statistics of the scores, in training) or
            the moving `(mu_c, sigma_c^2)` of `lifetime="standardize"` at
            inference.
        settings: `PredCapsLayer._selection_settings(training)`.

    Returns:
        `(outputs, mask, batch_statistics)`: the float32 outputs shaped like
        `drive`; the `(batch, H', W', groups)` float32 mask of winners; with
        `lifetime="standardize"` in training the batch's `(mean, variance)`
        of the scores per group, else None.
    """
    groups, group_dim, feedback_weight, boost_strength, lifetime, normalization, k = settings
    shape = ops.shape(drive)

    def grouped(tensor):
        return ops.reshape(ops.cast(tensor, "float32"),
                           (shape[0], shape[1], shape[2], groups, group_dim))

    capsules = grouped(drive)
    # safe_norm scales before squaring: a drive of 1e20 has a float32 norm.
    norms = capsule_ops.safe_norm(capsules, axis=-1, epsilon=_EPSILON)
    scores = norms
    if feedback is not None:
        predicted = grouped(feedback)
        predicted_norms = capsule_ops.safe_norm(predicted, axis=-1, epsilon=_EPSILON)
        largest = ops.max(predicted_norms, axis=-1, keepdims=True)
        # <z, p / max |p|>: divided first, so the product cannot overflow.
        agreement = ops.sum(capsules * (predicted / ops.expand_dims(largest, -1)), axis=-1)
        scores = norms + feedback_weight * agreement
    scores = ops.stop_gradient(scores)
    batch_statistics = None
    if lifetime == "standardize":
        if statistics is None:
            statistics = batch_statistics = (ops.mean(scores, axis=(0, 1, 2)),
                                             ops.var(scores, axis=(0, 1, 2)))
        mean, variance = statistics
        scores = (scores - mean) / ops.sqrt(variance + 1e-12)
        if boost_strength > 0.0:
            scores = scores + log_boost
    elif boost_strength > 0.0:
        scores = scores * ops.exp(log_boost)
    _, winners = ops.top_k(scores, k, sorted=False)
    mask = ops.stop_gradient(
        ops.sum(ops.one_hot(winners, groups, dtype="float32"), axis=-2)
    )  # (B, H', W', G), exactly k ones
    if normalization == "unit_total":
        total = ops.sum(mask * norms, axis=-1, keepdims=True)
        outputs = capsules * ops.expand_dims(mask / total, -1)
    else:
        units = ops.reshape(capsules, shape)
        mean = ops.mean(units, axis=-1, keepdims=True)
        variance = ops.var(units, axis=-1, keepdims=True)
        standardized = grouped((units - mean) / ops.sqrt(variance + 1e-3))
        outputs = standardized * ops.expand_dims(mask, -1)
    return ops.reshape(outputs, shape), mask, batch_statistics


_compiled_select = xla.compiled(_select)
