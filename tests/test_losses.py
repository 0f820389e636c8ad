"""Tests for capskeras.losses."""

import keras
import numpy as np
import pytest
from keras import ops

from capskeras.losses import (
    MarginLoss,
    ReconstructionLoss,
    margin_loss,
    reconstruction_loss,
)

LENGTHS = np.array([[0.95, 0.2, 0.05], [0.3, 0.5, 0.6]], dtype="float32")
LABELS = np.array([0, 1])
ONE_HOT = np.eye(3, dtype="float32")[LABELS]
# Sample 0: present 0.9-0.95 < 0 -> 0; absent 0.5*(0.2-0.1)^2 + 0 = 0.005.
# Sample 1: present (0.9-0.5)^2 = 0.16; absent 0.5*(0.2^2 + 0.5^2) = 0.145.
EXPECTED = np.array([0.005, 0.305])


def test_margin_loss_hand_computed():
    loss = ops.convert_to_numpy(margin_loss(ONE_HOT, LENGTHS))
    assert loss.shape == (2,)
    np.testing.assert_allclose(loss, EXPECTED, rtol=1e-5)


@pytest.mark.parametrize("labels", [LABELS, LABELS[:, None], LABELS.astype("float32")])
def test_margin_loss_integer_labels_equal_one_hot(labels):
    np.testing.assert_allclose(
        ops.convert_to_numpy(margin_loss(labels, LENGTHS)),
        ops.convert_to_numpy(margin_loss(ONE_HOT, LENGTHS)),
        rtol=1e-6,
    )


def test_margin_loss_constants():
    loss = margin_loss(ONE_HOT, LENGTHS, m_plus=1.0, m_minus=0.0, down_weight=1.0)
    expected = [0.05**2 + 0.2**2 + 0.05**2, 0.5**2 + 0.3**2 + 0.6**2]
    np.testing.assert_allclose(ops.convert_to_numpy(loss), expected, rtol=1e-5)


def test_margin_loss_zero_when_within_margins():
    lengths = np.array([[0.95, 0.05]], dtype="float32")
    assert float(margin_loss(np.array([0]), lengths)[0]) == 0.0


def test_margin_loss_bad_label_shape():
    with pytest.raises(ValueError, match=r"y_true.shape=\(2, 4\)"):
        margin_loss(np.zeros((2, 4)), LENGTHS)


def test_margin_loss_class_reduces_to_batch_mean():
    for labels in (LABELS, ONE_HOT):
        value = float(MarginLoss()(labels, LENGTHS))
        assert value == pytest.approx(EXPECTED.mean(), rel=1e-5)


def test_margin_loss_class_config_round_trip():
    loss = MarginLoss(m_plus=0.8, m_minus=0.2, down_weight=0.25, name="m")
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored, MarginLoss)
    assert restored.get_config() == loss.get_config()
    assert (restored.m_plus, restored.m_minus, restored.down_weight) == (0.8, 0.2, 0.25)


def test_reconstruction_loss_hand_computed_and_shapes():
    images = np.ones((2, 4, 4, 1), dtype="float32")
    recon = np.zeros((2, 16), dtype="float32")
    recon[1, :8] = 1.0
    loss = ops.convert_to_numpy(reconstruction_loss(images, recon))
    np.testing.assert_allclose(loss, [0.0005 * 16, 0.0005 * 8], rtol=1e-6)
    scaled = reconstruction_loss(images, recon, scale=1.0)
    np.testing.assert_allclose(ops.convert_to_numpy(scaled), [16.0, 8.0])


def test_reconstruction_loss_class_and_config():
    images = np.ones((2, 4, 4, 1), dtype="float32")
    recon = np.zeros((2, 4, 4, 1), dtype="float32")
    loss = ReconstructionLoss(scale=0.5)
    assert float(loss(images, recon)) == pytest.approx(8.0)
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored, ReconstructionLoss)
    assert restored.scale == 0.5


def test_functions_registered():
    assert keras.saving.get_registered_object("capskeras>margin_loss") is margin_loss
    assert keras.saving.get_registered_object("capskeras>MarginLoss") is MarginLoss
    assert (
        keras.saving.get_registered_object("capskeras>ReconstructionLoss")
        is ReconstructionLoss
    )
