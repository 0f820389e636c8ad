"""Precision: `--precision=auto`, float32 routing under mixed_bfloat16, float32 serving."""

import importlib.util
import json
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from capskeras import onednn
from capskeras import precision
from capskeras.layers import CapsuleDense
from capskeras.layers import ClassMatrixCapsules
from capskeras.layers import ConvMatrixCapsules
from capskeras.layers import PredCapsLayer
from capskeras.layers import capsule_dense
from capskeras.layers import em_routing
from capskeras.layers import pred_caps
from capskeras.training import train as train_module
from capskeras.training.config import TrainConfig

AMX_ONLY = {"fpu", "sse4_2", "avx2", "avx512f", "amx_bf16", "amx_tile", "amx_int8"}
AVX512_BF16_ONLY = {"fpu", "sse4_2", "avx2", "avx512f", "avx512_vnni", "avx512_bf16"}
AVX2_ONLY = {"fpu", "sse4_2", "avx", "avx2", "fma"}


# ---------------------------------------------------------------- auto


@pytest.mark.parametrize("flags,expected", [
    (AMX_ONLY, "mixed_bfloat16"),
    (AVX512_BF16_ONLY, "mixed_bfloat16"),
    (AVX2_ONLY, "float32"),
    ({"amx_tile", "amx_int8", "avx512f"}, "float32"),  # AMX tiles without the bf16 multiply
    (set(), "float32"),
])
def test_auto_reads_the_cpu_flags(monkeypatch, flags, expected):
    monkeypatch.setattr(onednn, "cpu_info",
                        lambda path="/proc/cpuinfo": ("a CPU", frozenset(flags)))
    policy, reason = precision.auto_precision(gpu_details=[])
    assert policy == expected
    assert ("CPU has" in reason) and (("neither" in reason) == (expected == "float32"))


@pytest.mark.parametrize("capabilities,cpu_flags,expected", [
    ([(8, 0)], AVX2_ONLY, "mixed_bfloat16"),  # the GPU decides, not the CPU
    ([(9, 0), (8, 6)], AVX2_ONLY, "mixed_bfloat16"),
    ([(7, 5)], AMX_ONLY, "float32"),
    ([(8, 0), (7, 0)], AVX2_ONLY, "float32"),  # every GPU must have bfloat16
])
def test_auto_asks_tensorflow_about_gpus(monkeypatch, capabilities, cpu_flags, expected):
    gpus = [tf.config.PhysicalDevice(f"/physical_device:GPU:{i}", "GPU")
            for i in range(len(capabilities))]
    details = {gpu.name: {"device_name": "a GPU", "compute_capability": cc}
               for gpu, cc in zip(gpus, capabilities)}
    monkeypatch.setattr(tf.config, "list_physical_devices",
                        lambda kind=None: gpus if kind == "GPU" else [])
    monkeypatch.setattr(tf.config.experimental, "get_device_details",
                        lambda device: details[device.name])
    policy, reason = precision.auto_precision(cpu_flags=cpu_flags)
    assert policy == expected
    assert "GPU compute capability" in reason


def test_no_gpu_and_this_cpu():
    policy, _ = precision.auto_precision()
    has_bf16 = bool(precision.BFLOAT16_CPU_FLAGS & onednn.cpu_info()[1])
    assert policy == ("mixed_bfloat16" if has_bf16 else "float32")


def test_flagfiles_stay_float32(repo_root):
    for flagfile in sorted((repo_root / "flags").glob("*.cfg")):
        assert "--precision" not in flagfile.read_text(), flagfile.name
    assert TrainConfig().precision == "float32"


def _tiny(tmp_path, **overrides):
    settings = dict(train_examples=128, eval_examples=64, batch_size=64, epochs=1, verbose=0,
                    head="class", model_dir=str(tmp_path / "run"),
                    export_dir=str(tmp_path / "export"), precision="auto")
    settings.update(overrides)
    return TrainConfig.from_flat(**settings)


def _machine(monkeypatch, policy):
    monkeypatch.setattr(train_module.precisions, "auto_precision",
                        lambda: (policy, f"a machine that picks {policy}"))


