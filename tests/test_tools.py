"""Tests for the research scripts in tools/: bench.py and results_table.py."""

import importlib.util
import json
import math
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
TOOLS = REPO / "tools"


def _load_tool(name):
    """Imports `tools/<name>.py`, which is a script, not a package module."""
    module_name = f"capskeras_tools_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def _run_tool(name, *args):
    return subprocess.run(
        [sys.executable, str(TOOLS / f"{name}.py"), *args],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )


# --- results_table.py -------------------------------------------------------


def _write_run(runs_dir, name, metrics, config=None):
    run_dir = runs_dir / name
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    if config is not None:
        (run_dir / "config.json").write_text(json.dumps(config))


@pytest.fixture
def runs_dir(tmp_path):
    """Four of the six runs; enc_ksparse_dec_recon and enc_deep_bp_dec_class missing."""
    runs = tmp_path / "runs"
    _write_run(runs, "enc_untrained_dec_class", {"epochs": 20, "test": {"accuracy": 0.98765, "loss": 0.04}})
    _write_run(runs, "enc_untrained_dec_recon", {"epochs": 20, "test": {"mse": 0.01234, "loss": 0.01234}})
    _write_run(
        runs, "enc_deep_bp_dec_recon", {"epochs": 3, "test": {"mse": 0.0051}},
        config={"train_examples": 10000},
    )
    _write_run(
        runs, "enc_ksparse_dec_class",
        {"epochs": 20, "pretrain": {"epochs": 10}, "test": {"accuracy": 0.9912}},
    )
    return runs


