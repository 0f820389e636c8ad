"""Tests for capskeras.evaluation.code_svm: the RBF SVM read-out of a frozen code."""

import sys

import numpy as np
import pytest

from capskeras.evaluation import code_svm


def _clusters(count, seed):
    """Three classes around far-apart centres in 16 dimensions."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, count)
    centres = np.eye(3, 16) * 3.0
    return centres[labels] + 0.1 * rng.normal(size=(count, 16)), labels


def test_separable_codes_are_classified_and_random_labels_are_not():
    train_codes, train_labels = _clusters(90, seed=0)
    test_codes, test_labels = _clusters(60, seed=1)
    result = code_svm.fit_code_svm(train_codes, train_labels, test_codes, test_labels)
    assert result["test_accuracy"] == 1.0 and result["train_accuracy"] == 1.0
    assert (result["c"], result["gamma"]) == (100.0, 0.1)
    assert np.array_equal(result["classifier"].predict(test_codes), test_labels)

    noise = np.random.default_rng(2)
    shuffled = code_svm.fit_code_svm(noise.normal(size=(300, 16)), noise.integers(0, 3, 300),
                                     noise.normal(size=(300, 16)), noise.integers(0, 3, 300))
    assert shuffled["test_accuracy"] < 0.5


def test_bad_requests_are_named(monkeypatch):
    codes, labels = _clusters(12, seed=0)
    with pytest.raises(ValueError, match="gamma=0; expected a float > 0"):
        code_svm.fit_code_svm(codes, labels, codes, labels, gamma=0)
    with pytest.raises(ValueError, match="12 test codes and 11 labels"):
        code_svm.fit_code_svm(codes, labels, codes, labels[:11])
    monkeypatch.setitem(sys.modules, "sklearn.svm", None)
    with pytest.raises(ImportError, match=r"capskeras\[svm\]"):
        code_svm.fit_code_svm(codes, labels, codes, labels)