def test_auto_run_resumes_under_its_policy_and_exports_float32(tmp_path, monkeypatch):
    _machine(monkeypatch, "mixed_bfloat16")
    results = train_module.train(_tiny(tmp_path))  # 2 steps
    assert results["precision"] == "mixed_bfloat16"
    assert results["precision_auto"] == "a machine that picks mixed_bfloat16"
    run = tmp_path / "run"
    assert json.loads((run / "config.json").read_text())["precision"] == "mixed_bfloat16"
    assert "--precision=mixed_bfloat16" in (run / "flags.cfg").read_text()
    assert keras.config.dtype_policy().name == "float32", "the global policy leaked"

    # The export takes float32 images and returns float32, whatever the policy.
    served = tf.saved_model.load(results["export"]).signatures["serving_default"]
    (images,) = served.structured_input_signature[1].values()
    assert images.dtype == tf.float32
    outputs = served(images=tf.random.uniform((3, 28, 28, 1), seed=1))
    assert outputs["probabilities"].dtype == tf.float32
    assert outputs["encoding"].dtype == tf.float32
    np.testing.assert_allclose(np.sum(outputs["probabilities"], -1), 1.0, atol=1e-5)
    assert not any(t.dtype == tf.bfloat16 for t in outputs.values())

    # On a machine where auto means float32, the run goes on in mixed_bfloat16.
    _machine(monkeypatch, "float32")
    resumed = train_module.train(_tiny(tmp_path, epochs=2, export_dir=""))
    assert resumed["precision"] == "mixed_bfloat16" and resumed["epochs"] == 2
    assert "started with" in resumed["precision_auto"]
    model = keras.saving.load_model(run / "model.keras")
    assert model.dtype_policy.name == "mixed_bfloat16"

    # Naming another policy is refused, naming both.
    with pytest.raises(train_module.ConfigurationError,
                       match=r"precision='float32' \(the run has 'mixed_bfloat16'\)"):
        train_module.train(_tiny(tmp_path, epochs=3, precision="float32"))


def test_auto_on_a_float32_run_keeps_float32(tmp_path, monkeypatch):
    (tmp_path / "run").mkdir()
    recorded = _tiny(tmp_path, precision="float32")
    (tmp_path / "run" / "config.json").write_text(recorded.to_json())
    _machine(monkeypatch, "mixed_bfloat16")
    config, reason = train_module.resolve_precision(_tiny(tmp_path))
    assert config.precision == "float32" and "started with" in reason
    explicit = _tiny(tmp_path, precision="mixed_float16")
    assert train_module.resolve_precision(explicit) == (explicit, None)


# ---------------------------------------------------------------- float32 inside the layers


@pytest.fixture
def mixed_bfloat16():
    keras.config.set_dtype_policy("mixed_bfloat16")
    yield
    keras.config.set_dtype_policy("float32")


def _twins(make, inputs):
    """A layer under mixed_bfloat16 and its float32 twin with the same weights."""
    mixed = make()
    keras.config.set_dtype_policy("float32")
    plain = make()
    keras.config.set_dtype_policy("mixed_bfloat16")
    mixed(inputs)
    plain(inputs)
    plain.set_weights(mixed.get_weights())
    return mixed, plain


def _spy(monkeypatch, module, name, seen):
    original = getattr(module, name)

    def spy(*args, **kwargs):
        result = original(*args, **kwargs)
        seen.append(([a for a in args if hasattr(a, "dtype")], result))
        return result

    monkeypatch.setattr(module, name, spy)


def _bf16_exact(values):
    """`values` rounded to bfloat16, so that both twins see the same inputs."""
    return ops.convert_to_numpy(ops.cast(ops.cast(values, "bfloat16"), "float32"))


def test_dynamic_routing_in_float32(mixed_bfloat16, monkeypatch):
    inputs = _bf16_exact(np.random.default_rng(0).normal(size=(4, 24, 8)).astype("float32"))
    mixed, plain = _twins(lambda: CapsuleDense(5, 6, routing_iterations=3,
                                               routing_jit_compile=False), inputs)
    seen = []
    _spy(monkeypatch, capsule_dense, "_softmax_over_outputs", seen)
    outputs, couplings = mixed(inputs, return_couplings=True)
    assert [logits.dtype for (logits,), _ in seen] == [tf.float32, tf.float32]
    assert all(c.dtype == tf.float32 for _, c in seen)
    assert couplings.dtype == tf.float32 and outputs.dtype == tf.bfloat16
    expected, expected_couplings = plain(inputs, return_couplings=True)
    # The predictions u_hat are bfloat16 products; everything after is float32.
    np.testing.assert_allclose(ops.convert_to_numpy(ops.cast(outputs, "float32")),
                               expected, atol=0.02)
    np.testing.assert_allclose(couplings, expected_couplings, atol=2e-3)


@pytest.mark.parametrize("layer", ["conv", "class"])
def test_em_routing_in_float32(mixed_bfloat16, monkeypatch, layer):
    rng = np.random.default_rng(1)
    poses = _bf16_exact(rng.normal(size=(2, 5, 5, 3, 4, 4)).astype("float32"))
    activations = _bf16_exact(rng.uniform(size=(2, 5, 5, 3)).astype("float32"))
    make = (lambda: ConvMatrixCapsules(4, 3, strides=2, routing_jit_compile=False)) \
        if layer == "conv" else (lambda: ClassMatrixCapsules(5, routing_jit_compile=False))
    mixed, plain = _twins(make, (poses, activations))
    assert all(weight.dtype == "float32" for weight in mixed.weights)
    seen = []
    _spy(monkeypatch, em_routing, "em_routing", seen)
    out_poses, out_activations = mixed((poses, activations))
    (votes, child_activations, *_), (mu, a) = seen[0]
    assert {votes.dtype, child_activations.dtype, mu.dtype, a.dtype} == {tf.float32}
    assert out_poses.dtype == tf.bfloat16 and out_activations.dtype == tf.bfloat16
    # Same inputs, same float32 routing: equal up to the final bfloat16 rounding.
    expected_poses, expected_activations = plain((poses, activations))
    np.testing.assert_allclose(ops.convert_to_numpy(ops.cast(out_poses, "float32")),
                               expected_poses, rtol=1 / 128, atol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(ops.cast(out_activations, "float32")),
                               expected_activations, rtol=1 / 128, atol=1e-6)