def _rows(markdown):
    """Table rows (after the header and rule) as lists of cells, by encoder label."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    rows = {}
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = cells
    return lines[0], rows


def test_results_table_rows_values_and_published_figures(runs_dir):
    results_table = _load_tool("results_table")
    metrics, configs = results_table.read_runs(str(runs_dir))
    markdown = results_table.markdown_table(metrics, configs)
    header, rows = _rows(markdown)
    assert "accuracy" in header and "MSE" in header and "published" in header
    assert list(rows) == ["untrained (frozen)", "deep BP", "k-sparse (frozen)"]
    #  encoder | accuracy | published | MSE | published | epochs class | epochs recon
    assert rows["untrained (frozen)"][1:] == ["98.77%", "99.4%", "0.0123", "0.014", "20", "20"]
    assert rows["deep BP"][1:] == [
        "not run", "99.6%", "0.0051", "0.004", "—", "3 on 10,000 examples",
    ]
    assert rows["k-sparse (frozen)"][1:] == [
        "99.12%", "—", "not run", "—", "20 (+10 pretrain)", "—",
    ]


def test_results_table_names_missing_runs_with_their_commands(runs_dir):
    results_table = _load_tool("results_table")
    metrics, _ = results_table.read_runs(str(runs_dir))
    markdown = results_table.markdown_table(metrics)
    notes = [line for line in markdown.splitlines() if line.startswith("- ")]
    assert len(notes) == 2
    assert "enc_deep_bp_dec_class" in notes[0]
    assert "--flagfile=flags/enc_deep_bp_dec_class.cfg" in notes[0]
    assert "enc_ksparse_dec_recon" in notes[1]
    assert "enc_untrained" not in "".join(notes)


def test_results_table_empty_metrics_marks_every_run():
    results_table = _load_tool("results_table")
    markdown = results_table.markdown_table({})
    _, rows = _rows(markdown)
    for cells in rows.values():
        assert cells[1] == cells[3] == "not run"
    assert markdown.count("capskeras-train --flagfile=") == 6


def test_results_table_command_line(runs_dir, tmp_path):
    output = tmp_path / "table.md"
    result = _run_tool(
        "results_table", f"--runs_dir={runs_dir}", "--epochs=3", f"--output={output}"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == output.read_text()
    assert result.stdout.startswith("| encoder |")
    # Missing runs come with the command that produces them, overrides included.
    assert f"--model_dir={runs_dir}/enc_ksparse_dec_recon" in result.stdout
    assert "--epochs=3" in result.stdout


def test_results_table_refuses_per_experiment_flags(tmp_path):
    result = _run_tool("results_table", f"--runs_dir={tmp_path}", "--model_dir=elsewhere")
    assert result.returncode != 0
    assert "--model_dir=elsewhere" in result.stderr
    assert result.stdout == ""


# --- bench.py ---------------------------------------------------------------

REQUIRED_KEYS = {
    "model", "batch_size", "train_images_per_s", "infer_images_per_s", "peak_rss_mib",
    "params", "forward_flops_per_image", "flops_uncounted_ops", "matmul_peak_gflops",
    "achieved_train_gflops", "achieved_infer_gflops", "device", "tensorflow_version",
    "keras_version", "jit_compile", "precision",
}
FAST_BENCH = ("--repeats=2", "--steps=2", "--warmup_steps=1", "--matmul_sizes=256")


def study_forward_flops(image_side=28, head_units=(1024, 512, 10)):
    """2 x multiply-accumulates of the study encoder and a dense head, per image.

    Encoder: 6x6 stride 3, 64 filters -> 10x10x64; 5x5 stride 2, 256 ->
    5x5x256; 5x5 stride 5, 256 -> 1x1x256; "same" padding.
    """
    macs, side, channels = 0, image_side, 1
    for filters, kernel, stride in ((64, 6, 3), (256, 5, 2), (256, 5, 5)):
        side = math.ceil(side / stride)
        macs += side * side * kernel * kernel * channels * filters
        channels = filters
    assert (side, channels) == (1, 256)
    units = side * side * channels
    for out_units in head_units:
        macs += units * out_units
        units = out_units
    return 2 * macs


def test_study_geometry_matches_the_analytic_count():
    from capskeras.models.encoders import STUDY_GEOMETRY

    assert STUDY_GEOMETRY == ((64, 6, 3), (256, 5, 2), (256, 5, 5))
    # 2 * (100*36*64 + 25*25*64*256 + 25*256*256 + 256*1024 + 1024*512 + 512*10)
    assert study_forward_flops() == 25_800_704


def test_bench_study_model(tmp_path):
    output = tmp_path / "bench.json"
    result = _run_tool(
        "bench", "--model=enc_untrained_dec_class", "--batch_size=8", *FAST_BENCH,
        f"--output={output}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout  # One JSON object, nothing else.
    report = json.loads(lines[0])
    assert json.loads(output.read_text()) == report
    assert REQUIRED_KEYS <= set(report)
    assert report["model"] == "enc_untrained_dec_class"
    assert report["batch_size"] == 8
    assert report["jit_compile"] is False and report["precision"] == "float32"
    for key in ("train_images_per_s", "infer_images_per_s", "matmul_peak_gflops",
                "achieved_train_gflops", "achieved_infer_gflops", "peak_rss_mib"):
        assert report[key] > 0, key

    from capskeras.training.flags import config_from_flagfile
    from capskeras.training.train import build_model

    config = config_from_flagfile(str(REPO / "flags" / "enc_untrained_dec_class.cfg"))
    assert report["params"] == build_model(config).count_params()

    # Biases add 14,602 FLOPs (0.06%); ReLUs are not counted but listed.
    analytic = study_forward_flops()
    assert report["forward_flops_per_image"] == pytest.approx(analytic, rel=0.03)
    assert report["forward_flops_per_image"] >= analytic
    assert "Relu" in report["flops_uncounted_ops"]
    assert not {"Conv2D", "MatMul", "BiasAdd"} & set(report["flops_uncounted_ops"])
    # The frozen encoder gets no backward pass: far less than 3 x forward.
    assert report["train_flops_per_image"] == 3 * report["forward_flops_per_image"]
    assert (report["forward_flops_per_image"] < report["train_flops_per_image_counted"]
            < 1.2 * report["forward_flops_per_image"])
    assert report["achieved_infer_gflops"] == pytest.approx(
        report["forward_flops_per_image"] * report["infer_images_per_s"] / 1e9, rel=0.01
    )


def test_bench_unknown_model_names_it_and_the_accepted_ones():
    result = _run_tool("bench", "--model=no_such_model", *FAST_BENCH)
    assert result.returncode != 0
    assert "no_such_model" in result.stderr
    assert "enc_deep_bp_dec_class" in result.stderr and "quickstart" in result.stderr
    assert result.stdout == ""


def test_bench_registry_is_consulted_first(monkeypatch):
    """A registered benchmark (here a small Conv2D/Dense stack) is one entry."""
    bench = _load_tool("bench")
    import keras

    def conv_dense(config):
        model = keras.Sequential(
            [
                keras.Input((8, 8, 1)),
                keras.layers.Conv2D(4, 3, use_bias=False),  # -> 6x6x4
                keras.layers.Flatten(),
                keras.layers.Dense(10, use_bias=False),
            ]
        )
        model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return bench.Workload(model, (8, 8, 1), lambda images, labels: (images, labels))

    monkeypatch.setitem(bench.BENCHMARKS, "conv_dense", conv_dense)
    # Registered benchmarks come first (capsnet_conv_stack is registered too).
    assert "conv_dense" in bench.accepted_names()[: len(bench.BENCHMARKS)]
    assert "quickstart" in bench.accepted_names()
    with pytest.raises(ValueError, match="no_such_model.*conv_dense"):
        bench.resolve("no_such_model")

    report = bench.benchmark(
        "conv_dense", repeats=1, steps=1, warmup_steps=1, matmul_sizes=(128,)
    )
    macs = 6 * 6 * 3 * 3 * 1 * 4 + 6 * 6 * 4 * 10
    assert report["forward_flops_per_image"] == 2 * macs
    assert report["flops_uncounted_ops"] == []
    assert report["params"] == 3 * 3 * 4 + 144 * 10
    assert report["train_images_per_s"] > 0 and report["infer_images_per_s"] > 0


def test_einsum_flops_counts_every_index_combination():
    bench = _load_tool("bench")
    # 2 x the product of all distinct index sizes.
    assert bench.einsum_flops("ij,jk->ik", [(2, 3), (3, 4)]) == 2 * 2 * 3 * 4
    assert bench.einsum_flops("bid,ijde->bjie", [(5, 7, 8), (7, 3, 8, 4)]) == 2 * 5 * 7 * 8 * 3 * 4
    assert bench.einsum_flops("bji,bjie->bje", [(2, 3, 5), (2, 3, 5, 4)]) == 2 * 2 * 3 * 5 * 4
    assert bench.einsum_flops("...ij,...jk->...ik", [(6, 2, 3), (1, 3, 4)]) == 2 * 6 * 2 * 3 * 4
    assert bench.einsum_flops("ij,jk->ik", [(None, 3), (3, 4)]) is None
    with pytest.raises(ValueError, match="ij,jk->ik"):
        bench.einsum_flops("ij,jk->ik", [(2, 3)])


def test_graph_flops_counts_einsum():
    bench = _load_tool("bench")
    import tensorflow as tf

    spec = (tf.TensorSpec((1, 6, 8)), tf.TensorSpec((6, 3, 8, 4)))
    graph = tf.function(lambda x, w: tf.einsum("bid,ijde->bjie", x, w)).get_concrete_function(
        *spec
    ).graph
    flops, uncounted, _ = bench.graph_flops(graph)
    assert flops == 2 * 1 * 6 * 8 * 3 * 4
    assert "Einsum" not in uncounted


def test_capsnet_conv_stack_has_capsnets_convolutions():
    bench = _load_tool("bench")
    from capskeras.models.capsnet import CapsNet

    config, builder = bench.resolve("capsnet_conv_stack", ["--batch_size=4"])
    workload = builder(config)
    assert workload.image_shape == (28, 28, 1)
    import keras

    convs = [layer for layer in workload.model.layers if isinstance(layer, keras.layers.Conv2D)]
    encoder = CapsNet().encoder
    capsnet_convs = [encoder.get_layer("conv1"), encoder.get_layer("primary_capsules").conv]
    keys = ("filters", "kernel_size", "strides", "padding", "activation", "use_bias")
    assert [{k: c.get_config()[k] for k in keys} for c in convs] == [
        {k: c.get_config()[k] for k in keys} for c in capsnet_convs
    ]
    conv_params = sum(c.count_params() for c in capsnet_convs)
    assert workload.model.count_params() == conv_params + 256 * 10 + 10  # + the 10-way dense


def test_capsnet_routing_is_capsnets_digit_capsule_layer():
    bench = _load_tool("bench")
    from capskeras.models.capsnet import CapsNet

    config, builder = bench.resolve("capsnet_routing", ["--batch_size=4"])
    workload = builder(config)
    assert workload.image_shape == (1152, 8)
    routing = workload.model.get_layer("digit_capsules")
    capsnet_routing = CapsNet().encoder.get_layer("digit_capsules")
    keys = ("num_capsules", "capsule_dim", "routing_iterations")
    assert {k: routing.get_config()[k] for k in keys} == {
        k: capsnet_routing.get_config()[k] for k in keys}
    assert routing.count_params() == capsnet_routing.count_params()
    inputs, targets = bench.synthetic_batch(workload, 4)
    assert math.isfinite(float(workload.model.train_on_batch(inputs, targets)))

    # The routing runs as an XLA cluster, which the profiler cannot see into;
    # the count must still hold its matmuls: the first iteration's and
    # u_hat's (2 x 2IDJE), then agreement and sum for 2 iterations (4 x 2JIE).
    flops, uncounted, _ = bench.forward_flops(workload.model, inputs)
    assert flops >= 2 * (2 * 1152 * 8 * 10 * 16) + 4 * (2 * 10 * 1152 * 16)
    assert not {"StatefulPartitionedCall", "PartitionedCall"} & set(uncounted)


def test_bench_pair_reports_both_models_and_their_ratios(monkeypatch):
    bench = _load_tool("bench")
    import keras

    def dense(units):
        def build(config):
            model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                                      keras.layers.Dense(units), keras.layers.Dense(10)])
            model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            return bench.Workload(model, (8, 8, 1), lambda images, labels: (images, labels))
        return build

    monkeypatch.setitem(bench.BENCHMARKS, "small", dense(4))
    monkeypatch.setitem(bench.BENCHMARKS, "large", dense(64))
    report = bench.benchmark_pair(
        ["large", "small"], ["--batch_size=8"], repeats=3, steps=1, warmup_steps=1,
        matmul_sizes=(128,),
    )
    assert report["model"] == "large,small"
    assert list(report["models"]) == ["large", "small"]
    large, small = report["models"]["large"], report["models"]["small"]
    assert large["params"] == 64 * 64 + 64 + 64 * 10 + 10
    assert large["forward_flops_per_image"] > small["forward_flops_per_image"]
    assert report["train_ratio"] == pytest.approx(
        large["train_images_per_s"] / small["train_images_per_s"], abs=2e-3
    )
    assert report["infer_ratio"] == pytest.approx(
        large["infer_images_per_s"] / small["infer_images_per_s"], abs=2e-3
    )
    assert len(report["train_ratio_repeats"]) == len(report["infer_ratio_repeats"]) == 3
    assert report["peak_rss_mib"] > 0
    with pytest.raises(ValueError, match="small,small"):
        bench.benchmark_pair(["small", "small"])


def test_bench_command_line_two_models():
    result = _run_tool(
        "bench", "--model=capsnet_conv_stack,enc_untrained_dec_class", "--batch_size=2",
        *FAST_BENCH,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    report = json.loads(lines[0])
    assert set(report["models"]) == {"capsnet_conv_stack", "enc_untrained_dec_class"}
    assert report["train_ratio"] > 0 and report["infer_ratio"] > 0
    conv_stack = report["models"]["capsnet_conv_stack"]
    assert REQUIRED_KEYS - {"peak_rss_mib", "matmul_peak_gflops", "device",
                            "tensorflow_version", "keras_version"} <= set(conv_stack)
    # 2 x MACs of conv1 (20x20x81x256) and the primary conv (6x6x(81x256)x256).
    convs = 2 * (20 * 20 * 81 * 256 + 6 * 6 * 81 * 256 * 256)
    assert conv_stack["forward_flops_per_image"] == pytest.approx(convs, rel=0.01)
