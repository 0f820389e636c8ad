"""capskeras.benchmarking: FLOP counts by hand, the N-model run, the CapsNet workloads."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from capskeras import benchmarking
from capskeras.benchmarking import Workload


def _conv_dense():
    """Conv2D 3x3 stride 2 "valid", 2 -> 4 channels (8x8 -> 3x3), then Dense 36 -> 5."""
    model = keras.Sequential([
        keras.Input((8, 8, 2)),
        keras.layers.Conv2D(4, 3, strides=2, use_bias=False),
        keras.layers.Flatten(),
        keras.layers.Dense(5, use_bias=False),
    ])
    model.compile("sgd", "mse")
    return model


def test_training_flops_of_a_conv_and_a_dense_counted_by_hand():
    model = _conv_dense()
    images, targets = tf.zeros((2, 8, 8, 2)), tf.zeros((2, 5))
    conv = 2 * (3 * 3 * 4) * (3 * 3 * 2)  # 2 x outputs x (kernel area x C_in) = 1,296
    dense = 2 * 36 * 5  # 360
    forward = benchmarking.forward_flops(model, images)
    assert forward.by_op_type == {"Conv2D": conv, "MatMul": dense}
    assert forward.total == conv + dense and forward.uncounted_ops == []

    train = benchmarking.train_flops(model, images, targets)
    # Forward; the dense layer's kernel and input gradients; the conv's
    # filter gradient at its forward cost (TensorFlow's own statistic counts
    # 8x8/2^2 = 16 positions for the 3x3 = 9 of a "valid" convolution:
    # 2,304). The conv's input gradient, which nothing uses, is not counted.
    assert train.by_op_type["Conv2D"] == conv
    assert train.by_op_type["Conv2DBackpropFilter"] == conv
    assert "Conv2DBackpropInput" not in train.by_op_type
    assert train.by_op_type["MatMul"] == 3 * dense
    matrix_work = 2 * conv + 3 * dense
    loss_work = train.total - matrix_work  # The squared error's few element-wise ops.
    assert 0 < loss_work < 50
    assert train.total < 3 * forward.total


def test_conv_input_gradient_is_counted_at_its_forward_cost_where_used():
    """A second convolution's input gradient is used: counted once, at its forward cost."""
    model = keras.Sequential([
        keras.Input((9, 9, 1)),
        keras.layers.Conv2D(2, 3, use_bias=False),  # -> 7x7x2
        keras.layers.Conv2D(3, 3, strides=2, use_bias=False),  # -> 3x3x3
        keras.layers.Flatten(),
    ])
    model.compile("sgd", "mse")
    train = benchmarking.train_flops(model, tf.zeros((1, 9, 9, 1)), tf.zeros((1, 27)))
    first, second = 2 * 7 * 7 * 2 * 9 * 1, 2 * 3 * 3 * 3 * 9 * 2
    assert train.by_op_type["Conv2D"] == first + second
    assert train.by_op_type["Conv2DBackpropFilter"] == first + second
    assert train.by_op_type["Conv2DBackpropInput"] == second


def test_batched_matmul_gradients_counted_with_their_adjoints():
    """`c [1 x I] @ u [I x E]`, CapsNet's routing sum: its gradients are matmuls too."""
    batch, inner, outer = 3, 7, 4
    couplings, predictions = tf.zeros((batch, 1, inner)), tf.zeros((batch, inner, outer))

    def step(c, u):
        with tf.GradientTape() as tape:
            tape.watch([c, u])
            total = tf.reduce_sum(tf.matmul(c, u))
        return total, tape.gradient(total, [c, u])

    graph = tf.function(step).get_concrete_function(couplings, predictions).graph
    counted = benchmarking.graph_flops(graph).by_op_type["BatchMatMulV2"]
    forward = 2 * batch * inner * outer
    # dL/dc = g [1 x E] @ u^T [E x I]: the forward's work; dL/du = c^T [I x 1] @ g [1 x E]:
    # an outer product, 2 x B x I x E (TensorFlow's statistic: I times that).
    assert counted == 3 * forward


