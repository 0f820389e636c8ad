"""Every public layer, loss and op of capskeras, checked on the current Keras backend.

The TensorFlow backend writes a reference: each layer case as a small
functional model saved to `.keras` (kernels initialized to zeros, then
every trainable weight moved by a seeded normal, so that no bias or scale
is trivially 0 or 1), and the inputs, outputs and gradients of every case. Any backend then checks
itself against it: it loads each `.keras` file, runs the same inputs
forward (inference) and backward (training mode, the gradient of a fixed
random projection of the outputs with respect to the float inputs and the
trainable weights), compares both with TensorFlow's to float32 rounding,
saves the model to `.keras` again and loads it back. It also checks the
routing against a NumPy reference, the exact group equivariance of
`GroupConv2D` and `GroupPooling`, and `model.fit` (with `jit_compile=True`
on JAX).

Under JAX the backward pass runs under `jax.jit`, so a layer that branches
in Python on a tensor's value fails there.

```bash
KERAS_BACKEND=tensorflow python -m capskeras.testing.backend_checks write DIR
KERAS_BACKEND=jax python -m capskeras.testing.backend_checks check DIR
```

Importing this module imports no TensorFlow on other backends.
"""

import json
import os
import sys
import tempfile
import time
import zlib

import keras
import numpy as np
from keras import ops

from capskeras import layers
from capskeras import losses
from capskeras import ops as capsule_ops
from capskeras.testing import equivariance

BATCH = 2
REFERENCE = "reference.npz"


# ----------------------------------------------------------------- cases


def _rng(name):
    return np.random.default_rng(zlib.crc32(name.encode()))


def _normal(shape, dtype="float32"):
    return ("normal", shape, dtype)


def _uniform(shape):
    return ("uniform", shape, "float32")


def _labels(classes):
    return ("labels", (), "int32", classes)


def _simplex(shape):
    """Coupling coefficients: positive, summing to 1 over the last axis."""
    return ("simplex", shape, "float32")


def _make_inputs(name, specs):
    rng = _rng(name + "/inputs")
    arrays = []
    for spec in specs:
        kind, shape, dtype = spec[:3]
        full = (BATCH,) + tuple(shape)
        if kind == "normal":
            value = rng.normal(size=full)
        elif kind == "uniform":
            value = rng.uniform(size=full)
        elif kind == "labels":
            value = rng.integers(0, spec[3], size=full)
        else:
            logits = rng.normal(size=full) * 2.0
            value = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
        arrays.append(value.astype(dtype))
    return arrays


def _call(model, xs, training):
    return model(xs if len(xs) > 1 else xs[0], training=training)


def _pred_caps_run(model, xs, training):
    """The layer, its decoder and its local reconstruction loss."""
    layer = model.layers[-1]
    outputs = layer(xs[0], training=training, update_frequency=False)
    return [outputs, layer.decode(outputs), layer.reconstruction_loss(xs[0], outputs)]


def _matrix_inputs(poses_shape):
    return [_normal(poses_shape), _uniform(poses_shape[:-2])]


# Every case starts from zero kernels and gets its weights from `_perturb`:
# the check is of the layers, not of the backends' random initializers (which
# JAX compiles once per shape, seconds each).
Z = {"kernel_initializer": "zeros"}
PRED_CAPS_ZEROS = {"kernel_initializer": "zeros", "bias_initializer": "zeros",
                   "decoder_initializer": "zeros"}

