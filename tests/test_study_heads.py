"""Tests for tools/study_heads.py: heads trained on a run's frozen code, computed once."""

import importlib.util
import json
import pathlib
import sys

import keras
import numpy as np
import pytest

from capskeras.evaluation import code_svm
from capskeras.training.flags import config_from_arguments
from capskeras.training.train import train

REPO = pathlib.Path(__file__).resolve().parents[1]


def _tool():
    name = "capskeras_tools_study_heads"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "tools" / "study_heads.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _train_run(tmp_path, *arguments):
    run_dir = tmp_path / "run"
    config = config_from_arguments([
        *arguments, "--train_examples=128", "--eval_examples=64", "--batch_size=64",
        "--verbose=0", "--noplot_reconstructions", f"--model_dir={run_dir}", "--export_dir=",
    ])
    train(config)
    return run_dir


def _encoder_weights(model):
    return [np.asarray(w) for w in model.encoder.weights]


@pytest.mark.parametrize("encoder,extra", [
    ("predcaps", ["--pretrain_epochs=1", "--predcaps_k=1,1,1"]),
    ("untrained", []),
])
def test_heads_on_the_frozen_code_keep_the_runs_encoder_and_match_the_whole_model(
        tmp_path, encoder, extra):
    tool = _tool()
    run_dir = _train_run(tmp_path, f"--encoder={encoder}", "--head=class", "--epochs=1", *extra)
    trained = keras.saving.load_model(run_dir / "model.keras")

    results = tool.run(str(run_dir), ["class", "recon"], epochs=2,
                       output_dir=str(tmp_path / "heads"), train_examples=128, eval_examples=64)

    assert sorted(results) == [f"enc_{encoder}_dec_class", f"enc_{encoder}_dec_recon"]
    for name, metrics in results.items():
        model = keras.saving.load_model(tmp_path / "heads" / name / "model.keras")
        # The frozen encoder is the run's: restored from its pretraining
        # checkpoint, or rebuilt from its seed.
        for ours, theirs in zip(_encoder_weights(model), _encoder_weights(trained), strict=True):
            np.testing.assert_array_equal(ours, theirs)
        assert model.freeze_encoder
        # The figure from the codes is the whole model's, evaluated from the images.
        metric = "accuracy" if name.endswith("class") else "mse"
        assert len(metrics["test_per_epoch"][metric]) == 2
        np.testing.assert_allclose(metrics["test_per_epoch"][metric][-1],
                                   metrics["test"][metric], rtol=1e-4, atol=1e-6)
        saved = json.loads((tmp_path / "heads" / name / "metrics.json").read_text())
        assert saved["test"] == pytest.approx(metrics["test"])
        if encoder == "predcaps":
            assert saved["pretrain"] == {"epochs": 1}
            assert saved["encoder_source"]["checkpoint_epoch"] == 1


def test_predcaps_heads_can_read_a_denser_code_than_the_run_trained_with(tmp_path):
    tool = _tool()
    run_dir = _train_run(tmp_path, "--encoder=predcaps", "--head=class", "--pretrain_only",
                         "--pretrain_epochs=1", "--predcaps_k=1,1,1")
    tool.run(str(run_dir), ["class"], epochs=1, output_dir=str(tmp_path / "heads"),
             names=["dense"], train_examples=128, eval_examples=64,
             predcaps_inference_k=["1", "1", "16"], predcaps_inference_feedback=0)
    model = keras.saving.load_model(tmp_path / "heads" / "dense" / "model.keras")
    assert [layer.inference_k for layer in model.encoder.pred_caps_layers] == [1, 1, 16]
    assert model.encoder.inference_feedback_iterations == 0
    code = keras.ops.convert_to_numpy(model.encode(np.random.default_rng(0).uniform(
        size=(4, 28, 28, 1)).astype("float32")))
    norms = np.linalg.norm(code.reshape(4, 16, 16), axis=-1)
    assert ((norms > 0).sum(-1) == 16).all()
    saved = json.loads((tmp_path / "heads" / "dense" / "metrics.json").read_text())
    assert saved["settings_overridden"] == {"predcaps_inference_k": [1, 1, 16],
                                            "predcaps_inference_feedback": 0}
    with pytest.raises(ValueError, match="predcaps_inference_feedback=-2; expected an int >= -1"):
        tool.run(str(run_dir), ["class"], epochs=1, output_dir=str(tmp_path / "heads"),
                 predcaps_inference_feedback=-2)
    with pytest.raises(ValueError, match="predcaps_inference_k"):
        tool.run(str(run_dir), ["class"], epochs=1, output_dir=str(tmp_path / "heads"),
                 predcaps_inference_k=["1", "1"])
    with pytest.raises(ValueError, match="predcaps_inference_k=a,1,16; expected comma-separated"):
        tool.run(str(run_dir), ["class"], epochs=1, output_dir=str(tmp_path / "heads"),
                 predcaps_inference_k=["a", "1", "16"])


