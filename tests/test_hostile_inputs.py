"""Routing and selection layers under hostile inputs, in float32 and mixed precision.

Every layer gets inputs of zeros, huge values, tiny values and mixed signs
and scales, and must return finite outputs and finite gradients with
respect to its inputs and its trainable weights. Layers are built once per
dtype policy and evaluated eagerly.

The contract on magnitudes. A layer computes in its policy's compute
dtype, and under mixed precision it receives its inputs in that dtype: a
float32 `1e30` handed to a `mixed_float16` layer is `inf` before the layer
sees it. Keeping values inside the compute dtype's range is the caller's
job (a `mixed_float16` model feeds images in [0, 1] and its float16
activations stay small), so every input here is drawn inside that range,
with headroom for the layers' own linear sums (a convolution adds tens of
products): "huge" is `1e30` in float32 and bfloat16 (whose exponent range
is float32's), and `1e3` in float16, whose squares (`1e6`) overflow
float16's 65504 as `1e30`'s overflow float32; "tiny" is `1e-30`, and
`1e-7` (a subnormal) in float16, where `1e-30` is 0. A value whose square
or sum overflows inside a layer is the layer's problem and fixed there:
norms and statistics scale their inputs or run in float32.

Non-finite inputs (NaN, inf) are not repaired: a layer lets NaN through
to every output that depends on the non-finite value, so a poisoned input
never comes out as a confident, finite answer.

Gradients are those of the mean of every output (a loss of mean-type, as
Keras's losses are), taken with `tf.GradientTape`; for the EM layers the
poses enter that loss divided by their scale (see `scale_free_poses`).
"""

import functools

import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import keras
import numpy as np
import pytest
import tensorflow as tf

from capskeras import ops as capsule_ops
from capskeras.layers import CapsuleDense
from capskeras.layers import ClassMatrixCapsules
from capskeras.layers import ConvMatrixCapsules
from capskeras.layers import GroupBatchNormalization
from capskeras.layers import GroupConv2D
from capskeras.layers import GroupPooling
from capskeras.layers import KSparse
from capskeras.layers import PredCapsLayer
from capskeras.layers import PrimaryCapsules
from capskeras.layers import PrimaryMatrixCapsules
from capskeras.layers import RankMask
from capskeras.layers import RotatedConv2D
from capskeras.settings import dtype_policy

POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")
KINDS = ("zeros", "huge", "tiny", "mixed")
HUGE = {"float32": 1e30, "bfloat16": 1e30, "float16": 1e3}
TINY = {"float32": 1e-30, "bfloat16": 1e-30, "float16": 1e-7}
SETTINGS = hypothesis.settings(max_examples=2, deadline=None, derandomize=True,
                               suppress_health_check=list(hypothesis.HealthCheck))


def element_pool(kind, compute_dtype):
    """The values an input of `kind` is made of, in `compute_dtype`'s range."""
    huge, tiny = HUGE[compute_dtype], TINY[compute_dtype]
    return {
        "zeros": [0.0],
        "huge": [huge, -huge, 0.5 * huge],
        "tiny": [tiny, -tiny, 0.5 * tiny],
        "mixed": [huge, -huge, tiny, -tiny, 0.0, 1.0, -1.0, -0.25 * huge],
    }[kind]


def hostile_arrays(kind, compute_dtype, shape):
    """A strategy of float32 arrays of `shape` made of `kind`'s values."""
    return hnp.arrays(np.float32, shape,
                      elements=st.sampled_from(element_pool(kind, compute_dtype)))


def unit_arrays(shape):
    """Activations and couplings, documented in [0, 1]: their edges and inner values."""
    return hnp.arrays(np.float32, shape,
                      elements=st.sampled_from([0.0, 1e-30, 0.5, 1.0, 0.999]))


# ---------------------------------------------------------------- the cases
#
# A case: how to build its layer under a policy, the shapes of the hostile
# inputs and of the [0, 1] inputs it takes, and how to call it. `call`
# returns a tuple of output tensors; the inputs it gets are tensors in the
# layer's compute dtype (hostile) and float32 (unit inputs).