def _dense_workload(units, batch_size=8):
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(units), keras.layers.Dense(10)])
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return Workload(model, (8, 8, 1), lambda images, labels: (images, labels), batch_size)


def test_benchmark_times_any_number_of_models_in_turns_and_reports_ratios():
    workloads = {"large": _dense_workload(64), "small": _dense_workload(4),
                 "medium": _dense_workload(16, batch_size=4)}
    report = benchmarking.benchmark(workloads, repeats=3, steps=1, warmup_steps=1,
                                    matmul_sizes=(128,))
    assert list(report["models"]) == ["large", "small", "medium"]
    large, small = report["models"]["large"], report["models"]["small"]
    assert large["params"] == 64 * 64 + 64 + 64 * 10 + 10
    assert large["forward_flops_per_image"] > small["forward_flops_per_image"]
    assert report["models"]["medium"]["batch_size"] == 4
    ratios = report["ratios"]
    assert set(ratios) == {"of", "small", "medium"}
    assert ratios["small"]["train"] == pytest.approx(
        small["train_images_per_s"] / large["train_images_per_s"], abs=2e-3)
    assert ratios["small"]["infer"] == pytest.approx(
        small["infer_images_per_s"] / large["infer_images_per_s"], abs=2e-3)
    assert len(ratios["medium"]["train_repeats"]) == 3
    train_gflops = 3 * large["forward_flops_per_image"] * large["train_images_per_s"] / 1e9
    assert large["train_fraction_of_peak"] == pytest.approx(
        train_gflops / report["matmul_peak_gflops"], rel=0.1, abs=2e-3)
    single = benchmarking.benchmark({"small": workloads["small"]}, repeats=1, steps=1,
                                    warmup_steps=0, matmul_sizes=(64,))
    assert "ratios" not in single and list(single["models"]) == ["small"]
    with pytest.raises(ValueError, match="workloads"):
        benchmarking.benchmark({})


def test_machine_facts_name_the_cpu_its_vector_extensions_and_onednn():
    from capskeras import onednn

    facts = benchmarking.machine_facts()
    status = onednn.status()
    assert facts["cpu"] == status["cpu"]
    assert facts["cpu_vector_extensions"] == status["vector_extensions"]
    assert facts["onednn_enabled"] == status["enabled"]
    assert facts["tensorflow_version"] == tf.__version__


def test_capsnet_workloads_are_capsnets_own_layers():
    from capskeras.models.capsnet import CapsNet

    settings = benchmarking.BenchmarkOverrides(batch_size=2)
    conv_stack = benchmarking.registered_workload("capsnet_conv_stack", settings)
    routing = benchmarking.registered_workload("capsnet_routing", settings)
    encoder = CapsNet().encoder
    for name in ("conv1", "primary_capsules"):
        assert (conv_stack.model.get_layer(name).get_config()
                == encoder.get_layer(name).get_config())
    capsnet_params = sum(encoder.get_layer(n).count_params() for n in ("conv1", "primary_capsules"))
    assert conv_stack.model.count_params() == capsnet_params + 8 * 10 + 10  # + the 10-way dense
    digit_capsules = routing.model.get_layer("digit_capsules")
    assert digit_capsules.get_config() == encoder.get_layer("digit_capsules").get_config()
    assert routing.image_shape == (1152, 8)

    inputs, targets = benchmarking.synthetic_batch(routing)
    assert math.isfinite(float(routing.model.train_on_batch(inputs, targets)))
    # Counted on the plain kernels: the first iteration's and u_hat's
    # matmuls (2 x 2IDJE), then agreement and sum for 2 iterations (4 x 2JIE).
    flops = benchmarking.forward_flops(routing.model, inputs)
    assert flops.total >= 2 * (2 * 1152 * 8 * 10 * 16) + 4 * (2 * 10 * 1152 * 16)
    assert not {"StatefulPartitionedCall", "PartitionedCall"} & set(flops.uncounted_ops)
    images, _ = benchmarking.synthetic_batch(conv_stack)
    assert np.all(np.isfinite(conv_stack.model.predict_on_batch(images)))