def test_an_untrained_encoder_needs_only_its_flagfile_and_the_head_learns(tmp_path):
    tool = _tool()
    results = tool.run(str(REPO / "flags" / "enc_untrained_dec_recon.cfg"), ["recon"], epochs=3,
                       output_dir=str(tmp_path / "heads"), names=["recon"], train_examples=128,
                       eval_examples=64)
    # The flagfile holds out 5,000 validation digits: the heads watch them
    # epoch by epoch, and report every split.
    mse = results["recon"]["validation_per_epoch"]["mse"]
    assert mse[-1] < mse[0]
    assert "test_per_epoch" not in results["recon"]
    assert {"train", "validation", "test"} <= set(results["recon"])
    assert results["recon"]["validation"]["mse"] == pytest.approx(mse[-1], rel=1e-4)


def test_refusals_name_the_problem(tmp_path):
    tool = _tool()
    with pytest.raises(ValueError, match="config.json"):
        tool.run(str(tmp_path), ["class"], epochs=1, output_dir=str(tmp_path / "heads"))
    deep_bp = str(REPO / "flags" / "enc_deep_bp_dec_class.cfg")
    with pytest.raises(ValueError, match="trains through its head"):
        tool.run(deep_bp, ["class"], epochs=1, output_dir=str(tmp_path / "heads"))
    with pytest.raises(ValueError, match="one name per head"):
        tool.run(deep_bp, ["class", "recon"], epochs=1, output_dir=str(tmp_path), names=["a"])
    # A bad SVM setting is refused before the run is even read.
    with pytest.raises(ValueError, match="gamma=0; expected a float > 0"):
        tool.run(str(tmp_path / "no_run"), ["class"], epochs=1, output_dir=str(tmp_path),
                 svm=True, svm_gamma=0)
    assert tool.default_name("enc_predcaps_units_dec_class", "recon") == \
        "enc_predcaps_units_dec_recon"
    assert tool.default_name("sparsecaps_mnist", "class") == "sparsecaps_mnist_class"


def test_a_class_head_on_the_frozen_sparsecaps_code(tmp_path):
    tool = _tool()
    run_dir = _train_run(tmp_path, "--model=sparsecaps", "--epochs=1")
    trained = keras.saving.load_model(run_dir / "model.keras")
    results = tool.run(str(run_dir), ["class"], epochs=1, output_dir=str(tmp_path / "heads"),
                       train_examples=128, eval_examples=64, svm=True)
    metrics = results["sparsecaps_class"]
    model = keras.saving.load_model(tmp_path / "heads" / "sparsecaps_class" / "model.keras")
    images = np.random.default_rng(0).uniform(size=(4, 28, 28, 1)).astype("float32")
    # The code under the head is the trained SparseCaps' 256 latent values, unmasked.
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model.serving_outputs(images)["encoding"]),
        keras.ops.convert_to_numpy(trained.serving_outputs(images)["encoding"]),
        rtol=1e-5, atol=1e-6)
    assert model.freeze_encoder
    assert metrics["encoder_source"]["checkpoint_epoch"] == 1
    np.testing.assert_allclose(metrics["test_per_epoch"]["accuracy"][-1],
                               metrics["test"]["accuracy"], rtol=1e-4)

    # The SVM read-out was fitted on the same frozen code: its saved classifier
    # (arrays and JSON, no pickle) scores the trained model's test codes as
    # metrics.json says.
    svm = results["sparsecaps_svm"]
    assert (svm["c"], svm["gamma"], svm["test_examples"]) == (100.0, 0.1, 64)
    assert svm["train"]["accuracy"] == svm["train_accuracy"]
    assert sorted(p.name for p in (tmp_path / "heads" / "sparsecaps_svm").iterdir()) == [
        "metrics.json", "svm.json", "svm.npz"]
    classifier = code_svm.load_code_svm(str(tmp_path / "heads" / "sparsecaps_svm"))
    test_x, test_y = tool.split_arrays(tool.load_run_config(str(run_dir)), "test", 64, "")
    codes = keras.ops.convert_to_numpy(trained.serving_outputs(test_x)["encoding"])
    assert np.mean(classifier.predict(codes) == test_y) == pytest.approx(svm["test"]["accuracy"])
    saved = json.loads((tmp_path / "heads" / "sparsecaps_svm" / "metrics.json").read_text())
    assert saved["test"] == svm["test"] and saved["read_out"] == "rbf_svm"
