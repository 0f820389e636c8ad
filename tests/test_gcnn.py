"""Tests for P4CNN and Z2CNN (capskeras.models.gcnn) and their export with plain convolutions."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from capskeras import export
from capskeras.models import build_p4cnn
from capskeras.models import build_z2cnn
from capskeras.testing import assert_group_equivariant
from capskeras.testing import assert_keras_round_trip

RNG = np.random.default_rng(2)
IMAGES = RNG.uniform(size=(3, 28, 28, 1)).astype("float32")
LABELS = np.array([1, 7, 3], "int32")


def _with_statistics(model):
    """Gives the batch norms non-trivial moving statistics."""
    for layer in model.encoder.layers:
        if "moving_mean" in {w.path.split("/")[-1] for w in layer.weights}:
            for weight in layer.weights:
                key = weight.path.split("/")[-1]
                if key in ("moving_mean", "beta"):
                    weight.assign(RNG.normal(scale=0.1, size=weight.shape))
                elif key in ("moving_variance", "gamma"):
                    weight.assign(RNG.uniform(0.5, 1.5, size=weight.shape))
    return model


@pytest.fixture(scope="module")
def p4cnn():
    return _with_statistics(build_p4cnn(seed=0))


def _logits(model):
    return lambda images: model(images, training=False)


def test_architectures():
    p4 = build_p4cnn(seed=0)
    z2 = build_z2cnn(seed=0)
    kinds = [type(layer).__name__ for layer in p4.encoder.layers]
    assert kinds.count("GroupConv2D") == 7 and kinds.count("GroupBatchNormalization") == 6
    assert kinds[-2:] == ["GroupPooling", "GlobalMaxPooling2D"]
    assert [layer.kernel_size for layer in p4.encoder.layers if "gconv" in layer.name] == (
        [(3, 3)] * 6 + [(4, 4)])
    assert p4.encoder.output_shape == (None, 10)
    assert z2.encoder.output_shape == (None, 20)
    assert sum(type(layer).__name__ == "Dropout" for layer in z2.encoder.layers) == 6
    # The paper's point: about the same parameters (P4CNN 24,800 vs Z2CNN 25,200).
    assert abs(p4.encoder.count_params() - z2.encoder.count_params()) < 1000
    assert p4(IMAGES).shape == (3, 10) and z2(IMAGES).shape == (3, 10)


def test_p4cnn_scores_are_invariant_to_quarter_turns(p4cnn):
    assert_group_equivariant(_logits(p4cnn), IMAGES, "p4", "plane", "invariant", atol=1e-4)


def test_p4mcnn_scores_are_invariant_to_mirrors():
    model = _with_statistics(build_p4cnn(seed=1, group="p4m"))
    assert model.name == "p4mcnn"
    assert_group_equivariant(_logits(model), IMAGES[:2], "p4m", "plane", "invariant",
                             elements=(4, 5), atol=1e-4)


def test_z2cnn_scores_are_not_invariant():
    model = _with_statistics(build_z2cnn(seed=0))
    with pytest.raises(AssertionError):
        assert_group_equivariant(_logits(model), IMAGES, "p4", "plane", "invariant",
                                 elements=(1,), atol=1e-4)


def test_serving_contract_and_a_training_step():
    for model in (build_p4cnn(seed=0), build_z2cnn(seed=0)):
        outputs = model.serving_outputs(IMAGES)
        assert set(outputs) == {"encoding", "probabilities", "class_ids"}
        assert outputs["probabilities"].dtype == "float32"
        assert outputs["probabilities"].shape == (3, 10)
        assert model.make_example(IMAGES, LABELS)[1] is LABELS
        # Eagerly: tracing a train step costs tens of seconds on 2 busy cores.
        model.compile("adam", model.default_loss(), metrics=model.default_metrics(),
                      run_eagerly=True)
        before = [w.numpy().copy() for w in model.trainable_weights]
        model.fit(IMAGES, LABELS, batch_size=3, epochs=1, verbose=0)
        assert any(not np.array_equal(b, w.numpy())
                   for b, w in zip(before, model.trainable_weights))


def test_keras_round_trip(p4cnn):
    reloaded = assert_keras_round_trip(p4cnn, IMAGES, atol=1e-5)
    assert type(reloaded.encoder.layers[0]).__name__ == "GroupConv2D"


def _op_types(saved_model_dir):
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as handle:
        proto.ParseFromString(handle.read())
    graph = proto.meta_graphs[0].graph_def
    ops = {node.op for node in graph.node}
    for function in graph.library.function:
        ops.update(node.op for node in function.node_def)
    return ops


def test_export_holds_plain_convolutions(p4cnn, tmp_path):
    folded = p4cnn.serving_model()
    kinds = {type(layer).__name__ for layer in folded.encoder.layers}
    assert "GroupConv2D" not in kinds and "GroupBatchNormalization" not in kinds
    expected = p4cnn.serving_outputs(IMAGES)
    np.testing.assert_allclose(folded.serving_outputs(IMAGES)["probabilities"],
                               expected["probabilities"], atol=1e-6)
    # export_saved_model exports serving_model(), the folded copy, by itself.
    path = export.export_saved_model(p4cnn, str(tmp_path / "p4cnn"), (28, 28, 1))
    served = tf.saved_model.load(path).signatures["serving_default"](images=tf.constant(IMAGES))
    np.testing.assert_allclose(served["probabilities"].numpy(), expected["probabilities"],
                               atol=1e-5)
    np.testing.assert_array_equal(served["class_ids"].numpy(), expected["class_ids"])
    ops = _op_types(path)
    assert "Conv2D" in ops
    # The group layers gather their filter banks into kernels; the export does not.
    assert "GatherV2" not in ops
    unfolded = tf.function(lambda images: p4cnn(images, training=False)).get_concrete_function(
        tf.TensorSpec((None, 28, 28, 1), tf.float32))
    assert "GatherV2" in {op.type for op in unfolded.graph.get_operations()}
    # Models without group layers export themselves.
    z2cnn = build_z2cnn(seed=0)
    assert z2cnn.serving_model() is z2cnn


def test_mixed_float16_serves_float32():
    keras.config.set_dtype_policy("mixed_float16")
    model = build_p4cnn(seed=0)
    assert model.encoder.layers[0].compute_dtype == "float16"
    outputs = model.serving_outputs(IMAGES)
    assert outputs["probabilities"].dtype == "float32"
    np.testing.assert_allclose(np.sum(outputs["probabilities"], axis=-1), 1.0, atol=1e-3)
    folded = model.serving_model()
    assert folded.encoder.layers[0].compute_dtype == "float16"
    np.testing.assert_allclose(folded.serving_outputs(IMAGES)["probabilities"],
                               outputs["probabilities"], atol=1e-2)


def test_bad_dropout():
    with pytest.raises(ValueError, match="dropout=1.5"):
        build_z2cnn(dropout=1.5)