def _squash(layer, x, training):
    return (capsule_ops.squash(x),)


def _safe_norm(layer, x, training):
    return (capsule_ops.safe_norm(x, axis=-1),)


def _plain(layer, x, training):
    return (layer(x),)


def _training(layer, x, training):
    return (layer(x, training=training),)


def _matrix(layer, poses, activations, training):
    return tuple(layer((poses, activations)))


def scale_free_poses(outputs):
    """Routed poses over their sample's largest entry (a constant), and the activations.

    The loss for the EM layers' gradients. Their poses grow with the
    input's scale, and a pose's sensitivity to the routing grows with the
    pose over its spread, so the gradient of a unit-weighted loss on poses
    of 1e30 reaches ~1e42 in the kernel: not a float32. The next EM layer
    sees the poses this way, divided by their scale, and the spread loss
    reads the activations.
    """
    poses, activations = (tf.cast(output, "float32") for output in outputs)
    largest = tf.reduce_max(tf.abs(poses), axis=tuple(range(1, poses.shape.rank)),
                            keepdims=True)
    return poses / tf.stop_gradient(tf.maximum(largest, 1.0)), activations


def _pred_caps(layer, x, feedback, training):
    outputs = layer(x, feedback=feedback, training=training)
    return outputs, layer.decode(outputs)


def _rank_mask(layer, capsules, couplings, training):
    return (layer(capsules, couplings, training=training),)


CASES = {
    "squash": (None, [(2, 5, 4)], [], _squash),
    "safe_norm": (None, [(2, 5, 4)], [], _safe_norm),
    "PrimaryCapsules": (
        lambda: PrimaryCapsules(2, 4, kernel_size=3, strides=2),
        [(2, 7, 7, 2)], [], _plain),
    "CapsuleDense": (
        lambda: CapsuleDense(3, 4, routing_iterations=3),
        [(2, 6, 4)], [], _training),
    "PrimaryMatrixCapsules": (
        lambda: PrimaryMatrixCapsules(2), [(2, 3, 3, 3)], [],
        lambda layer, x, training: tuple(layer(x))),
    "ConvMatrixCapsules": (
        lambda: ConvMatrixCapsules(2, 3, routing_iterations=3),
        [(2, 4, 4, 2, 4, 4)], [(2, 4, 4, 2)], _matrix, scale_free_poses),
    "ClassMatrixCapsules": (
        lambda: ClassMatrixCapsules(3, routing_iterations=3),
        [(2, 2, 2, 2, 4, 4)], [(2, 2, 2, 2)], _matrix, scale_free_poses),
    "PredCapsLayer": (
        lambda: PredCapsLayer(3, 2, kernel_size=3, strides=2, k=1),
        [(2, 6, 6, 2), (2, 3, 3, 6)], [], _pred_caps),
    "PredCapsLayer_standardize": (
        lambda: PredCapsLayer(3, 2, kernel_size=3, strides=2, k=2,
                                    lifetime="standardize"),
        [(2, 6, 6, 2), (2, 3, 3, 6)], [], _pred_caps),
    "KSparse": (lambda: KSparse(3, alpha=2.0), [(2, 2, 2, 3)], [],
                _training),
    "RankMask": (lambda: RankMask(2), [(2, 3, 4)], [(2, 4, 3)],
                 _rank_mask),
    "GroupConv2D_lifting": (
        lambda: GroupConv2D(2, 3, group="p4", lifting=True),
        [(2, 5, 5, 1)], [], _plain),
    "GroupConv2D_p4m": (
        lambda: GroupConv2D(2, 3, group="p4m", lifting=False),
        [(2, 5, 5, 16)], [], _plain),
    "RotatedConv2D": (
        lambda: RotatedConv2D(2, 3, rotations=8, lifting=False),
        [(2, 5, 5, 8)], [], _plain),
    "GroupPooling_max": (lambda: GroupPooling("p4", "max"),
                         [(2, 3, 3, 8)], [], _plain),
    "GroupPooling_mean": (lambda: GroupPooling("p4", "mean"),
                          [(2, 3, 3, 8)], [], _plain),
    "GroupBatchNormalization": (
        lambda: GroupBatchNormalization("p4"), [(2, 3, 3, 8)], [],
        _training),
}


