"""Tasks: registering a model family, its settings and flags, and training it."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from capskeras import tasks
from capskeras.models import ClassificationHead
from capskeras.models import StudyModel
from capskeras.settings import MODEL
from capskeras.settings import at_least
from capskeras.settings import setting
from capskeras.training.config import TrainConfig
from capskeras.training.flags import config_from_arguments
from capskeras.training.train import ConfigurationError
from capskeras.training.train import train


def register_tiny_cnn():
    """The README's example family, as a user would write it."""

    @tasks.register_task("tiny_cnn")
    class TinyCnn(tasks.MnistTask):
        @dataclasses.dataclass
        class Settings(tasks.MnistTask.Settings):
            filters: int = setting(8, "Filters of the convolution.", check=at_least(1),
                                   resume=MODEL)

        def build_model(self, pretrained):
            features = keras.Sequential([
                keras.Input(self.image_shape()),
                keras.layers.Conv2D(self.settings.filters, 5, strides=2, activation="relu"),
                keras.layers.GlobalMaxPooling2D(),
            ])
            return StudyModel(features, ClassificationHead(hidden_units=()))

    return TinyCnn


@pytest.fixture
def tiny_cnn():
    task_class = register_tiny_cnn()
    yield task_class
    del tasks.TASKS["tiny_cnn"]


def test_a_registered_family_trains_exports_and_serves(tiny_cnn, tmp_path):
    config = config_from_arguments([
        "--model=tiny_cnn", "--filters=4", "--train_examples=256", "--eval_examples=64",
        "--batch_size=64", "--verbose=0", f"--model_dir={tmp_path / 'run'}",
        f"--export_dir={tmp_path / 'export'}",
    ])
    assert config.settings == tiny_cnn.Settings(filters=4)
    assert config.experiment == "tiny_cnn" and config.model_dir == str(tmp_path / "run")
    results = train(config)
    assert 0.0 <= results["test"]["accuracy"] <= 1.0
    assert results["settings"] == {"filters": 4, "translate_pixels": 0, "pad_to": 0}
    served = tf.saved_model.load(results["export"]).signatures["serving_default"]
    outputs = served(images=tf.zeros((2, 28, 28, 1)))
    assert outputs["encoding"].shape == (2, 4)
    np.testing.assert_allclose(np.sum(outputs["probabilities"], axis=-1), 1.0, rtol=1e-5)


def test_family_settings_are_checked_and_named(tiny_cnn, tmp_path):
    with pytest.raises(ConfigurationError, match="filters=0; expected an int >= 1"):
        train(TrainConfig.from_flat(model="tiny_cnn", filters=0, model_dir=str(tmp_path)))
    with pytest.raises(ValueError, match=r"settings \['encoder'\] for model='tiny_cnn'"):
        TrainConfig.from_flat(model="tiny_cnn", encoder="deep_bp")
    with pytest.raises(ConfigurationError, match=r"expected .*TinyCnn\.Settings"):
        train(TrainConfig(model="tiny_cnn", settings=tasks.get_task("capsnet").Settings(),
                          model_dir=str(tmp_path / "run")))


def test_a_shared_setting_must_mean_the_same_in_every_family(tiny_cnn):
    from absl import flags as absl_flags

    from capskeras.training.flags import define_flags

    @tasks.register_task("other_pad")
    class OtherPad(tasks.Task):
        @dataclasses.dataclass
        class Settings(tasks.Task.Settings):
            pad_to: int = setting(40, "Another canvas.")

    try:
        with pytest.raises(ValueError, match=r"setting 'pad_to' of .*--model=other_pad"):
            define_flags(absl_flags.FlagValues())
    finally:
        del tasks.TASKS["other_pad"]


def test_registering_a_name_twice_is_refused(tiny_cnn):
    with pytest.raises(ValueError, match="task name 'tiny_cnn'; it is already registered"):
        register_tiny_cnn()


def test_unknown_family_lists_the_registered_ones():
    with pytest.raises(ValueError, match=r"model='capsule9000'; expected one of \[.*'study'"):
        tasks.get_task("capsule9000")
    with pytest.raises(ValueError, match=r"model='capsule9000'; expected one of"):
        tasks.build_model("capsule9000")


def test_build_model_builds_what_the_trainer_trains():
    model = tasks.build_model("study", encoder="untrained", head="recon", pad_to=40)
    assert model.name == "enc_untrained_dec_recon"
    assert model.encoder.trainable is False
    assert model.compute_output_shape((None, 40, 40, 1)) == (None, 40, 40, 1)


def test_settings_of_every_family_round_trip_through_flags(tmp_path):
    for name, task_class in sorted(tasks.TASKS.items()):
        config = TrainConfig(model=name, model_dir=str(tmp_path / name))
        flagfile = tmp_path / f"{name}.cfg"
        flagfile.write_text(config.to_flagfile())
        assert config_from_arguments([f"--flagfile={flagfile}"]) == config
        assert isinstance(config.settings, task_class.Settings)


def test_ksparse_schedule_lowers_k_linearly_to_its_target():
    from capskeras.layers import KSparse
    from capskeras.tasks.study import KSparseSchedule

    layer = KSparse(10)
    layer.build((None, 100))
    schedule = KSparseSchedule(initial_factor=2.0, epochs=4)
    assert [schedule.k_at(layer, epoch) for epoch in range(6)] == [20, 18, 15, 12, 10, 10]
    assert KSparseSchedule(initial_factor=2.0, epochs=0).k_at(layer, 0) == 10


def test_dtype_policy_applies_inside_and_is_restored_even_after_an_error():
    from capskeras.settings import dtype_policy

    before = keras.config.dtype_policy().name
    with pytest.raises(RuntimeError, match="inside"):
        with dtype_policy("mixed_bfloat16"):
            assert keras.layers.Dense(2).compute_dtype == "bfloat16"
            raise RuntimeError("inside")
    assert keras.config.dtype_policy().name == before
