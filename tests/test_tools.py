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
    _write_run(runs, "enc_untrained_dec_class", {
        "epochs": 20, "train": {"accuracy": 0.99351}, "validation": {"accuracy": 0.9702},
        "test": {"accuracy": 0.98765, "loss": 0.04}})
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
    assert list(rows)[:4] == ["untrained (frozen)", "deep BP", "k-sparse (frozen)",
                              "PredCaps (frozen)"]
    #  encoder | accuracy train, validation, test | published | MSE train, validation,
    #  test | published | epochs class | epochs recon
    assert "published (train split)" in header
    assert rows["untrained (frozen)"][1:] == [
        "99.35%", "97.02%", "98.77%", "99.4%", "—", "—", "0.0123", "0.014", "20", "20"]
    assert rows["deep BP"][1:] == [
        "not run", "—", "—", "99.6%", "—", "—", "0.0051", "0.004", "—", "3 on 10,000 examples",
    ]
    assert rows["k-sparse (frozen)"][1:] == [
        "—", "—", "99.12%", "—", "not run", "—", "—", "—", "20 (+10 pretrain)", "—",
    ]
    assert rows["PredCaps (frozen)"][1:] == [
        "not run", "—", "—", "99.7%", "not run", "—", "—", "0.005", "—", "—"]


def test_results_table_names_missing_runs_with_their_commands(runs_dir):
    results_table = _load_tool("results_table")
    metrics, _ = results_table.read_runs(str(runs_dir))
    markdown = results_table.markdown_table(metrics)
    notes = [line for line in markdown.splitlines() if line.startswith("- ")]
    assert len(notes) == 2 + 8  # Two of the first six runs, and the eight PredCaps ones.
    assert "enc_deep_bp_dec_class" in notes[0]
    assert "--flagfile=flags/enc_deep_bp_dec_class.cfg" in notes[0]
    assert "enc_ksparse_dec_recon" in notes[1]
    assert "enc_untrained" not in "".join(notes)


def test_results_table_reads_the_first_directory_holding_each_run(runs_dir, tmp_path):
    results_table = _load_tool("results_table")
    heads = tmp_path / "heads"
    _write_run(heads, "enc_untrained_dec_class", {"epochs": 15, "test": {"accuracy": 0.5}})
    _write_run(heads, "enc_predcaps_dec_recon", {"epochs": 15, "pretrain": {"epochs": 5},
                                                 "test": {"mse": 0.0056}})
    metrics, configs = results_table.read_runs([str(heads), str(runs_dir)])
    _, rows = _rows(results_table.markdown_table(metrics, configs))
    assert rows["untrained (frozen)"][1:] == [
        "—", "—", "50.00%", "99.4%", "—", "—", "0.0123", "0.014", "15", "20"]
    assert rows["PredCaps (frozen)"][7] == "0.0056"
    assert rows["PredCaps (frozen)"][10] == "15 (+5 pretrain)"
    assert rows["deep BP"][10] == "3 on 10,000 examples"


def test_results_table_empty_metrics_marks_every_run():
    results_table = _load_tool("results_table")
    markdown = results_table.markdown_table({})
    _, rows = _rows(markdown)
    for cells in rows.values():
        assert cells[1] == cells[5] == "not run"
    assert markdown.count("capskeras-train --flagfile=") == 14


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
    result = _run_tool("results_table", "--runs_dir=")
    assert result.returncode == 2 and "--runs_dir= (empty)" in result.stderr


# --- bench.py ---------------------------------------------------------------
# Its parts are tested in test_benchmarking.py; here, the command line.

