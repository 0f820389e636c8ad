"""capskeras.xla: one function compiled with XLA, and where "auto" compiles it."""

import keras
import numpy as np
import tensorflow as tf

from capskeras import xla


def _graph_holds_xla_cluster(function, *specs):
    library = tf.function(function).get_concrete_function(*specs).graph.as_graph_def().library
    return any("_XlaMustCompile" in f.attr and f.attr["_XlaMustCompile"].b
               for f in library.function)


def test_compiled_function_runs_as_an_xla_cluster_and_gives_the_same_values():
    def scaled_sum(x, scale):
        return tf.reduce_sum(x * scale, axis=-1)

    compiled = xla.compiled(scaled_sum)
    x = tf.constant(np.arange(12, dtype="float32").reshape(3, 4))
    np.testing.assert_allclose(compiled(x, 2.0).numpy(), scaled_sum(x, 2.0).numpy())
    spec = tf.TensorSpec((None, 4), tf.float32)
    assert _graph_holds_xla_cluster(lambda x: compiled(x, 2.0), spec)


class _Probe(keras.layers.Layer):
    """Records `xla.in_keras_step()` at every call."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seen = []

    def call(self, inputs):
        self.seen.append(xla.in_keras_step())
        return inputs * 2.0


def test_in_keras_step_is_true_in_keras_steps_only(tmp_path):
    """Keras's fit/evaluate/predict steps say yes; eager calls, other traces and exports no.

    Fails if a Keras release renames the functions it traces its steps in
    (`xla.KERAS_STEP_FUNCTIONS`): "auto" would then lose its speed.
    """
    probe = _Probe()
    model = keras.Sequential([keras.Input((3,)), probe, keras.layers.Dense(2)])
    model.compile("sgd", "mse")
    x, y = np.ones((4, 3), "float32"), np.ones((4, 2), "float32")
    for run in (lambda: model.fit(x, y, epochs=1, verbose=0),
                lambda: model.evaluate(x, y, verbose=0),
                lambda: model.predict(x, verbose=0),
                lambda: model.train_on_batch(x, y),
                lambda: model.predict_on_batch(x)):
        probe.seen.clear()
        run()
        assert probe.seen and all(probe.seen), probe.seen
    for run in (lambda: model(x),
                lambda: tf.function(lambda images: model(images))(x),
                lambda: model.export(str(tmp_path / "export"), verbose=False),
                lambda: tf.saved_model.save(model, str(tmp_path / "saved"))):
        probe.seen.clear()
        run()
        assert probe.seen and not any(probe.seen), probe.seen



def test_the_trainers_step_is_a_keras_step_too(tmp_path):
    """capskeras-train's own loop gets the compiled routing, as `fit` does."""
    from capskeras.training import loop

    probe = _Probe()
    model = keras.Sequential([keras.Input((3,)), probe, keras.layers.Dense(2)])
    model.compile("sgd", "mse")
    data = tf.data.Dataset.from_tensor_slices(
        (np.ones((8, 3), "float32"), np.ones((8, 2), "float32"))).batch(4)
    loop.train_model(model, data, strategy=tf.distribute.get_strategy(), batch_size=4,
                     steps_per_epoch=2, epochs=1, directory=str(tmp_path))
    # Keras's shape inference may call the layer first in a scratch graph.
    assert probe.seen and probe.seen[-1] is True, probe.seen