class BuiltLayers:
    """Each case's layer, built once per policy, and its state as built."""

    def __init__(self):
        self._layers = {}

    def get(self, case, policy):
        key = (case, policy)
        if key not in self._layers:
            make, hostile_shapes, unit_shapes, call = CASES[case][:4]
            if make is None:
                self._layers[key] = (None, [])
            else:
                with dtype_policy(policy):
                    layer = make()
                dtype = keras.DTypePolicy(policy).compute_dtype
                inputs = [tf.zeros(shape, dtype) for shape in hostile_shapes]
                inputs += [tf.zeros(shape, "float32") for shape in unit_shapes]
                call(layer, *inputs, training=False)
                self._layers[key] = (layer, layer.get_weights())
        layer, weights = self._layers[key]
        if layer is not None:
            layer.set_weights(weights)  # Forget the state the last example left.
        return layer


@pytest.fixture(scope="module")
def built():
    """The layers of every case and policy, built under that global dtype policy."""
    previous = keras.config.dtype_policy()
    yield BuiltLayers()
    keras.config.set_dtype_policy(previous)


def run_case(case, layer, hostile, units, training):
    """Outputs, and gradients of their mean w.r.t. the hostile inputs and the weights."""
    call, loss_view = CASES[case][3], (CASES[case][4:] or [lambda outputs: outputs])[0]
    weights = [] if layer is None else layer.trainable_variables
    with tf.GradientTape() as tape:
        tape.watch(hostile)
        outputs = call(layer, *hostile, *units, training=training)
        loss = sum(tf.reduce_mean(tf.cast(output, "float32"))
                   for output in loss_view(outputs))
    gradients = tape.gradient(loss, list(hostile) + list(weights))
    return outputs, gradients, weights


def non_finite(tensors, names):
    """The names of the tensors holding NaN or inf (None gradients are skipped)."""
    return [name for tensor, name in zip(tensors, names)
            if tensor is not None
            and not np.all(np.isfinite(np.asarray(tf.cast(tensor, "float32"))))]


def check_finite(built, case, policy, kind, data, training):
    _, hostile_shapes, unit_shapes, _ = CASES[case][:4]
    layer = built.get(case, policy)
    dtype = keras.DTypePolicy(policy).compute_dtype
    hostile = [tf.constant(data.draw(hostile_arrays(kind, dtype, shape)), dtype)
               for shape in hostile_shapes]
    units = [tf.constant(data.draw(unit_arrays(shape))) for shape in unit_shapes]
    outputs, gradients, weights = run_case(case, layer, hostile, units, training)
    names = ([f"output {i}" for i in range(len(outputs))]
             + [f"d/d input {i}" for i in range(len(hostile))]
             + [f"d/d {w.path}" for w in weights])
    bad = non_finite(list(outputs) + list(gradients), names)
    assert not bad, f"{case} under {policy}, {kind} inputs: non-finite {bad}"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("case", sorted(CASES))
@SETTINGS
@hypothesis.given(data=st.data(), training=st.booleans())
def test_finite_outputs_and_gradients(built, case, policy, kind, data, training):
    check_finite(built, case, policy, kind, data, training)


# ------------------------------------------------------- non-finite inputs

# Routing mixes every input capsule of a sample into every output: one
# non-finite input leaves the whole sample NaN. (In the 4x4 grid of
# ConvMatrixCapsules' case, every 3x3 window holds cell (1, 1).)
WHOLE_SAMPLE = ("CapsuleDense", "ConvMatrixCapsules", "ClassMatrixCapsules")
BAD_VALUES = (np.nan, np.inf, -np.inf)


