"""capskeras loads `.keras` files in Keras's safe mode: a file holding Python code is refused."""

import keras
import pytest

from capskeras.evaluation import equivariance
from capskeras.evaluation import generalization
from capskeras.evaluation import judge


@pytest.fixture(scope="module")
def code_carrying_file(tmp_path_factory):
    """A `.keras` file whose `Lambda` layer holds a Python lambda's bytecode."""
    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Lambda(lambda x: x * 2.0),
                              keras.layers.Flatten(), keras.layers.Dense(10)])
    path = tmp_path_factory.mktemp("shared") / "model.keras"
    model.save(path)
    return str(path)


@pytest.mark.parametrize("load", [generalization.load_classifier, equivariance.load_code_model,
                                  judge.load_judge], ids=lambda load: load.__name__)
def test_library_loaders_refuse_a_keras_file_holding_code(code_carrying_file, load):
    with pytest.raises(ValueError, match="Lambda.*arbitrary code execution"):
        load(code_carrying_file)