# name: (build the layer, input specs, how to call it on the model's inputs
# (None: on the one input), how to run the model (None: call it))
LAYER_CASES = {
    "primary_capsules": (
        lambda: layers.PrimaryCapsules(2, 4, 3, strides=2, **Z), [_normal((7, 7, 3))],
        None, None),
    "primary_capsules_native_same": (
        lambda: layers.PrimaryCapsules(2, 3, 3, strides=2, padding="same",
                                       filter_gradient="native", **Z),
        [_normal((6, 6, 2))], None, None),
    "fast_conv2d_same": (
        lambda: layers.FastConv2D(4, 3, strides=2, padding="same",
                                  filter_gradient="forward_conv", **Z),
        [_normal((7, 7, 3))], None, None),
    "fast_conv2d_whole_input": (
        lambda: layers.FastConv2D(5, 4, strides=4, **Z), [_normal((4, 4, 3))], None, None),
    "capsule_dense": (
        lambda: layers.CapsuleDense(3, 4, routing_iterations=3, **Z), [_normal((6, 5))],
        lambda layer, xs: layer(xs[0], return_couplings=True), None),
    "capsule_dense_xla": (
        lambda: layers.CapsuleDense(3, 4, routing_iterations=2, routing_jit_compile=True, **Z),
        [_normal((6, 5))], None, None),
    "capsule_length": (lambda: layers.CapsuleLength(), [_normal((3, 4))], None, None),
    "capsule_mask_by_length": (lambda: layers.CapsuleMask(), [_normal((3, 4))], None, None),
    "capsule_mask_by_label": (
        lambda: layers.CapsuleMask(), [_normal((3, 4)), _labels(3)],
        lambda layer, xs: layer(xs[0], mask_labels=xs[1]), None),
    "k_sparse": (lambda: layers.KSparse(2, alpha=1.5), [_normal((6,))], None, None),
    "stop_gradient": (lambda: layers.StopGradient(), [_normal((3,))], None, None),
    "rank_mask": (
        lambda: layers.RankMask(input_types=2, boost_interval=1),
        [_normal((3, 4)), _simplex((4, 3))], lambda layer, xs: layer(xs[0], xs[1]), None),
    "pred_caps": (
        lambda: layers.PredCapsLayer(3, 2, 3, strides=2, k=1, lifetime="standardize",
                                     selection_jit_compile=True, **PRED_CAPS_ZEROS),
        [_normal((6, 6, 2))], None, _pred_caps_run),
    "pred_caps_feedback": (
        lambda: layers.PredCapsLayer(3, 2, 3, strides=1, k=2, padding="valid",
                                     normalization="layer_norm", **PRED_CAPS_ZEROS),
        [_normal((5, 5, 2)), _normal((3, 3, 6))],
        lambda layer, xs: layer(xs[0], feedback=xs[1]), None),
    "group_conv2d_p4_lifting": (
        lambda: layers.GroupConv2D(2, 3, group="p4", lifting=True, **Z),
        [_normal((5, 5, 2))], None, None),
    "group_conv2d_p4m": (
        lambda: layers.GroupConv2D(2, 3, group="p4m", lifting=False, strides=2, padding="same",
                                   **Z),
        [_normal((5, 5, 16))], None, None),
    "rotated_conv2d": (
        lambda: layers.RotatedConv2D(2, 3, rotations=8, **Z), [_normal((5, 5, 1))], None, None),
    "group_pooling_max": (lambda: layers.GroupPooling("p4", "max"), [_normal((3, 3, 8))],
                          None, None),
    "group_pooling_mean": (lambda: layers.GroupPooling("p4m", "mean"), [_normal((3, 3, 16))],
                           None, None),
    "group_batch_normalization": (
        lambda: layers.GroupBatchNormalization("p4"), [_normal((3, 3, 8))], None, None),
    "primary_matrix_capsules": (
        lambda: layers.PrimaryMatrixCapsules(2, **Z), [_normal((3, 3, 4))], None, None),
    "conv_matrix_capsules": (
        lambda: layers.ConvMatrixCapsules(2, 2, strides=1, routing_iterations=2,
                                          routing_jit_compile=True, **Z),
        _matrix_inputs((3, 3, 2, 4, 4)), lambda layer, xs: layer(tuple(xs)), None),
    "class_matrix_capsules": (
        lambda: layers.ClassMatrixCapsules(3, routing_iterations=2, **Z),
        _matrix_inputs((2, 2, 2, 4, 4)), lambda layer, xs: layer(tuple(xs)), None),
}


LABELS, SCORES, IMAGES = _labels(3), _uniform((3,)), _uniform((4, 4, 1))