MODEL_KEYS = {
    "batch_size", "train_images_per_s", "infer_images_per_s", "params",
    "forward_flops_per_image", "flops_uncounted_ops", "train_flops_per_image_counted",
    "achieved_train_gflops", "achieved_infer_gflops", "train_fraction_of_peak",
    "infer_fraction_of_peak", "jit_compile", "precision",
}
MACHINE_KEYS = {
    "device", "cpu", "cpu_vector_extensions", "onednn_enabled", "matmul_peak_gflops",
    "peak_rss_mib", "tensorflow_version", "keras_version", "load_average_1min",
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
        "bench", "--benchmarks=enc_untrained_dec_class", "--batch_size=8", *FAST_BENCH,
        f"--output={output}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout  # One JSON object, nothing else.
    report = json.loads(lines[0])
    assert json.loads(output.read_text()) == report
    assert MACHINE_KEYS <= set(report)
    assert list(report["models"]) == ["enc_untrained_dec_class"]
    model = report["models"]["enc_untrained_dec_class"]
    assert MODEL_KEYS <= set(model)
    assert model["batch_size"] == 8
    assert model["jit_compile"] is False and model["precision"] == "float32"
    for key in ("train_images_per_s", "infer_images_per_s", "achieved_train_gflops",
                "achieved_infer_gflops", "train_fraction_of_peak"):
        assert model[key] > 0, key
    assert report["matmul_peak_gflops"] > 0 and report["peak_rss_mib"] > 0
    # The suite runs with oneDNN on (conftest), and the bench inherits it.
    assert report["onednn_enabled"] is True

    from capskeras.training.flags import config_from_flagfile
    from capskeras.training.train import compiled_model

    config = config_from_flagfile(str(REPO / "flags" / "enc_untrained_dec_class.cfg"))
    assert model["params"] == compiled_model(config).count_params()

    # Biases add 14,602 FLOPs (0.06%); ReLUs are not counted but listed.
    analytic = study_forward_flops()
    assert model["forward_flops_per_image"] == pytest.approx(analytic, rel=0.03)
    assert model["forward_flops_per_image"] >= analytic
    assert "Relu" in model["flops_uncounted_ops"]
    assert not {"Conv2D", "MatMul", "BiasAdd"} & set(model["flops_uncounted_ops"])
    # The frozen encoder gets no backward pass: far less than 3 x forward.
    assert model["train_flops_per_image"] == 3 * model["forward_flops_per_image"]
    assert (model["forward_flops_per_image"] < model["train_flops_per_image_counted"]
            < 1.2 * model["forward_flops_per_image"])
    assert model["achieved_infer_gflops"] == pytest.approx(
        model["forward_flops_per_image"] * model["infer_images_per_s"] / 1e9, rel=0.01
    )


def test_bench_unknown_name_names_it_and_the_accepted_ones():
    result = _run_tool("bench", "--benchmarks=no_such_model", *FAST_BENCH)
    assert result.returncode != 0
    assert "no_such_model" in result.stderr
    assert "capsnet_conv_stack" in result.stderr and "quickstart" in result.stderr
    assert result.stdout == ""


def test_bench_command_line_two_models():
    result = _run_tool(
        "bench", "--benchmarks=capsnet_conv_stack,enc_untrained_dec_class", "--batch_size=2",
        *FAST_BENCH,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    report = json.loads(lines[0])
    assert list(report["models"]) == ["capsnet_conv_stack", "enc_untrained_dec_class"]
    assert report["ratios"]["enc_untrained_dec_class"]["train"] > 0
    conv_stack = report["models"]["capsnet_conv_stack"]
    assert MODEL_KEYS <= set(conv_stack) and conv_stack["batch_size"] == 2
    # 2 x MACs of conv1 (20x20x81x256) and the primary conv (6x6x(81x256)x256).
    convs = 2 * (20 * 20 * 81 * 256 + 6 * 6 * 81 * 256 * 256)
    assert conv_stack["forward_flops_per_image"] == pytest.approx(convs, rel=0.01)
    # Training: forward, and both convolutions' filter gradients and the
    # primary conv's input gradient at their forward cost; conv1's input
    # gradient is unused. Under 3 x forward, as it must be.
    train_convs = convs + 2 * (20 * 20 * 81 * 256) + 2 * 2 * (6 * 6 * 81 * 256 * 256)
    assert conv_stack["train_flops_per_image_counted"] == pytest.approx(train_convs, rel=0.01)
    assert conv_stack["train_flops_per_image_counted"] < 3 * convs


# --- the command-line convention --------------------------------------------
# Every command defines its flags in define_flags(flag_values), called only by
# its entry point: importing it defines nothing on absl's global FLAGS.

CONVERTED_DEFAULTS = {
    "bench_gcnn": {"pairs": ["lifting", "group", "p4cnn_vs_z2cnn", "p4cnn_vs_folded"],
                   "group": "p4", "batch_size": 64, "size": 28, "channels": 10, "filters": 10,
                   "repeats": 5, "steps": 5, "json": None},
    "param_efficiency": {"model": ["p4cnn", "p4mcnn", "z2cnn"], "json": None},
    "predcaps_speed": {"batch_size": 128, "repeats": 5, "steps": 10, "feedback_iterations": 1,
                       "jit_compile": False},
    "rotation_equivariance": {"rotations": ["4", "8", "16"], "kernel_sizes": ["3", "5", "7"],
                              "examples": 64, "seed": 0},
    "bench": {"repeats": 5, "steps": 10, "warmup_steps": 3, "matmul_sizes": [1024, 2048]},
    "bench_backends": {"models": ["capsnet", "p4cnn"], "batch_size": 32},
    "equivariance_report": {"judge": "runs/judge", "pairs": 2000, "data_dir": ""},
    "train_judge": {"output_dir": "runs/judge", "data_dir": ""},
    "results_table": {"runs_dir": ["runs"], "train": False},
}


def test_importing_a_command_defines_no_flags_and_define_flags_keeps_the_defaults():
    from absl import flags

    from capskeras.data import prepare
    from capskeras.evaluation import evaluate

    before = set(flags.FLAGS)
    for name, defaults in CONVERTED_DEFAULTS.items():
        # A fresh module each time, so the import really runs.
        spec = importlib.util.spec_from_file_location(f"capskeras_convention_{name}",
                                                      TOOLS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        flag_values = flags.FlagValues()
        module.define_flags(flag_values)
        assert {key: flag_values[key].default for key in defaults} == defaults, name
    assert set(flags.FLAGS) == before
    for module in (prepare, evaluate):
        flag_values = flags.FlagValues()
        module.define_flags(flag_values)
        assert flag_values["data_dir"].default in (None, "")


def test_prepare_names_a_bad_dataset_and_the_accepted_ones(capsys):
    from absl import flags

    from capskeras.data import prepare

    flag_values = flags.FlagValues()
    prepare.define_flags(flag_values)
    with pytest.raises(SystemExit) as exit_info:
        prepare.main(flag_values(["prepare", "norb"]), flag_values)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "name='norb'" in error and "smallnorb" in error and "affnist_regen" in error


def test_a_bad_flag_value_exits_2_naming_the_value_and_the_accepted_ones():
    # bench_backends.py imports no TensorFlow before parsing its flags: fast.
    result = _run_tool("bench_backends", "--steps=0")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "bench_backends.py: error: flag --steps=0: 0 is not a positive integer" in result.stderr
    assert result.stdout == ""
    result = _run_tool("bench_backends", "--no_such_flag=1")
    assert result.returncode == 2 and "no_such_flag" in result.stderr
