"""PredCaps: the equivariance study's encoder, a stack of PredCapsLayers trained locally.

The stack has the study's geometry (compare `encoders.conv_encoder`):

| layer | kernel | stride | capsules x dims | output on 28x28 |
|-------|--------|--------|-----------------|-----------------|
| 1     | 6x6    | 3      | 16 x 4          | 10x10x64        |
| 2     | 5x5    | 2      | 16 x 16         | 5x5x256         |
| 3     | 5x5    | 5      | 16 x 16         | 1x1x256         |

and emits the flattened top layer, the 256-element code.

Inference runs the same passes as training unless the encoder's
`inference_feedback_iterations` asks for fewer or more. The first upward pass has no
feedback. Each of the `feedback_iterations` rounds then goes down, every
layer `l + 1` predicting the output of layer `l` with its decoder,
`p_l = dec_{l+1}(y_{l+1})`, and up again, every layer selecting its
capsules from its drive and that prediction (see `PredCapsLayer`).

Local learning (`PredCapsPretrainer`): each layer minimises
`mean |x_l - dec_l(y_l)|^2`, the reconstruction of its own input from its
output on the last pass, with its input `x_l` (the output of the layer
below) and its feedback under `stop_gradient`. No gradient crosses layers,
and one optimizer step updates every layer at once.
"""

import math

import keras
from keras import ops

from capskeras.checks import check_non_negative_int
from capskeras.checks import check_positive_int
from capskeras.layers.pred_caps import PredCapsLayer

# (capsules, capsule_dim, kernel_size, strides) of the three layers.
PREDCAPS_GEOMETRY = ((16, 4, 6, 3), (16, 16, 5, 2), (16, 16, 5, 5))
# Winning capsules per position in each layer; half of the top layer wins, which gave
# its code a 9-point better linear probe than 4 winners (docs/study_results.md).
DEFAULT_PREDCAPS_K = (2, 2, 8)
DEFAULT_FEEDBACK_ITERATIONS = 1


