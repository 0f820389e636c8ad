"""Assertions every capskeras layer and model must pass.

Importing this module imports no TensorFlow; the SavedModel checks import it
when called (they need the TensorFlow backend).
"""

import json
import os
import tempfile

import keras
import numpy as np


def assert_keras_round_trip(model, inputs, atol=1e-6):
    """Saves `model` as `.keras`, loads it back and compares outputs on `inputs`.

    Outputs may be a tensor or any nest of tensors (a dict for CapsNet).
    Returns the reloaded model.
    """
    expected = _numpy(model(inputs, training=False))
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "model.keras")
        model.save(path)
        reloaded = keras.saving.load_model(path, safe_mode=True)
    assert type(reloaded) is type(model), (type(reloaded), type(model))
    # JSON turns tuples into lists; compare the configs as saved.
    assert _as_json(reloaded.get_config()) == _as_json(model.get_config())
    actual = _numpy(reloaded(inputs, training=False))
    keras.tree.map_structure(
        lambda a, e: np.testing.assert_allclose(a, e, atol=atol), actual, expected
    )
    return reloaded


def assert_saved_model_round_trip(model, inputs, atol=1e-5):
    """Exports `model`'s inference call as a SavedModel and compares outputs."""
    import tensorflow as tf
    from keras.export import ExportArchive

    expected = keras.ops.convert_to_numpy(model(inputs, training=False))
    archive = ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serve",
        lambda x: model(x, training=False),
        input_signature=[tf.TensorSpec((None,) + tuple(inputs.shape[1:]), tf.float32)],
    )
    with tempfile.TemporaryDirectory() as directory:
        archive.write_out(directory, verbose=False)
        reloaded = tf.saved_model.load(directory)
        actual = reloaded.serve(tf.constant(inputs, tf.float32)).numpy()
    np.testing.assert_allclose(actual, expected, atol=atol)


def saved_model_xla_functions(path):
    """Names of the functions in the SavedModel at `path` compiled by XLA.

    Those carrying `_XlaMustCompile`, which TensorFlow Serving runs only
    behind an experimental flag: a servable export has none.
    """
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        saved.ParseFromString(f.read())
    library = [f for graph in saved.meta_graphs for f in graph.graph_def.library.function]
    if not library:
        raise AssertionError(f"{path}/saved_model.pb holds no functions")
    return sorted(f.signature.name for f in library
                  if "_XlaMustCompile" in f.attr and f.attr["_XlaMustCompile"].b)


def assert_weights_unchanged_by_fit(model, variables, x, y, epochs=2):
    """Fits `model` on `(x, y)` and asserts `variables` kept their values.

    `model` must be compiled. Also asserts that training did change the
    model somewhere, so the check cannot pass on a model that never trains.
    """
    before = [np.array(v.numpy()) for v in variables]
    trainable_before = [np.array(v.numpy()) for v in model.trainable_variables]
    model.fit(x, y, epochs=epochs, batch_size=max(1, len(x) // 2), verbose=0)
    for variable, value in zip(variables, before):
        np.testing.assert_array_equal(variable.numpy(), value, err_msg=variable.path)
    changed = [
        not np.array_equal(v.numpy(), value)
        for v, value in zip(model.trainable_variables, trainable_before)
    ]
    assert any(changed), "fit changed no trainable variable; the check is vacuous"


def _as_json(config):
    return json.loads(json.dumps(config, default=str))


def _numpy(outputs):
    return keras.tree.map_structure(keras.ops.convert_to_numpy, outputs)
