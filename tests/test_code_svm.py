"""Tests for capskeras.evaluation.code_svm: the RBF SVM read-out of a frozen code."""

import json
import os
import pickle
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


# --- saving the fitted SVM without pickle --------------------------------------------

RAN = []


class _Payload:
    """Records that it ran if ever unpickled: what a code-executing artifact would do."""

    def __reduce__(self):
        return RAN.append, ("code ran",)


def _overlapping(classes, count, seed):
    """`classes` noisy clusters in 16 dimensions, close enough that some points are misread."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, count)
    centres = np.random.default_rng(99).normal(size=(classes, 16))
    return centres[labels] + 1.3 * rng.normal(size=(count, 16)), np.array([2, 5, 7, 9])[labels]


@pytest.mark.parametrize("classes", [4, 2])
def test_saved_svm_predicts_the_fitted_classifiers_labels(tmp_path, classes):
    train_codes, train_labels = _overlapping(classes, 240, seed=0)
    test_codes, test_labels = _overlapping(classes, 400, seed=1)
    fitted = code_svm.fit_code_svm(train_codes, train_labels, test_codes, test_labels)
    classifier = fitted["classifier"]
    assert 0.6 < fitted["test_accuracy"] < 1.0  # Held-out points near the boundaries.

    code_svm.save_code_svm(classifier, str(tmp_path / "svm"))
    loaded = code_svm.load_code_svm(str(tmp_path / "svm"))
    expected = classifier.predict(test_codes)
    np.testing.assert_array_equal(loaded.predict(test_codes), expected)
    assert loaded.predict(test_codes).dtype == expected.dtype
    # The one-vs-one decision values themselves, in libsvm's sign.
    classifier.decision_function_shape = "ovo"
    reference = classifier.decision_function(test_codes).reshape(len(test_codes), -1)
    if classes == 2:
        reference = -reference  # scikit-learn flips the two-class decision.
    np.testing.assert_allclose(loaded.decision_function(test_codes), reference,
                               rtol=1e-9, atol=1e-9)
    assert (loaded.gamma, loaded.c) == (0.1, 100.0)
    assert loaded.predict(test_codes[:0]).shape == (0,)
    with pytest.raises(ValueError, match="codes of 15 values; expected 16"):
        loaded.predict(test_codes[:, :15])


def test_a_gamma_given_by_name_is_refused_before_anything_is_written(tmp_path):
    from sklearn.svm import SVC

    codes, labels = _overlapping(3, 90, seed=2)
    classifier = SVC(kernel="rbf", gamma="scale").fit(codes, labels)
    with pytest.raises(ValueError, match=r"gamma='scale'; expected one fitted with a number"):
        code_svm.save_code_svm(classifier, str(tmp_path / "svm"))
    assert not (tmp_path / "svm").exists()


def _saved(tmp_path):
    codes, labels = _overlapping(3, 60, seed=3)
    fitted = code_svm.fit_code_svm(codes, labels, codes, labels)
    code_svm.save_code_svm(fitted["classifier"], str(tmp_path))
    return tmp_path


def test_the_saved_directory_holds_no_pickle(tmp_path):
    directory = _saved(tmp_path)
    assert sorted(os.listdir(directory)) == ["svm.json", "svm.npz"]
    with np.load(directory / "svm.npz", allow_pickle=False) as saved:
        assert sorted(saved.files) == sorted(code_svm.ARRAY_NAMES)
        assert all(saved[name].dtype.kind != "O" for name in saved.files)
    parameters = json.loads((directory / "svm.json").read_text())
    assert parameters["kernel"] == "rbf" and parameters["gamma"] == 0.1


def test_tampered_files_are_refused_and_run_no_code(tmp_path):
    directory = _saved(tmp_path)
    with np.load(directory / "svm.npz", allow_pickle=False) as saved:
        arrays = {name: saved[name] for name in saved.files}

    # An object array, which only pickle can read, holding a payload.
    with open(directory / "svm.npz", "wb") as f:
        np.savez(f, **{**arrays, "classes": np.array([_Payload()] * 3, dtype=object)})
    with pytest.raises(ValueError, match=r"svm.npz unreadable without pickle"):
        code_svm.load_code_svm(str(directory))
    # A pickle in place of the arrays.
    (directory / "svm.npz").write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(ValueError, match=r"svm.npz unreadable without pickle"):
        code_svm.load_code_svm(str(directory))
    assert RAN == []

    # Arrays that do not make an SVM.
    with open(directory / "svm.npz", "wb") as f:
        np.savez(f, **{**arrays, "intercept": arrays["intercept"][:2]})
    with pytest.raises(ValueError, match=r"svm.npz with inconsistent arrays: .*intercept "
                                         r"float64\[2\]"):
        code_svm.load_code_svm(str(directory))
    with open(directory / "svm.npz", "wb") as f:
        np.savez(f, **arrays)
    code_svm.load_code_svm(str(directory))
    parameters = json.loads((directory / "svm.json").read_text())
    (directory / "svm.json").write_text(json.dumps({**parameters, "gamma": -1}))
    with pytest.raises(ValueError, match=r"svm.json with gamma=-1, not a float > 0"):
        code_svm.load_code_svm(str(directory))
    (directory / "svm.json").unlink()
    with pytest.raises(ValueError, match=r"svm.json missing"):
        code_svm.load_code_svm(str(directory))


def test_only_a_fitted_rbf_svc_is_saved(tmp_path):
    from sklearn.svm import SVC

    codes, labels = _overlapping(3, 30, seed=4)
    with pytest.raises(ValueError, match="kernel='linear'; expected an SVC with kernel='rbf'"):
        code_svm.save_code_svm(SVC(kernel="linear").fit(codes, labels), str(tmp_path))
    with pytest.raises(ValueError, match="unfitted"):
        code_svm.save_code_svm(SVC(), str(tmp_path))
    assert os.listdir(tmp_path) == []
