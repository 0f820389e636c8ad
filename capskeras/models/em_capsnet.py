"""The matrix-capsule network of Hinton, Sabour and Frosst (2018), for smallNORB and MNIST."""

import keras
from keras import ops

from capskeras import losses
from capskeras.layers.class_matrix_capsules import ClassMatrixCapsules
from capskeras.layers.conv_matrix_capsules import ConvMatrixCapsules
from capskeras.layers.em_routing import POSE_SIZE
from capskeras.layers.primary_matrix_capsules import PrimaryMatrixCapsules

# The paper's smallNORB model is A=B=C=D=32; the small one is the common
# reimplementations' benchmark size.
LARGE = {"conv_channels": 32, "primary_types": 32, "conv1_types": 32, "conv2_types": 32}
SMALL = {"conv_channels": 64, "primary_types": 8, "conv1_types": 16, "conv2_types": 16}


def matrix_capsule_encoder(image_shape, num_classes, conv_channels, primary_types,
                           conv1_types, conv2_types, routing_iterations=3,
                           inverse_temperature=0.01, routing_jit_compile="auto",
                           recompute_routing=False, routing_chunk_size=None,
                           name="matrix_capsule_encoder"):
    """Images -> `(class poses [B, K, 4, 4], class activations [B, K])`.

    ReLU conv 5x5 stride 2 (A channels) -> primary capsules (B types) ->
    conv capsules 3x3 stride 2 (C types) -> conv capsules 3x3 stride 1
    (D types) -> class capsules with coordinate addition; every capsule
    layer routes by EM. All convolutions are valid: 32x32 inputs give
    14 -> 6 -> 4 positions, 28x28 MNIST digits 12 -> 5 -> 3.
    """
    images = keras.Input(shape=tuple(image_shape), name="images")
    features = keras.layers.Conv2D(conv_channels, 5, strides=2, activation="relu",
                                   name="conv1")(images)
    capsules = PrimaryMatrixCapsules(primary_types, name="primary_capsules")(features)
    routing = {"routing_iterations": routing_iterations,
               "inverse_temperature": inverse_temperature,
               "routing_jit_compile": routing_jit_compile,
               "recompute_routing": recompute_routing,
               "routing_chunk_size": routing_chunk_size}
    capsules = ConvMatrixCapsules(conv1_types, 3, strides=2, name="conv_capsules_1",
                                  **routing)(capsules)
    capsules = ConvMatrixCapsules(conv2_types, 3, strides=1, name="conv_capsules_2",
                                  **routing)(capsules)
    outputs = ClassMatrixCapsules(num_classes, name="class_capsules", **routing)(capsules)
    return keras.Model(images, outputs, name=name)