# name: (the function of the input tensors, input specs)
FUNCTION_CASES = {
    "squash": (lambda x: capsule_ops.squash(x), [_normal((3, 4))]),
    "squash_at_zero": (lambda x: capsule_ops.squash(x * 0.0), [_normal((3, 4))]),
    "safe_norm": (lambda x: capsule_ops.safe_norm(x, axis=1, keepdims=True), [_normal((3, 4))]),
    "capsule_lengths": (lambda x: capsule_ops.capsule_lengths(x), [_normal((3, 4))]),
    "margin_loss": (lambda y, p: losses.margin_loss(y, p), [LABELS, SCORES]),
    "margin_loss_class": (lambda y, p: losses.MarginLoss(m_plus=0.8)(y, p),
                          [LABELS, SCORES]),
    "reconstruction_loss": (lambda x, r: losses.reconstruction_loss(x, r),
                            [IMAGES, IMAGES]),
    "reconstruction_loss_class": (lambda x, r: losses.ReconstructionLoss(scale=0.5)(x, r),
                                  [IMAGES, IMAGES]),
    "spread_loss": (lambda y, a: losses.spread_loss(y, a, margin=0.6), [LABELS, SCORES]),
    "spread_loss_class": (lambda y, a: losses.SpreadLoss(margin=0.4)(y, a),
                          [LABELS, SCORES]),
    "spread_margin_schedule": (
        lambda step: losses.SpreadMarginSchedule(0.2, 0.9, steps=10)(step),
        [_labels(20)]),
}

SERIALIZED_LOSSES = (
    losses.MarginLoss(m_plus=0.8, m_minus=0.2, down_weight=0.4),
    losses.ReconstructionLoss(scale=0.01),
    losses.SpreadLoss(margin=0.3),
    losses.SpreadMarginSchedule(0.1, 0.8, steps=7),
)


def _layer_model(name):
    build, specs, call, _ = LAYER_CASES[name]
    inputs = [keras.Input(spec[1], dtype=spec[2]) for spec in specs]
    layer = build()
    outputs = call(layer, inputs) if call else layer(inputs[0])
    return keras.Model(inputs if len(inputs) > 1 else inputs[0], outputs, name=name)


def _perturb(model, name, scale=0.2):
    """Moves every trainable weight off its initial value by a seeded normal."""
    rng = _rng(name + "/weights")
    for variable in model.trainable_variables:
        value = _numpy(variable.value)
        variable.assign(value + scale * rng.normal(size=value.shape).astype(value.dtype))


# ------------------------------------------------------------ gradients


def _float(array):
    return np.issubdtype(np.asarray(array).dtype, np.floating)


def _cotangents(name, outputs):
    rng = _rng(name + "/cotangents")
    return [rng.normal(size=np.shape(o)).astype("float32") for o in outputs]


def _projection(outputs, cotangents):
    total = 0.0
    for output, cotangent in zip(outputs, cotangents):
        total = total + ops.sum(ops.cast(output, "float32") * ops.convert_to_tensor(cotangent))
    return total


def forward(run, xs):
    """`run(tensors)` as NumPy arrays: under `jax.jit` on JAX, eagerly elsewhere.

    State updates inside `run` are discarded on JAX (as in any stateless call).
    """
    if keras.backend.backend() == "jax":
        import jax

        def stateless(tensors):
            with keras.StatelessScope():
                return run(tensors)

        outputs = jax.jit(stateless)([ops.convert_to_tensor(x) for x in xs])
    else:
        outputs = run([ops.convert_to_tensor(x) for x in xs])
    return [_numpy(o) for o in outputs]


def gradients(run, variables, xs, cotangents):
    """Gradients of `sum_i <run(xs)_i, cotangents_i>` for the float `xs` and `variables`.

    `run(tensors)` returns a list of tensors; it is traced by `jax.jit` on
    JAX and run eagerly on TensorFlow and PyTorch.

    Returns:
        `(outputs, input_gradients, variable_gradients)` as NumPy arrays;
        zeros where nothing flows.
    """
    backend = keras.backend.backend()
    floats = [i for i, x in enumerate(xs) if _float(x)]
    if backend == "jax":
        import jax

        constants = [ops.convert_to_tensor(x) for x in xs]

        def projected(values, float_xs):
            tensors = list(constants)
            for i, x in zip(floats, float_xs):
                tensors[i] = x
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                outputs = run(tensors)
            return _projection(outputs, cotangents), outputs

        values = [v.value for v in variables]
        step = jax.jit(jax.value_and_grad(projected, argnums=(0, 1), has_aux=True))
        (_, outputs), (variable_grads, input_grads) = step(values, [xs[i] for i in floats])
    elif backend == "tensorflow":
        import tensorflow as tf

        tensors = [tf.constant(x) for x in xs]
        with tf.GradientTape() as tape:
            tape.watch([tensors[i] for i in floats])
            outputs = run(tensors)
            total = _projection(outputs, cotangents)
        grads = tape.gradient(total, [tensors[i] for i in floats] + list(variables))
        input_grads, variable_grads = grads[:len(floats)], grads[len(floats):]
    elif backend == "torch":
        tensors = [ops.convert_to_tensor(x) for x in xs]
        for i in floats:
            tensors[i].requires_grad_(True)
        for variable in variables:
            variable.value.grad = None
        outputs = run(tensors)
        total = _projection(outputs, cotangents)
        if total.requires_grad:  # Else nothing flows (all stopped): zero gradients.
            total.backward()
        input_grads = [tensors[i].grad for i in floats]
        variable_grads = [variable.value.grad for variable in variables]
    else:
        raise ValueError(f"Received: backend={backend!r}; expected 'jax', 'tensorflow' or 'torch'")

    def numpy(grads, like):
        return [np.zeros(np.shape(x), "float32") if g is None else _numpy(g)
                for g, x in zip(grads, like)]

    shapes = [np.zeros(tuple(v.shape)) for v in variables]
    return ([_numpy(o) for o in outputs], numpy(input_grads, [xs[i] for i in floats]),
            numpy(variable_grads, shapes))