@pytest.mark.parametrize("training", [True, False])
def test_predcaps_selection_in_float32(mixed_bfloat16, monkeypatch, training):
    images = _bf16_exact(np.random.default_rng(2).uniform(size=(4, 9, 9, 2)).astype("float32"))

    def make():
        return PredCapsLayer(capsules=6, capsule_dim=4, kernel_size=3, strides=2, k=2,
                             lifetime="standardize", selection_jit_compile=False)

    mixed, plain = _twins(make, images)
    seen = []
    _spy(monkeypatch, pred_caps, "_select", seen)
    outputs = mixed(images, training=training, update_frequency=False)
    (drive, log_boost), (selected, mask, statistics) = seen[0]
    assert drive.dtype == tf.bfloat16 and log_boost.dtype == tf.float32
    assert selected.dtype == tf.float32 and mask.dtype == tf.float32
    if training:
        assert {s.dtype for s in statistics} == {tf.float32}
    assert outputs.dtype == tf.bfloat16
    for weight in ("win_frequency", "score_mean", "score_variance", "score_weight"):
        assert getattr(mixed, weight).dtype == "float32"
    # The winners are those of float32 but where bfloat16's drive reorders near-ties.
    expected = plain(images, training=training, update_frequency=False)
    winners = np.linalg.norm(ops.convert_to_numpy(ops.cast(outputs, "float32")).reshape(
        4, 5, 5, 6, 4), axis=-1) > 0
    expected_winners = np.linalg.norm(ops.convert_to_numpy(expected).reshape(4, 5, 5, 6, 4),
                                      axis=-1) > 0
    assert np.mean(winners == expected_winners) > 0.9


# ---------------------------------------------------------------- tools


def _tool(repo_root, name, *args):
    return subprocess.run([sys.executable, str(repo_root / "tools" / f"{name}.py"), *args],
                          cwd=repo_root, capture_output=True, text=True, timeout=300)


def test_bench_times_each_precision(repo_root):
    result = _tool(repo_root, "bench", "--benchmarks=enc_untrained_dec_class", "--batch_size=4",
                   "--precision=float32,mixed_bfloat16", "--repeats=1", "--steps=1",
                   "--warmup_steps=1", "--matmul_sizes=128")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    names = ["enc_untrained_dec_class:float32", "enc_untrained_dec_class:mixed_bfloat16"]
    assert list(report["models"]) == names
    assert [report["models"][name]["precision"] for name in names] == [
        "float32", "mixed_bfloat16"]
    ratio = report["precision_ratios"]["enc_untrained_dec_class"]["mixed_bfloat16"]
    first, second = (report["models"][name]["train_images_per_s"] for name in names)
    assert ratio["train_images_per_s"] == pytest.approx(second / first, rel=1e-2)


def test_parity_table(repo_root):
    spec = importlib.util.spec_from_file_location(
        "precision_parity", repo_root / "tools" / "precision_parity.py")
    parity = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(parity)
    runs = [dict(family="em", precision=p, seed=s, test_accuracy=a, images_per_second=v)
            for p, s, a, v in [("float32", 0, 0.90, 10.0), ("mixed_bfloat16", 0, 0.88, 14.0),
                               ("float32", 1, 0.94, 12.0), ("mixed_bfloat16", 1, 0.95, 16.0),
                               ("float32", 2, 0.50, 11.0)]]  # seed 2 lacks bfloat16
    precisions = ["float32", "mixed_bfloat16"]
    summary = parity.summarize(runs, ["em", "capsnet"], precisions)
    assert list(summary) == ["em"]
    em = summary["em"]
    assert em["seeds"] == 2 and em["seed_spread"] == pytest.approx(0.04)
    assert em["float32"]["test_accuracy"] == pytest.approx(0.92)
    assert em["mixed_bfloat16"]["difference"] == pytest.approx(-0.005)
    assert em["mixed_bfloat16"]["images_per_second"] == 15.0
    table = parity.markdown(summary, precisions, dict(train_examples=100, eval_examples=0,
                                                      epochs=1, seeds=[0, 1, 2]))
    assert ("| em (em_capsnet_mnist) | 2 | 92.00% | 91.50% | -0.50 | 4.00 | 11 | 15 | n/a | n/a |"
            in table)
    with pytest.raises(ValueError, match="families='lenet'"):
        parity.check_request(["lenet"], precisions, ["0"])
    with pytest.raises(ValueError, match="precisions='auto'"):
        parity.check_request(["em"], ["auto"], ["0"])
