"""Tests for tools/param_efficiency.py and tools/bench_gcnn.py."""

import importlib.util
import pathlib
import sys

import keras
import pytest

from capskeras.layers import GroupConv2D
from capskeras.models import StudyModel
from capskeras.models import heads

TOOLS = pathlib.Path(__file__).resolve().parents[1] / "tools"


def _load_tool(name):
    module_name = f"capskeras_tools_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, TOOLS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


def test_formula():
    tool = _load_tool("param_efficiency")
    assert tool.formula(4, 0.0) == 1.0
    assert tool.formula(4, 1.0) == pytest.approx(0.25)
    assert tool.formula(16, 0.5) == pytest.approx(1 - 15 / 16 / 4)


@pytest.mark.parametrize("name, order", [("p4cnn", 4), ("p4mcnn", 8)])
def test_fully_equivariant_models_need_one_kth_of_the_parameters(name, order):
    tool = _load_tool("param_efficiency")
    report = tool.efficiency(tool.BUILDERS[name](), name)
    assert report["group_order"] == order and report["r"] == 1.0
    for row in report["layers"]:
        if row["type"] in ("GroupConv2D", "GroupBatchNormalization"):
            assert row["plain_params"] == order * row["params"]
    # Only the shared dense softmax layer keeps the total off the formula.
    assert report["ratio"] == pytest.approx(report["formula"], abs=0.002)
    assert "| **total** |" in tool.markdown(report)


def test_partly_equivariant_model_counts_r():
    tool = _load_tool("param_efficiency")
    features = keras.Sequential([
        keras.Input((12, 12, 1)),
        GroupConv2D(2, 3, group="p4"),            # 8 maps in orbits of 4
        keras.layers.Conv2D(8, 3),                # 8 plain maps
        keras.layers.GlobalMaxPooling2D(),
    ])
    model = StudyModel(features, heads.ClassificationHead(3, hidden_units=()))
    model.build((None, 12, 12, 1))
    report = tool.efficiency(model)
    assert report["r"] == 0.5 and report["group_order"] == 4
    assert report["params"] < report["plain_params"]


def test_bench_reports_ratios():
    tool = _load_tool("bench_gcnn")
    result = tool.compare("group", batch_size=2, repeats=1, steps=1, size=6, channels=2,
                          filters=2)
    assert result["group_output_maps"] == 8
    # Both are one 3x3 convolution of 8 maps to 8 on a 6x6 input, plus a bias:
    # 2 x 4 x 4 positions x 8 outputs x 9 x 8 inputs, and 4 x 4 x 8 additions.
    # The group layer adds only the gather's bounds check of its 576 constant
    # indices (a comparison and an addition each), which TensorFlow folds.
    assert result["plain_forward_flops"] == 18432 + 128
    assert 18432 + 128 <= result["group_forward_flops"] <= 18432 + 128 + 2 * 576
    for mode in ("inference", "train"):
        assert result[mode]["group_ms"] > 0 and result[mode]["plain_ms"] > 0
        assert result[mode]["ratio"] == pytest.approx(
            result[mode]["plain_ms"] / result[mode]["group_ms"])
        assert result[mode]["ratio_per_flop"] == pytest.approx(
            result[mode]["ratio"] * result["flop_ratio"])


def test_rotation_equivariance_tool_measures_real_digits():
    tool = _load_tool("rotation_equivariance")
    x = tool.digits(4)
    assert x.shape == (4, 28, 28, 1) and x[:, 0, 0].max() == 0.0  # corners cut to the disc
    report = tool.measure(x, rotations=8, kernel_size=3)
    assert report["degrees"] == 45.0
    assert report["quarter_turn_error"] < 1e-5
    assert report["equivariance_error"] < 0.7 < 1.0 < report["plain_cnn_error"]