def _numpy(tensor):
    if hasattr(tensor, "detach"):
        tensor = tensor.detach().cpu()
    return np.asarray(keras.ops.convert_to_numpy(tensor))


# ------------------------------------------------------------ the runs


def _layer_results(name, model):
    _, specs, _, run = LAYER_CASES[name]
    run = run or (lambda m, xs, training: keras.tree.flatten(_call(m, xs, training)))
    xs = _make_inputs(name, specs)
    inference = forward(lambda tensors: keras.tree.flatten(run(model, tensors, False)), xs)
    cotangents = _cotangents(name, inference)
    outputs, input_grads, variable_grads = gradients(
        lambda tensors: keras.tree.flatten(run(model, tensors, True)),
        model.trainable_variables, xs, cotangents)
    return {"forward": inference, "training": outputs, "input_grads": input_grads,
            "variable_grads": variable_grads}


def _function_results(name):
    function, specs = FUNCTION_CASES[name]
    xs = _make_inputs(name, specs)
    inference = forward(lambda tensors: [function(*tensors)], xs)
    cotangents = _cotangents(name, inference)
    outputs, input_grads, _ = gradients(lambda tensors: [function(*tensors)], [], xs, cotangents)
    return {"forward": inference, "training": outputs, "input_grads": input_grads,
            "variable_grads": []}


def _flatten(name, results):
    return {f"{name}/{part}/{i}": value
            for part, values in results.items() for i, value in enumerate(values)}


def write_reference(directory):
    """Writes the `.keras` models and `reference.npz` (TensorFlow backend)."""
    if keras.backend.backend() != "tensorflow":
        raise ValueError(f"Received: backend={keras.backend.backend()!r}; the reference is "
                         "written on 'tensorflow'")
    os.makedirs(directory, exist_ok=True)
    arrays = {}
    keras.utils.set_random_seed(0)
    for name in LAYER_CASES:
        model = _layer_model(name)
        _perturb(model, name)
        model.save(os.path.join(directory, f"{name}.keras"))
        arrays.update(_flatten(name, _layer_results(name, model)))
    for name in FUNCTION_CASES:
        arrays.update(_flatten(name, _function_results(name)))
    np.savez(os.path.join(directory, REFERENCE), **arrays)
    return arrays


def _assert_close(name, actual, expected, rtol=2e-4, atol=2e-5):
    """Float32 rounding: relative, with an absolute floor scaled to the array's size."""
    if set(actual) != set(expected):
        raise AssertionError(f"{name}: results {sorted(actual)} against reference "
                             f"{sorted(expected)}")
    worst = 0.0
    for key, value in expected.items():
        got = actual[key]
        if got.shape != value.shape:
            raise AssertionError(f"{key}: shape {got.shape}, TensorFlow's {value.shape}")
        if not np.all(np.isfinite(got)):
            raise AssertionError(f"{key}: not finite: {got}")
        scale = float(np.max(np.abs(value))) if value.size else 0.0
        np.testing.assert_allclose(got, value, rtol=rtol, atol=atol * max(scale, 1.0),
                                   err_msg=f"{key} against TensorFlow's")
        if value.size:
            worst = max(worst, float(np.max(np.abs(got.astype("float64") - value))))
    return worst