def poisoned_inputs(case, bad):
    """Normal inputs, with `bad` at index (0, 1, ..., 1, 0) of the first hostile input."""
    _, hostile_shapes, unit_shapes = CASES[case][:3]
    rng = np.random.default_rng(0)
    hostile = [rng.standard_normal(shape).astype("float32") for shape in hostile_shapes]
    hostile[0][(0,) + (1,) * (len(hostile_shapes[0]) - 2) + (0,)] = bad
    units = [rng.uniform(size=shape).astype("float32") for shape in unit_shapes]
    return [tf.constant(x) for x in hostile], [tf.constant(x) for x in units]


@pytest.mark.parametrize("bad", BAD_VALUES, ids=("nan", "inf", "-inf"))
@pytest.mark.parametrize("training", (False, True), ids=("inference", "training"))
@pytest.mark.parametrize("case", sorted(CASES))
def test_non_finite_inputs_never_give_a_finite_answer(built, case, training, bad):
    """NaN or inf in one sample: NaN or inf in that sample's outputs it reaches, not beyond.

    The exceptions are exact: max pooling over the group lets a `-inf`
    copy lose to the others, a primary matrix capsule with an infinite
    pose has the sigmoid's limit, 0 or 1, as its activation, and batch
    normalization in training shares its statistics over the batch, so
    the poisoned channel is NaN in every sample (the others stay finite).
    """
    layer = built.get(case, "float32")
    hostile, units = poisoned_inputs(case, bad)
    outputs = [np.asarray(output) for output in
               CASES[case][3](layer, *hostile, *units, training=training)]
    if case == "GroupPooling_max" and bad == -np.inf:
        expected = np.max(np.asarray(hostile[0]).reshape(2, 3, 3, 2, 4), axis=-1)
        expected[0, 1, 1, 0] = np.max(np.asarray(hostile[0])[0, 1, 1, 1:4])
        np.testing.assert_array_equal(outputs[0], expected)
        return
    if case == "GroupBatchNormalization" and training:
        # Channel 0 (feature maps 0 to 3) holds the bad value.
        assert np.all(np.isnan(outputs[0][..., :4]))
        assert np.all(np.isfinite(outputs[0][..., 4:]))
        return
    if case == "PrimaryMatrixCapsules" and np.isinf(bad):
        # The poses are non-finite; the activation is the sigmoid's limit, 0 or 1.
        assert not np.all(np.isfinite(outputs[0][0]))
        outputs = outputs[:1]
    for output in outputs:
        assert np.all(np.isfinite(output[1])), "the other sample must not be touched"
        if case in WHOLE_SAMPLE:
            assert np.all(np.isnan(output[0]))
        elif case in ("squash", "safe_norm"):
            # Only capsule 1 holds the bad entry.
            assert np.all(np.isnan(output[0, 1]))
            assert np.all(np.isfinite(np.delete(output[0], 1, axis=0)))
        else:
            assert not np.all(np.isfinite(output[0]))


def test_rank_mask_gives_nan_for_non_finite_couplings(built):
    """A NaN or inf coupling cannot rank: the sample's output is NaN, not a full-weight pass.

    (A `-inf` coupling loses the max over the types exactly, like any
    coupling below the others.)
    """
    layer = built.get("RankMask", "float32")
    capsules = tf.ones((2, 3, 4))
    couplings = np.full((2, 4, 3), 1.0 / 3.0, "float32")
    couplings[1, :, 0] = 0.9  # Sample 1 is clean: capsule 0 ranks first.
    for bad in (np.nan, np.inf):
        couplings[0, 1, 2] = bad
        outputs = np.asarray(layer(capsules, tf.constant(couplings), training=True))
        assert np.all(np.isnan(outputs[0]))
        np.testing.assert_array_equal(outputs[1, :, 0], [1.0, 0.0, 0.0])
    # The poisoned samples never counted as a first place: capsule 0 won every clean one.
    frequency = layer.frequency.numpy()
    assert frequency[0] > frequency[1] == frequency[2]