@keras.saving.register_keras_serializable(package="capskeras")
class EmCapsNet(keras.Model):
    """Matrix capsules with EM routing, trained with the spread loss.

    The class capsules' activations are the class scores. The spread
    loss's margin is a model variable that every training step sets from
    the optimizer's step count along `SpreadMarginSchedule(0.2, 0.9,
    margin_steps)`, so a resumed run continues the schedule where it
    stopped.

    Args:
        image_shape: `(H, W, C)`: 32x32x1 for smallNORB crops, 28x28x1 for MNIST.
        num_classes: class capsules; 5 for smallNORB, 10 for MNIST.
        conv_channels, primary_types, conv1_types, conv2_types: the paper's
            A, B, C, D (`LARGE`, the paper's model, or `SMALL`).
        routing_iterations: int >= 1, EM iterations in every capsule layer.
        inverse_temperature: float > 0, EM's final `lambda`.
        margin_steps: int >= 1, training steps over which the margin grows.
        routing_jit_compile: `"auto"`, `True` or `False`, for every capsule
            layer (see `ConvMatrixCapsules`).
        recompute_routing, routing_chunk_size: for every capsule layer (see
            `ConvMatrixCapsules`): route again in the backward pass, in
            chunks of this many samples, instead of keeping the routing's
            intermediates.

    Call arguments:
        inputs: images `[B, H, W, C]`.
        training: Python bool.

    Returns:
        A dict: `"activations"` `[B, num_classes]`, the class scores. The
        class poses are in `serving_outputs` and `encoder`'s outputs.

    Example:

    >>> model = EmCapsNet((28, 28, 1), 10, **SMALL)
    >>> model.compile("adam", model.default_loss(), metrics=model.default_metrics())

    Reference:
        Hinton, Sabour and Frosst, "Matrix capsules with EM routing",
        ICLR 2018. https://openreview.net/forum?id=HJWLfGWRb
    """

    def __init__(self, image_shape=(32, 32, 1), num_classes=5, conv_channels=64,
                 primary_types=8, conv1_types=16, conv2_types=16, routing_iterations=3,
                 inverse_temperature=0.01, margin_steps=10000, routing_jit_compile="auto",
                 recompute_routing=False, routing_chunk_size=None, **kwargs):
        super().__init__(**kwargs)
        self.image_shape = tuple(int(dim) for dim in image_shape)
        self.num_classes = int(num_classes)
        self.sizes = {"conv_channels": int(conv_channels), "primary_types": int(primary_types),
                      "conv1_types": int(conv1_types), "conv2_types": int(conv2_types)}
        self.routing_iterations = int(routing_iterations)
        self.inverse_temperature = float(inverse_temperature)
        self.margin_schedule = losses.SpreadMarginSchedule(steps=int(margin_steps))
        self.routing_jit_compile = routing_jit_compile
        self.recompute_routing = recompute_routing
        self.routing_chunk_size = routing_chunk_size
        self.encoder = matrix_capsule_encoder(
            self.image_shape, self.num_classes, routing_iterations=self.routing_iterations,
            inverse_temperature=self.inverse_temperature,
            routing_jit_compile=routing_jit_compile, recompute_routing=recompute_routing,
            routing_chunk_size=routing_chunk_size, **self.sizes)
        # Every replica computes the same value; the first one's is kept.
        self.margin = self.add_weight(
            name="spread_margin", shape=(), trainable=False,
            initializer=keras.initializers.Constant(self.margin_schedule.start),
            aggregation="only_first_replica")

    def build(self, input_shape):
        self.built = True

    def call(self, inputs, training=False):
        _, activations = self.encoder(inputs, training=training)
        return {"activations": activations}

    def train_step(self, *args, **kwargs):
        self.margin.assign(self.margin_schedule(self.optimizer.iterations))
        return super().train_step(*args, **kwargs)

    def make_example(self, images, labels):
        """The `(inputs, targets)` pair `fit` and `evaluate` take."""
        return images, {"activations": labels}

    def default_loss(self):
        return {"activations": losses.SpreadLoss(margin=self.margin)}

    def default_metrics(self):
        return {"activations": [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]}

    def serving_outputs(self, images):
        """`encoding` (each class capsule's 16 pose values and activation) and class scores.

        `probabilities` are the class activations normalised to sum to 1;
        `class_activations` are the activations themselves.
        """
        poses, activations = self.encoder(images, training=False)
        poses = ops.cast(ops.reshape(poses, (-1, self.num_classes, POSE_SIZE)), "float32")
        activations = ops.cast(activations, "float32")
        return {
            "encoding": ops.reshape(
                ops.concatenate([poses, ops.expand_dims(activations, -1)], axis=-1),
                (-1, self.num_classes * (POSE_SIZE + 1))),
            "class_activations": activations,
            "probabilities": activations / (ops.sum(activations, axis=-1, keepdims=True) + 1e-7),
            "class_ids": ops.argmax(activations, axis=-1),
        }

    def compute_output_shape(self, input_shape):
        batch = input_shape[0]
        return {"activations": (batch, self.num_classes)}

    def get_config(self):
        config = super().get_config()
        config.update({
            "image_shape": self.image_shape,
            "num_classes": self.num_classes,
            **self.sizes,
            "routing_iterations": self.routing_iterations,
            "inverse_temperature": self.inverse_temperature,
            "margin_steps": self.margin_schedule.steps,
            "routing_jit_compile": self.routing_jit_compile,
            "recompute_routing": self.recompute_routing,
            "routing_chunk_size": self.routing_chunk_size,
        })
        return config