def check(directory, log=print):
    """Checks this backend against the reference in `directory`; raises on a mismatch.

    Returns:
        A dict of the largest deviation from TensorFlow per case, and the
        seconds the checks took.
    """
    start = time.perf_counter()
    reference = dict(np.load(os.path.join(directory, REFERENCE)))
    report = {}
    timings = {}

    def timed(name, function, *args):
        began = time.perf_counter()
        result = function(*args)
        timings[name] = round(time.perf_counter() - began, 2)
        return result

    for name in LAYER_CASES:
        model = timed(name + "/load", keras.saving.load_model,
                      os.path.join(directory, f"{name}.keras"))
        timed(name + "/reload", _check_reload, name, model)
        results = _flatten(name, timed(name, _layer_results, name, model))
        expected = {k: v for k, v in reference.items() if k.startswith(name + "/")}
        report[name] = _assert_close(name, results, expected)
    for name in FUNCTION_CASES:
        results = _flatten(name, timed(name, _function_results, name))
        expected = {k: v for k, v in reference.items() if k.startswith(name + "/")}
        report[name] = _assert_close(name, results, expected)
    for loss in SERIALIZED_LOSSES:
        _check_serialized(loss)
    timed("routing_reference", check_routing_reference)
    timed("group_equivariance", check_group_equivariance)
    timed("fit", check_fit)
    if os.environ.get("CAPSKERAS_CHECK_TIMINGS"):
        log(json.dumps(timings))
    report["seconds"] = time.perf_counter() - start
    log(json.dumps({"backend": keras.backend.backend(), **report}, indent=1))
    return report


def _check_reload(name, model):
    """This backend's `.keras` round trip: the same config and the same weights, bit for bit."""
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "model.keras")
        model.save(path)
        reloaded = keras.saving.load_model(path)
    if json.dumps(reloaded.get_config(), default=str) != json.dumps(model.get_config(),
                                                                     default=str):
        raise AssertionError(f"{name}: the reloaded config differs")
    if [v.path for v in reloaded.weights] != [v.path for v in model.weights]:
        raise AssertionError(f"{name}: reloaded weights {[v.path for v in reloaded.weights]}, "
                             f"saved {[v.path for v in model.weights]}")
    for saved, loaded in zip(model.weights, reloaded.weights):
        np.testing.assert_array_equal(_numpy(loaded.value), _numpy(saved.value),
                                      err_msg=f"{name} reloaded: {saved.path}")


def _check_serialized(obj):
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(obj))
    if type(restored) is not type(obj) or restored.get_config() != obj.get_config():
        raise AssertionError(f"{obj!r} does not survive serialization: {restored.get_config()}")


def numpy_routing(x, kernel, iterations):
    """Procedure 1 of Sabour et al. (2017) in NumPy: `(outputs, couplings)`."""
    u_hat = np.einsum("bid,ijde->bije", x, kernel)
    logits = np.zeros(u_hat.shape[:3])
    for r in range(iterations):
        couplings = np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)
        s = np.einsum("bij,bije->bje", couplings, u_hat)
        squared = np.sum(s**2, axis=-1, keepdims=True)
        v = squared / (1 + squared) * s / np.sqrt(squared + 1e-7)
        if r < iterations - 1:
            logits = logits + np.einsum("bije,bje->bij", u_hat, v)
    return v, couplings


def check_routing_reference():
    """`CapsuleDense` routes as the NumPy reference, for 1 to 3 iterations."""
    rng = _rng("routing")
    x = rng.normal(size=(3, 6, 4)).astype("float32")
    kernel = 0.3 * rng.normal(size=(6, 3, 4, 5))
    for iterations in (1, 2, 3):
        layer = layers.CapsuleDense(3, 5, routing_iterations=iterations, **Z)
        layer.build(x.shape)
        layer.kernel.assign(kernel.astype("float32"))
        outputs, couplings = forward(lambda tensors: layer(tensors[0], return_couplings=True), [x])
        expected, expected_couplings = numpy_routing(x.astype("float64"), kernel, iterations)
        np.testing.assert_allclose(outputs, expected, rtol=1e-4, atol=1e-5,
                                   err_msg=f"routing, {iterations} iterations")
        np.testing.assert_allclose(couplings, expected_couplings, rtol=1e-4, atol=1e-5,
                                   err_msg=f"couplings, {iterations} iterations")


