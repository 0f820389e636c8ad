"""The README's new model family, with a decoder, through the trainer, export and every tool.

The family is the README's code block, run as written: training, export,
`capskeras-eval`, the equivariance report and the heads tool reach it only
through the model contract (`capskeras/models/contract.py`).
"""

import importlib.util
import json
import pathlib
import re
import subprocess
import sys

from absl import flags
import keras
import numpy as np
import pytest
import tensorflow as tf

from capskeras import tasks
from capskeras.evaluation import equivariance
from capskeras.evaluation import evaluate
from capskeras.evaluation import perturbation
from capskeras.models import contract
from capskeras.training.config import TrainConfig
from capskeras.training.train import train

REPO = pathlib.Path(__file__).resolve().parents[1]
NAME = "tiny_autoencoder"


def _tool(name):
    """Imports `tools/<name>.py`, a script, not a package module."""
    module_name = f"capskeras_tools_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, REPO / "tools" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


def _readme_family():
    """The README's model-family example: the Python block that registers `tiny_autoencoder`."""
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    (code,) = [block for block in blocks if f'register_task("{NAME}")' in block]
    return code


@pytest.fixture
def family():
    """Runs the README's example; undoes its registrations afterwards."""
    namespace = {"__name__": "readme_family"}
    exec(compile(_readme_family(), "README.md", "exec"), namespace)  # noqa: S102
    yield namespace
    tasks.TASKS.pop(NAME, None)
    keras.saving.get_custom_objects().pop(f"{NAME}>TinyAutoencoder", None)


def test_the_readme_family_trains_exports_and_meets_every_tool(tmp_path, family):
    run_dir, export_dir = tmp_path / "run", tmp_path / "export"
    results = train(TrainConfig.from_flat(
        model=NAME, code_size=8, epochs=1, train_examples=64, eval_examples=32, batch_size=32,
        verbose=0, plot_reconstructions=False, model_dir=str(run_dir),
        export_dir=str(export_dir)))
    assert results["epochs"] == 1 and results["test"]["mse"] < 0.5

    # The SavedModel serves the contract's outputs.
    images = np.random.default_rng(0).uniform(size=(2, 28, 28, 1)).astype("float32")
    served = tf.saved_model.load(results["export"]).signatures["serving_default"](
        images=tf.constant(images))
    assert served["encoding"].shape == (2, 8) and served["reconstruction"].shape == (2, 28, 28, 1)

    # The equivariance report (its own process, the family's module imported
    # first): sweeps decode through the family's code_decoder().
    tool = REPO / "tools" / "equivariance_report.py"
    arguments = [str(tool), f"--models={run_dir}", "--judge=", f"--output_dir={tmp_path / 'eq'}",
                 "--sweep_digits=2", "--rows=3", "--pairs=16", "--family_digits=2",
                 "--grid_digits=1", "--scales=-1,0,1"]
    script = (_readme_family() + "\nimport runpy, sys\n"
              f"sys.argv = {arguments!r}\nrunpy.run_path({str(tool)!r}, run_name='__main__')\n")
    report = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    result = json.loads((tmp_path / "eq" / "run_equivariance.json").read_text())
    assert set(result["transforms"]) == set(equivariance.TRANSFORMS)
    assert result["sweeps"]["pixel_change_per_step"] > 0
    code_model = equivariance.load_code_model(run_dir)
    assert code_model.decode is not None and code_model.feature_responses is None
    trained = keras.saving.load_model(run_dir / "model.keras")
    sweeps = equivariance.perturbation_sweeps(code_model, images, scales=(0.0,), rows=1)
    np.testing.assert_allclose(sweeps["images"][:, 0, 0],
                               np.asarray(trained.serving_outputs(images)["reconstruction"])[..., 0],
                               rtol=1e-5, atol=1e-6)
    # Its code is not capsules: the perturbation figure names what is missing.
    with pytest.raises(ValueError, match=r"without \['code_capsules'\]"):
        perturbation.perturbation_images(trained, images)

    # The heads tool: heads on the family's frozen heads_encoder(), restored from its run.
    heads = _tool("study_heads")
    with pytest.raises(SystemExit) as exit_info:
        heads.main(["study_heads", f"--run_dir={run_dir}", "--heads=class,recon", "--epochs=1",
                    "--train_examples=64", "--eval_examples=32",
                    f"--output_dir={tmp_path / 'heads'}"])
    flags.FLAGS.unparse_flags()
    assert exit_info.value.code in (None, 0)  # app.run exits with main's None on success
    metrics = json.loads((tmp_path / "heads" / f"{NAME}_class" / "metrics.json").read_text())
    assert metrics["encoder_source"] == {"checkpoint_epoch": 1, "checkpoint_step": 0}
    head_model = keras.saving.load_model(tmp_path / "heads" / f"{NAME}_class" / "model.keras")
    np.testing.assert_allclose(
        np.asarray(head_model.serving_outputs(images)["encoding"]),
        np.asarray(trained.serving_outputs(images)["encoding"]), rtol=1e-5, atol=1e-6)
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0

    # capskeras-eval reads the class head's model directory; the family's own
    # run serves no class ids, and is refused with that said.
    head_dir = tmp_path / "heads" / f"{NAME}_class"
    assert _evaluate(head_dir, tmp_path / "eval") is None
    written = json.loads((tmp_path / "eval" / f"{NAME}_class.json").read_text())
    assert 0.0 <= written["model"]["results"]["mnist"]["accuracy"] <= 1.0
    with pytest.raises(SystemExit) as exit_info:
        _evaluate(run_dir, tmp_path / "refused")
    assert exit_info.value.code == 2


def _evaluate(model_dir, output_dir):
    """`capskeras-eval --models=<model_dir> --datasets=mnist` through its main function.

    Its flags go on a FlagValues of their own: the heads tool's, parsed
    earlier in this process, share names with them.
    """
    values = flags.FlagValues()
    evaluate.define_flags(values)
    values(["capskeras-eval", f"--models={model_dir}", "--datasets=mnist",
            "--eval_examples=32", f"--output_dir={output_dir}"])
    global_flags, evaluate.FLAGS = evaluate.FLAGS, values
    try:
        return evaluate.main(["capskeras-eval"])
    finally:
        evaluate.FLAGS = global_flags


def test_check_supports_names_what_a_model_lacks():
    model = tasks.build_model("lenet5")
    assert contract.check_supports(model, "heads_encoder", purpose="Heads") is model
    with pytest.raises(ValueError, match=r"without \['code_decoder', 'code_capsules'\]; "
                                         "the sweeps needs"):
        contract.check_supports(model, "code_decoder", "code_capsules", purpose="the sweeps")
    with pytest.raises(ValueError, match=r"members \['decoder'\]; expected names in"):
        contract.check_supports(model, "decoder", purpose="the sweeps")
