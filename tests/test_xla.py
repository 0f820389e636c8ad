"""capskeras.xla: one function compiled with XLA, and the switch exports use."""

import numpy as np
import pytest
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


def test_disabled_runs_the_fallback_and_restores_the_state():
    calls = []

    def fallback(x):
        calls.append("fallback")
        return x + 1.0

    compiled = xla.compiled(lambda x: x + 1.0, fallback=fallback)
    spec = tf.TensorSpec((None,), tf.float32)
    assert xla.is_enabled()
    with pytest.raises(RuntimeError):
        with xla.disabled():
            with xla.disabled():
                assert not xla.is_enabled()
                assert not _graph_holds_xla_cluster(compiled, spec)
            assert not xla.is_enabled()  # The outer context still holds.
            raise RuntimeError("leaves the context")
    assert xla.is_enabled()
    assert calls == ["fallback"]
    assert _graph_holds_xla_cluster(compiled, spec)