def check_group_equivariance():
    """A p4m group network is exactly equivariant, and invariant after pooling.

    Exactly: up to float32 rounding, which differs between a map and its
    turned copy only by the order of the sums (a relative 1e-6).
    """
    images = keras.Input((9, 9, 2))
    lifted = layers.GroupConv2D(3, 3, group="p4m", lifting=True, **Z)(images)
    hidden = keras.layers.ReLU()(layers.GroupBatchNormalization("p4m")(lifted))
    maps = layers.GroupConv2D(2, 3, group="p4m", lifting=False, padding="same", **Z)(hidden)
    scores = keras.layers.GlobalAveragePooling2D()(layers.GroupPooling("p4m", "max")(maps))
    model = keras.Model(images, [maps, scores])
    _perturb(model, "equivariance")
    x = _rng("equivariance").normal(size=(2, 9, 9, 2)).astype("float32")
    for output, kind in ((0, equivariance.GROUP), (1, equivariance.INVARIANT)):
        equivariance.assert_group_equivariant(
            lambda batch: model.predict_on_batch(batch)[output], x, "p4m",
            input_kind=equivariance.PLANE, output_kind=kind, atol=1e-5, rtol=2e-6)


def check_fit():
    """A small CapsNet trains (`jit_compile=True` but on PyTorch), predicts and reloads.

    (The matrix capsules' backward pass runs under `jax.jit` in their cases.)
    """
    rng = _rng("fit")
    images = rng.uniform(size=(8, 8, 8, 1)).astype("float32")
    labels = rng.integers(0, 3, size=(8,)).astype("int32")

    inputs = keras.Input((8, 8, 1))
    primary = layers.PrimaryCapsules(2, 4, 3, strides=2, **Z)(inputs)
    scores = layers.CapsuleLength()(layers.CapsuleDense(3, 4, **Z)(primary))
    capsnet = keras.Model(inputs, scores, name="capsnet")
    _perturb(capsnet, "fit")
    # On PyTorch `jit_compile=True` means `torch.compile`, which recompiled
    # Keras's layer hooks for minutes on this small model; Keras's default
    # there ("auto") runs eagerly.
    capsnet.compile("adam", losses.MarginLoss(),
                    jit_compile=keras.backend.backend() != "torch")

    before = [_numpy(v.value) for v in capsnet.trainable_variables]
    history = capsnet.fit(images, labels, batch_size=4, epochs=1, verbose=0)
    loss = history.history["loss"][-1]
    if not np.isfinite(loss):
        raise AssertionError(f"fit's loss is {loss}")
    if all(np.array_equal(_numpy(v.value), b)
           for v, b in zip(capsnet.trainable_variables, before)):
        raise AssertionError("fit changed no weight")
    predictions = capsnet.predict(images, batch_size=4, verbose=0)
    np.testing.assert_allclose(predictions, forward(lambda t: [capsnet(t[0])], [images])[0],
                               rtol=1e-4, atol=1e-5)
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "capsnet.keras")
        capsnet.save(path)
        reloaded = keras.saving.load_model(path)
    if type(reloaded.loss) is not losses.MarginLoss:
        raise AssertionError(f"the compiled loss reloads as {reloaded.loss!r}")


def tensorflow_modules():
    """The TensorFlow modules this process has imported (none, off the TensorFlow backend)."""
    return sorted(name for name in sys.modules
                  if name.split(".")[0] in ("tensorflow", "tf_keras", "tensorflow_datasets"))


def main(argv):
    if len(argv) != 3 or argv[1] not in ("write", "check"):
        raise SystemExit(f"usage: python -m capskeras.testing.backend_checks write|check DIR "
                         f"(received: {argv[1:]})")
    if argv[1] == "write":
        write_reference(argv[2])
        return
    # This module has imported capskeras.layers, .losses, .ops and .testing by now.
    imported = tensorflow_modules()
    if keras.backend.backend() != "tensorflow" and imported:
        raise AssertionError(f"capskeras imported TensorFlow on {keras.backend.backend()}: "
                             f"{imported[:5]}")
    check(argv[2])


if __name__ == "__main__":
    main(sys.argv)