@keras.saving.register_keras_serializable(package="capskeras")
class PredCapsEncoder(keras.Model):
    """A stack of `PredCapsLayer`s with feedback rounds; images -> flattened top layer.

    Args:
        geometry: tuple of `(capsules, capsule_dim, kernel_size, strides)`,
            one per layer, bottom first.
        k: ints, winners per position of each layer (capsules; units with
            `selection="unit"`).
        inference_k: None (the default: `k`) or ints, one per layer,
            winners per position at inference. More winners than in
            training give the frozen encoder's heads a denser code, as
            Makhzani and Frey's `alpha * k`.
        feedback_iterations: int >= 0, down-and-up rounds after the first
            upward pass.
        inference_feedback_iterations: None (the default:
            `feedback_iterations`) or int >= 0, the rounds at inference.
            Without them the frozen encoder is one upward pass, the same
            convolutions as a feed-forward encoder plus the selections;
            after 10 epochs of local learning with one round, its code
            classified as well without the round (docs/study_results.md).
        normalization: `"unit_total"` or `"layer_norm"` (every layer).
        selection: `"capsule"` or `"unit"` (every layer).
        feedback_weight: float in [0, 1], see `PredCapsLayer`.
        boost_strength: float >= 0, see `PredCapsLayer`.
        frequency_decay: float in [0, 1), see `PredCapsLayer`.
        normalize_kernel: bool, see `PredCapsLayer`.
        lifetime: `"boost"` or `"standardize"` for every layer, or one per
            layer; see `PredCapsLayer`. None (the default): boosting in the
            lower layers and standardized ranks in the top layer.
        statistics_decay: float in [0, 1), see `PredCapsLayer`.
        seed: int or None, seeds the kernels' initializers.

    Call arguments:
        images: `[B, H, W, C]` floats in [0, 1].
        training: Python bool.

    Returns:
        The code, `[B, code_dim]` (256 with the study's geometry on 28x28).

    Example:

    >>> encoder = PredCapsEncoder()
    >>> encoder(keras.ops.zeros((2, 28, 28, 1))).shape
    (2, 256)

    Reference:
        Rawlinson, Ahmed and Kowadlo, "Sparse Unsupervised Capsules
        Generalize Better", 2018; the equivariance study's PredCaps.
    """

    def __init__(
        self,
        geometry=PREDCAPS_GEOMETRY,
        k=DEFAULT_PREDCAPS_K,
        feedback_iterations=DEFAULT_FEEDBACK_ITERATIONS,
        normalization="unit_total",
        selection="capsule",
        feedback_weight=1.0,
        inference_k=None,
        boost_strength=3.0,
        frequency_decay=0.99,
        normalize_kernel=True,
        lifetime=None,
        statistics_decay=0.5,
        seed=None,
        inference_feedback_iterations=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.geometry = tuple(tuple(int(v) for v in layer) for layer in geometry)
        self.k = tuple(k)
        if len(self.k) != len(self.geometry):
            raise ValueError(
                f"Received: k={list(self.k)}; expected {len(self.geometry)} ints, "
                "one per layer"
            )
        self.inference_k = None if inference_k is None else tuple(inference_k)
        if self.inference_k is not None and len(self.inference_k) != len(self.geometry):
            raise ValueError(
                f"Received: inference_k={list(self.inference_k)}; expected None or "
                f"{len(self.geometry)} ints, one per layer"
            )
        check_non_negative_int("feedback_iterations", feedback_iterations)
        self.feedback_iterations = feedback_iterations
        if inference_feedback_iterations is not None:
            check_non_negative_int("inference_feedback_iterations", inference_feedback_iterations)
        self.inference_feedback_iterations = inference_feedback_iterations
        self.normalization = normalization
        self.selection = selection
        self.feedback_weight = float(feedback_weight)
        self.boost_strength = float(boost_strength)
        self.frequency_decay = float(frequency_decay)
        self.normalize_kernel = bool(normalize_kernel)
        if lifetime is None:
            # The top layer's few positions rank standardized scores; with
            # boosting alone one capsule won nearly every input at inference.
            lifetime = ("boost",) * (len(self.geometry) - 1) + ("standardize",)
        elif isinstance(lifetime, str):
            lifetime = (lifetime,) * len(self.geometry)
        self.lifetime = tuple(lifetime)
        if len(self.lifetime) != len(self.geometry):
            raise ValueError(
                f"Received: lifetime={list(self.lifetime)}; expected a string or "
                f"{len(self.geometry)} strings, one per layer"
            )
        self.statistics_decay = float(statistics_decay)
        self.seed = seed
        self.pred_caps_layers = []
        for index, ((capsules, dim, kernel, stride), layer_k) in enumerate(
            zip(self.geometry, self.k)
        ):
            check_positive_int(f"k[{index}]", layer_k)
            self.pred_caps_layers.append(
                PredCapsLayer(
                    capsules, dim, kernel, stride, k=layer_k,
                    inference_k=None if self.inference_k is None else self.inference_k[index],
                    feedback_weight=feedback_weight, normalization=normalization,
                    selection=selection, boost_strength=boost_strength,
                    frequency_decay=frequency_decay, normalize_kernel=normalize_kernel,
                    lifetime=self.lifetime[index], statistics_decay=statistics_decay,
                    kernel_initializer=keras.initializers.GlorotUniform(
                        None if seed is None else seed + index
                    ),
                    bias_initializer=keras.initializers.RandomNormal(
                        stddev=0.01, seed=None if seed is None else seed + 200 + index
                    ),
                    decoder_initializer=keras.initializers.GlorotUniform(
                        None if seed is None else seed + 100 + index
                    ),
                    name=f"pred_caps_{index + 1}",
                )
            )

    def build(self, input_shape):
        shape = tuple(input_shape)
        for layer in self.pred_caps_layers:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)

    def passes(self, images, training=False, local=False):
        """Runs the upward pass and the feedback rounds.

        Args:
            images: `[B, H, W, C]`.
            training: Python bool.
            local: Python bool; every layer's input and feedback under
                `stop_gradient`, as local learning needs.

        Returns:
            `(inputs, outputs)`: per layer, its input and its output on the
            last upward pass.
        """
        hold = ops.stop_gradient if local else (lambda tensor: tensor)
        last_pass = self.feedback_iterations
        if not training and self.inference_feedback_iterations is not None:
            last_pass = self.inference_feedback_iterations
        outputs = self._upward(images, None, training, 0 == last_pass, hold)
        for round_index in range(1, last_pass + 1):
            feedback = [
                hold(above.decode(output))
                for above, output in zip(self.pred_caps_layers[1:], outputs[1:])
            ] + [None]
            outputs = self._upward(images, feedback, training, round_index == last_pass, hold)
        inputs = [images] + outputs[:-1]
        return inputs, outputs

    def _upward(self, images, feedback, training, last, hold):
        outputs = []
        x = images
        for index, layer in enumerate(self.pred_caps_layers):
            y = layer(
                hold(x), feedback=None if feedback is None else feedback[index],
                training=training, update_frequency=last,
            )
            outputs.append(y)
            x = y
        return outputs

    def call(self, images, training=False):
        _, outputs = self.passes(images, training=training)
        top = outputs[-1]
        shape = ops.shape(top)
        return ops.reshape(top, (shape[0], shape[1] * shape[2] * shape[3]))

    def feature_responses(self):
        """The first layer's drive `conv(x, W) + b`: its filters' responses before the
        selection of capsules (its selected output is zero at most units)."""
        return self.pred_caps_layers[0].drive

    def compute_output_shape(self, input_shape):
        shape = tuple(input_shape)
        for layer in self.pred_caps_layers:
            shape = layer.compute_output_shape(shape)
        return (input_shape[0], math.prod(shape[1:]))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "geometry": self.geometry,
                "k": self.k,
                "inference_k": self.inference_k,
                "feedback_iterations": self.feedback_iterations,
                "inference_feedback_iterations": self.inference_feedback_iterations,
                "normalization": self.normalization,
                "selection": self.selection,
                "feedback_weight": self.feedback_weight,
                "boost_strength": self.boost_strength,
                "frequency_decay": self.frequency_decay,
                "normalize_kernel": self.normalize_kernel,
                "lifetime": self.lifetime,
                "statistics_decay": self.statistics_decay,
                "seed": self.seed,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="capskeras")
