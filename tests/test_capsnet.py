"""CapsNet and the convolutional baselines it is compared with."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from capskeras import export
from capskeras.data import load_mnist
from capskeras.layers import CapsuleDense
from capskeras.layers import CapsuleLength
from capskeras.layers import PrimaryCapsules
from capskeras.losses import MarginLoss
from capskeras.models import CapsNet
from capskeras.models import build_study_model
from capskeras.tasks import build_model
from capskeras.testing import assert_keras_round_trip
from capskeras.testing import saved_model_xla_functions


@pytest.fixture(scope="module")
def digits():
    images, labels = next(iter(load_mnist("train", batch_size=256, num_examples=256)))
    return images.numpy(), labels.numpy()


@pytest.mark.parametrize(
    "name,side,params",
    [
        ("capsnet", 28, 8_215_568),  # 8.2M in Sabour et al.
        ("lenet5", 28, 61_706),
        ("cnn_baseline", 40, 35_445_522),  # 35.4M in Sabour et al.
    ],
)
def test_parameter_counts_match_the_papers(name, side, params):
    assert build_model(name, pad_to=side if side != 28 else 0).count_params() == params


@pytest.mark.parametrize("side,primary_capsules", [(28, 1152), (40, 4608)])
def test_capsnet_shapes_at_mnist_and_affnist_sizes(side, primary_capsules):
    model = build_model("capsnet", pad_to=side if side != 28 else 0)
    assert model.encoder.get_layer("primary_capsules").output.shape == (None, primary_capsules, 8)
    outputs = model(np.zeros((2, side, side, 1), "float32"))
    assert outputs["lengths"].shape == (2, 10)
    assert outputs["reconstruction"].shape == (2, side, side, 1)
    served = model.serving_outputs(np.zeros((2, side, side, 1), "float32"))
    assert served["encoding"].shape == (2, 160)
    np.testing.assert_allclose(np.sum(served["probabilities"], axis=-1), 1.0, rtol=1e-5)


def test_decoder_is_fed_by_the_label_in_training_and_the_longest_capsule_otherwise(digits):
    model = build_model("capsnet")
    # Longer predictions than at initialization, so the masked capsule matters.
    kernel = model.encoder.get_layer("digit_capsules").kernel
    kernel.assign(kernel * 10.0)
    images = digits[0][:8]
    lengths = model(images)["lengths"].numpy()
    longest = lengths.argmax(axis=-1)
    other = (longest + 1) % 10
    by_length = model(images)["reconstruction"].numpy()
    by_winning_label = model({"images": images, "labels": longest})["reconstruction"].numpy()
    by_other_label = model({"images": images, "labels": other})["reconstruction"].numpy()
    np.testing.assert_allclose(by_winning_label, by_length, atol=1e-6)
    assert np.abs(by_other_label - by_length).max() > 1e-4


def test_a_tiny_capsnet_training_run_lowers_its_loss(digits):
    keras.utils.set_random_seed(0)
    model = build_model("capsnet")
    model.compile(keras.optimizers.Adam(1e-3), model.default_loss(),
                  metrics=model.default_metrics())
    x, y = model.make_example(*digits)
    history = model.fit(x, y, batch_size=32, epochs=3, verbose=0, shuffle=False).history
    assert history["loss"][-1] < 0.5 * history["loss"][0], history["loss"]
    assert history["lengths_accuracy"][-1] > 0.5, history["lengths_accuracy"]
    assert history["reconstruction_loss"][-1] < history["reconstruction_loss"][0]


def test_capsule_layers_train_under_xla_as_without_it(digits):
    """One SGD step of conv -> primary capsules -> routing, whole-model XLA or not."""

    def small_capsnet():
        return keras.Sequential([
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(16, 9, strides=2, activation="relu"),
            PrimaryCapsules(4, 4, 5, strides=2),
            CapsuleDense(10, 8, routing_iterations=3),
            CapsuleLength(),
        ])

    images, labels = digits[0][:16], digits[1][:16]
    results = []
    for jit_compile in (False, True):
        keras.utils.set_random_seed(0)
        model = small_capsnet()
        model.compile(keras.optimizers.SGD(0.1), MarginLoss(), jit_compile=jit_compile)
        loss = float(model.train_on_batch(images, labels))
        results.append((loss, model.get_weights()))
    (loss, weights), (xla_loss, xla_weights) = results
    np.testing.assert_allclose(xla_loss, loss, rtol=1e-4)
    for plain, compiled in zip(weights, xla_weights):
        np.testing.assert_allclose(compiled, plain, rtol=1e-3, atol=1e-5)


def test_capsnet_runs_under_mixed_precision(digits):
    keras.config.set_dtype_policy("mixed_float16")
    model = build_model("capsnet")
    outputs = model(digits[0][:4])
    assert outputs["reconstruction"].dtype == "float16"
    assert np.all(np.isfinite(outputs["lengths"].numpy().astype("float32")))


def test_capsnet_round_trips_through_keras_and_serves(digits, tmp_path):
    model = build_model("capsnet")
    images = digits[0][:3]
    reloaded = assert_keras_round_trip(model, images)
    assert isinstance(reloaded, CapsNet)

    path = export.export_saved_model(model, str(tmp_path), (28, 28, 1))
    serve = tf.saved_model.load(path).signatures["serving_default"]
    served = serve(images=tf.constant(images))
    expected = model.serving_outputs(images)
    assert set(served) == set(expected) == {
        "encoding", "capsule_lengths", "probabilities", "class_ids", "reconstruction"}
    for name, value in expected.items():
        np.testing.assert_allclose(served[name].numpy(), np.asarray(value), atol=1e-5)


def _xla_compiled_functions(concrete_functions):
    return [f.signature.name for concrete in concrete_functions
            for f in concrete.graph.as_graph_def().library.function
            if "_XlaMustCompile" in f.attr and f.attr["_XlaMustCompile"].b]


def test_routing_runs_under_xla_in_keras_steps_and_every_export_is_plain(digits, tmp_path):
    # TensorFlow Serving runs XLA clusters only behind an experimental flag:
    # no SavedModel written from a capskeras model may hold one, whichever
    # way it is written.
    model = build_model("capsnet")
    model.compile("adam", model.default_loss())
    model.predict_on_batch(digits[0][:2])
    predict = model.predict_function._list_all_concrete_functions()
    assert _xla_compiled_functions(predict)

    spec = tf.TensorSpec((None, 28, 28, 1), tf.float32)
    paths = [export.export_saved_model(model, str(tmp_path / "capskeras"), (28, 28, 1))]
    model.export(str(tmp_path / "keras_export"), verbose=False)
    tf.saved_model.save(model, str(tmp_path / "tf_saved_model"), signatures=tf.function(
        model.serving_outputs).get_concrete_function(spec))
    paths += [str(tmp_path / "keras_export"), str(tmp_path / "tf_saved_model")]
    for path in paths:
        assert saved_model_xla_functions(path) == [], path
    reloaded = tf.saved_model.load(paths[1])  # Model.export()'s, served without XLA.
    served = reloaded.serve(tf.constant(digits[0][:2]))
    np.testing.assert_allclose(served["lengths"].numpy(),
                               model(digits[0][:2])["lengths"].numpy(), atol=1e-5)


def test_digit_capsules_serve_as_a_study_encoder(digits):
    model = build_study_model("capsnet", "recon")
    assert model.encoder.output_shape == (None, 160)
    assert model(digits[0][:2]).shape == (2, 28, 28, 1)
    assert model.encoder.trainable


@pytest.mark.parametrize("name", ["lenet5", "cnn_baseline"])
def test_baselines_classify_and_round_trip(name):
    side = 40 if name == "cnn_baseline" else 28
    images = np.random.default_rng(0).random((2, side, side, 1), "float32")
    model = build_model(name, pad_to=side if side != 28 else 0)
    assert model(images).shape == (2, 10)
    assert_keras_round_trip(model, images)


def test_unknown_model_lists_the_registered_ones():
    with pytest.raises(ValueError, match=r"model='capsule9000'; expected one of \[.*'capsnet'"):
        build_model("capsule9000")