class PredCapsPretrainer(keras.Model):
    """Trains a `PredCapsEncoder` by local learning: every layer reconstructs its own input.

    The model adds one loss per layer,
    `mean |stop_gradient(x_l) - dec_l(y_l)|^2`, computed on the encoder's
    last pass with every layer's input and feedback held constant, so the
    gradient of layer `l`'s loss reaches only layer `l`'s weights; `fit`
    minimises their sum, which updates all layers in one step. Compile it
    with an optimizer and `loss=None` (`default_loss()`); `fit` takes
    images alone, or `make_example`'s `(images, images)` for the
    `image_mse` metric of the first layer's reconstruction, and reports
    `loss` and `layer_<n>_loss`. It follows the model contract
    (`serving_outputs` gives `encoding` and `reconstruction`), so a
    trainer's pre-training stage trains it like any model.

    Args:
        encoder: a `PredCapsEncoder`.

    Call arguments:
        images: `[B, H, W, C]` floats in [0, 1].
        training: Python bool.

    Returns:
        The first layer's reconstruction of the images, `[B, H, W, C]`.

    Example:

    >>> pretrainer = PredCapsPretrainer(PredCapsEncoder())
    >>> pretrainer.compile("adam")
    >>> # pretrainer.fit(images_dataset, epochs=...)

    Reference:
        The equivariance study's PredCaps (local, unsupervised learning of
        all layers at once).
    """

    def __init__(self, encoder, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.layer_loss_trackers = [
            keras.metrics.Mean(name=f"layer_{index + 1}_loss")
            for index in range(len(encoder.pred_caps_layers))
        ]

    def build(self, input_shape):
        if not self.encoder.built:
            self.encoder.build(input_shape)

    def local_losses(self, images, training=False):
        """Per layer, the reconstruction loss of its own input; and the image reconstruction."""
        inputs, outputs = self.encoder.passes(images, training=training, local=True)
        losses = [
            layer.reconstruction_loss(x, y)
            for layer, x, y in zip(self.encoder.pred_caps_layers, inputs, outputs)
        ]
        return losses, self.encoder.pred_caps_layers[0].decode(outputs[0])

    def call(self, images, training=False):
        losses, reconstruction = self.local_losses(images, training=training)
        for loss in losses:
            self.add_loss(loss)
        return reconstruction

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        losses = self.losses
        for tracker, loss in zip(self.layer_loss_trackers, losses):
            tracker.update_state(loss)
        return ops.sum(ops.stack([ops.cast(loss, "float32") for loss in losses]))

    @property
    def metrics(self):
        return super().metrics + self.layer_loss_trackers

    def make_example(self, images, labels):
        """The `(inputs, targets)` pair: the images, their own target (for the metrics)."""
        return images, images

    def default_loss(self):
        """None: the loss is the sum of the layers' local losses, added by the model."""
        return None

    def default_metrics(self):
        return [keras.metrics.MeanSquaredError(name="image_mse")]

    def serving_outputs(self, images):
        """`encoding` (the code) and the first layer's `reconstruction` of the images."""
        _, outputs = self.encoder.passes(images, training=False)
        top = outputs[-1]
        return {
            "encoding": ops.reshape(top, (ops.shape(top)[0], -1)),
            "reconstruction": self.encoder.pred_caps_layers[0].decode(outputs[0]),
        }

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config["encoder"] = keras.saving.serialize_keras_object(self.encoder)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        return cls(**config)


def predcaps_encoder(image_shape=(28, 28, 1), seed=None, k=DEFAULT_PREDCAPS_K,
                     feedback_iterations=DEFAULT_FEEDBACK_ITERATIONS,
                     normalization="unit_total", selection="capsule", inference_k=None,
                     inference_feedback_iterations=None, name="predcaps_encoder"):
    """The study's PredCaps encoder, built: images -> `[B, 256]` code.

    Args:
        image_shape: `(H, W, C)` of the input images.
        seed: int seeding the initializers, or None.
        k: three ints, winning capsules per position in each layer. With
            `selection="unit"` each layer keeps `k * capsule_dim` single
            units instead, the same number of active units.
        feedback_iterations: int >= 0, down-and-up rounds.
        normalization: `"unit_total"` (the study) or `"layer_norm"` (ablation).
        selection: `"capsule"` (the study) or `"unit"` (ablation).
        inference_k: None (the default: `k`) or three ints, winners per
            position at inference, counted as `k` is.
        inference_feedback_iterations: None (the default:
            `feedback_iterations`) or int >= 0, down-and-up rounds at inference.
        name: the model's name.

    Returns:
        A built `PredCapsEncoder`; train it with `PredCapsPretrainer` (or
        `pretrain_predcaps`) before freezing it under a head.
    """
    k = tuple(int(value) for value in k)
    if inference_k is not None:
        inference_k = tuple(int(value) for value in inference_k)
    if selection == "unit":
        k = _capsules_as_units(k)
        if inference_k is not None:
            inference_k = _capsules_as_units(inference_k)
    encoder = PredCapsEncoder(
        PREDCAPS_GEOMETRY, k, feedback_iterations, normalization, selection,
        inference_k=inference_k, seed=seed,
        inference_feedback_iterations=inference_feedback_iterations, name=name,
    )
    encoder.build((None,) + tuple(image_shape))
    return encoder


def _capsules_as_units(counts):
    """Capsule counts per layer as the same numbers of single units."""
    return tuple(count * dim for count, (_, dim, _, _) in zip(counts, PREDCAPS_GEOMETRY))


def pretrain_predcaps(encoder, images, epochs=1, learning_rate=1e-3, steps_per_epoch=None,
                      callbacks=None, verbose="auto", jit_compile="auto"):
    """Trains `encoder` in place by local learning on a dataset of images.

    Args:
        encoder: a `PredCapsEncoder`.
        images: a dataset (or array) of image batches, no labels.
        epochs, steps_per_epoch, callbacks, verbose: as in `fit`.
        learning_rate: Adam's learning rate.
        jit_compile: as in `compile`.

    Returns:
        The `keras.callbacks.History` of the local-learning `fit`.
    """
    pretrainer = PredCapsPretrainer(encoder, name="predcaps_pretrainer")
    pretrainer.compile(keras.optimizers.Adam(learning_rate), jit_compile=jit_compile)
    return pretrainer.fit(
        images, epochs=epochs, steps_per_epoch=steps_per_epoch, callbacks=callbacks,
        verbose=verbose,
    )
