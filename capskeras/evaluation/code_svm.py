"""An RBF support vector machine on a frozen code: Sparse Unsupervised Capsules' read-out.

    result = fit_code_svm(train_codes, train_labels, test_codes, test_labels)
    result["test_accuracy"], result["classifier"].predict(codes)
    save_code_svm(result["classifier"], directory)
    load_code_svm(directory).predict(codes)  # The same labels, no scikit-learn needed.

Rawlinson, Ahmed and Kowadlo classify the 256-element latent code of their
unsupervised capsules with an RBF-kernel SVM (C=100, gamma=0.1), trained on
MNIST's training codes; the study's `class` head is the other read-out.
scikit-learn is an optional extra: `pip install capskeras[svm]`.

A fitted classifier is saved as arrays and JSON, never a pickle, so that
loading a shared file cannot run code: `svm.npz` (support vectors, dual
coefficients, intercepts, support counts, classes; read with
`allow_pickle=False`) and `svm.json` (kernel, gamma, C, code size).
`load_code_svm` returns a `CodeSvm` that predicts in NumPy.

Reference:
    Rawlinson, Ahmed and Kowadlo, "Sparse Unsupervised Capsules Generalize
    Better", 2018. https://arxiv.org/abs/1804.06094
"""

import json
import os
import time
import zipfile

import numpy as np

from capskeras.files import write_text_atomically

# The paper's hyperparameters.
C = 100.0
GAMMA = 0.1

ARRAYS_FILE = "svm.npz"
PARAMETERS_FILE = "svm.json"
FORMAT = "capskeras.code_svm"
FORMAT_VERSION = 1
ARRAY_NAMES = ("support_vectors", "dual_coef", "intercept", "n_support", "classes")
# Codes per chunk when predicting: bounds the [chunk, support vectors] kernel block.
CHUNK = 1024


def check_request(c=C, gamma=GAMMA):
    """Checks `c`, `gamma` and that scikit-learn is installed, before any codes are computed.

    Raises:
        ImportError: scikit-learn is not installed.
        ValueError: `c` or `gamma` is not > 0.
    """
    try:
        import sklearn.svm  # noqa: F401
    except ImportError as error:
        raise ImportError("The SVM read-out needs scikit-learn; expected it installed: "
                          "pip install 'capskeras[svm]'") from error
    for name, value in (("c", c), ("gamma", gamma)):
        if not value > 0:
            raise ValueError(f"Received: {name}={value!r}; expected a float > 0")


def fit_code_svm(train_codes, train_labels, test_codes, test_labels, c=C, gamma=GAMMA):
    """Fits an RBF SVM on `train_codes` and scores it on `test_codes`.

    Args:
        train_codes, test_codes: `[N, D]` float arrays.
        train_labels, test_labels: `[N]` integer class labels.
        c: the SVM's regularisation `C` (> 0).
        gamma: the RBF kernel's `gamma` (> 0), for `exp(-gamma |u - v|^2)`.

    Returns:
        A dict: `classifier` (the fitted `sklearn.svm.SVC`), `train_accuracy`,
        `test_accuracy`, `support_vectors`, `fit_seconds`, `c`, `gamma`.

    Raises:
        ImportError: scikit-learn is not installed.
        ValueError: a bad `c` or `gamma`, or codes and labels of different
            lengths.
    """
    check_request(c, gamma)
    train_codes, test_codes = (np.asarray(codes, "float64").reshape(len(codes), -1)
                               for codes in (train_codes, test_codes))
    train_labels, test_labels = (np.asarray(labels).reshape(-1)
                                 for labels in (train_labels, test_labels))
    for split, codes, labels in (("train", train_codes, train_labels),
                                 ("test", test_codes, test_labels)):
        if len(codes) != len(labels):
            raise ValueError(f"Received: {len(codes)} {split} codes and {len(labels)} labels; "
                             "expected one label per code")
    started = time.perf_counter()
    classifier = fit_svm(train_codes, train_labels, c, gamma)
    fit_seconds = time.perf_counter() - started
    return {
        "classifier": classifier,
        "train_accuracy": float(classifier.score(train_codes, train_labels)),
        "test_accuracy": float(classifier.score(test_codes, test_labels)),
        "support_vectors": int(classifier.support_vectors_.shape[0]),
        "fit_seconds": round(fit_seconds, 2),
        "c": float(c),
        "gamma": float(gamma),
    }


def fit_svm(codes, labels, c=C, gamma=GAMMA):
    """An RBF `sklearn.svm.SVC` fitted on `codes` (`[N, ...]`, flattened) and `labels`.

    Raises:
        ImportError: scikit-learn is not installed.
        ValueError: a bad `c` or `gamma`, or codes and labels of different
            lengths.
    """
    check_request(c, gamma)
    from sklearn.svm import SVC

    codes = np.asarray(codes, "float64")
    codes = codes.reshape(len(codes), -1)
    labels = np.asarray(labels).reshape(-1)
    if len(codes) != len(labels):
        raise ValueError(f"Received: {len(codes)} codes and {len(labels)} labels; "
                         "expected one label per code")
    # A 1 GB kernel cache: libsvm's default 200 MB recomputes most of the kernel on MNIST.
    classifier = SVC(C=float(c), kernel="rbf", gamma=float(gamma), cache_size=1000)
    return classifier.fit(codes, labels)


class CodeSvm:
    """A fitted RBF SVM read back from arrays: scikit-learn's `SVC.predict`, in NumPy.

    One-vs-one, as libsvm predicts: for classes `i < j` the decision value is
    `sum_k coef_k exp(-gamma |x - sv_k|^2) + intercept_ij` over the support
    vectors of both classes; positive votes for `i`, otherwise `j`; the
    class with the most votes wins, the first on a tie. The decision values
    match libsvm's to rounding (about 1e-15), so the labels are the same
    unless a code lies on a boundary to that precision.

    Args:
        support_vectors: `[S, D]`, grouped by class in `classes` order.
        dual_coef: `[K - 1, S]`, libsvm's coefficients (for two classes,
            the negation of scikit-learn's public `dual_coef_`).
        intercept: `[K (K - 1) / 2]`, libsvm's `-rho` per class pair (for
            two classes, the negation of scikit-learn's `intercept_`).
        n_support: `[K]` support vectors per class.
        classes: `[K]` labels.
        gamma: the RBF kernel's gamma used in the fit.
        c: the `C` it was fitted with (kept for the record).
    """

    def __init__(self, support_vectors, dual_coef, intercept, n_support, classes, gamma, c):
        self.support_vectors = support_vectors
        self.dual_coef = dual_coef
        self.intercept = intercept
        self.n_support = n_support
        self.classes = classes
        self.gamma = gamma
        self.c = c

    def decision_function(self, codes):
        """`[N, K (K - 1) / 2]` one-vs-one decision values (libsvm's sign)."""
        codes = np.asarray(codes, "float64")
        if codes.ndim != 2:
            codes = codes.reshape(len(codes), -1)
        if codes.shape[1] != self.support_vectors.shape[1]:
            raise ValueError(f"Received: codes of {codes.shape[1]} values; expected "
                             f"{self.support_vectors.shape[1]}, the size the SVM was fitted on")
        starts = np.concatenate([[0], np.cumsum(self.n_support)])
        squares = np.einsum("sd,sd->s", self.support_vectors, self.support_vectors)
        values = []
        for begin in range(0, len(codes), CHUNK):
            chunk = codes[begin:begin + CHUNK]
            distances = (np.einsum("nd,nd->n", chunk, chunk)[:, None] + squares[None, :]
                         - 2.0 * chunk @ self.support_vectors.T)
            kernel = np.exp(-self.gamma * np.maximum(distances, 0.0))
            pairs = []
            for i in range(len(self.classes)):
                for j in range(i + 1, len(self.classes)):
                    own, other = slice(starts[i], starts[i + 1]), slice(starts[j], starts[j + 1])
                    pairs.append(kernel[:, own] @ self.dual_coef[j - 1, own]
                                 + kernel[:, other] @ self.dual_coef[i, other])
            values.append(np.stack(pairs, axis=1) + self.intercept)
        if not values:
            return np.zeros((0, len(self.intercept)))
        return np.concatenate(values)

    def predict(self, codes):
        """The `[N]` labels scikit-learn's fitted `SVC.predict` gives `codes`."""
        decisions = self.decision_function(codes)
        votes = np.zeros((len(decisions), len(self.classes)), "int64")
        pair = 0
        for i in range(len(self.classes)):
            for j in range(i + 1, len(self.classes)):
                wins = decisions[:, pair] > 0
                votes[:, i] += wins
                votes[:, j] += ~wins
                pair += 1
        return self.classes[np.argmax(votes, axis=1)]


def save_code_svm(classifier, directory):
    """Writes a fitted RBF `sklearn.svm.SVC` as `svm.npz` and `svm.json` in `directory`.

    Arrays and JSON only, no pickle: `load_code_svm` reads them back
    without running code from the files.

    Args:
        classifier: a fitted `sklearn.svm.SVC` with `kernel="rbf"`, fitted
            on dense codes, `break_ties=False`.
        directory: created if missing; the two files are replaced.

    Returns:
        The paths of the two files written.

    Raises:
        ValueError: another kernel, a gamma given by name ("scale", "auto"),
            sparse support vectors, `break_ties`, or an unfitted classifier.
    """
    if getattr(classifier, "kernel", None) != "rbf":
        raise ValueError(f"Received: kernel={getattr(classifier, 'kernel', None)!r}; "
                         "expected an SVC with kernel='rbf'")
    if getattr(classifier, "break_ties", False):
        raise ValueError("Received: break_ties=True; expected an SVC predicting by "
                         "one-vs-one votes (break_ties=False)")
    if not hasattr(classifier, "support_vectors_"):
        raise ValueError("Received: an unfitted SVC; expected one fitted on codes")
    if hasattr(classifier.support_vectors_, "toarray"):
        raise ValueError("Received: an SVC fitted on sparse codes; expected dense codes")
    classes = np.asarray(classifier.classes_)
    dual_coef = np.asarray(classifier.dual_coef_, "float64")
    intercept = np.asarray(classifier.intercept_, "float64")
    if len(classes) == 2:
        # scikit-learn negates libsvm's two-class coefficients and intercept
        # in its public attributes (its decision is positive for classes_[1]).
        dual_coef, intercept = -dual_coef, -intercept
    gamma = classifier.gamma
    if isinstance(gamma, str):  # scikit-learn keeps the value it worked out private.
        raise ValueError(f"Received: an SVC fitted with gamma={gamma!r}; expected one fitted "
                         "with a number (> 0), as fit_svm fits it")
    arrays = {
        "support_vectors": np.asarray(classifier.support_vectors_, "float64"),
        "dual_coef": dual_coef,
        "intercept": intercept,
        "n_support": np.asarray(classifier.n_support_, "int64"),
        "classes": classes,
    }
    parameters = {"format": FORMAT, "version": FORMAT_VERSION, "kernel": "rbf",
                  "gamma": float(gamma), "c": float(classifier.C),
                  "code_size": int(arrays["support_vectors"].shape[1]),
                  "classes": len(classes), "support_vectors": len(arrays["support_vectors"])}
    os.makedirs(directory, exist_ok=True)
    arrays_path = os.path.join(directory, ARRAYS_FILE)
    partial = arrays_path + ".partial"
    with open(partial, "wb") as f:
        np.savez(f, **arrays)
    os.replace(partial, arrays_path)
    parameters_path = os.path.join(directory, PARAMETERS_FILE)
    write_text_atomically(parameters_path, json.dumps(parameters, indent=2))
    return arrays_path, parameters_path


def load_code_svm(directory):
    """Reads the SVM `save_code_svm` wrote in `directory`, running no code from it.

    Returns:
        A `CodeSvm` whose `predict` gives the saved classifier's labels.

    Raises:
        ValueError: a file is missing, holds a pickle or an object array, or
            does not describe an RBF SVM of consistent shapes.
    """
    arrays_path = os.path.join(directory, ARRAYS_FILE)
    parameters_path = os.path.join(directory, PARAMETERS_FILE)

    def refuse(path, problem):
        return ValueError(f"Received: {path} {problem}; expected the {ARRAYS_FILE} and "
                          f"{PARAMETERS_FILE} that capskeras.evaluation.code_svm."
                          "save_code_svm writes")

    for path in (arrays_path, parameters_path):
        if not os.path.isfile(path):
            raise refuse(path, "missing")
    try:
        with open(parameters_path) as f:
            parameters = json.load(f)
    except (ValueError, UnicodeDecodeError) as error:
        raise refuse(parameters_path, f"not JSON ({error})") from error
    if not isinstance(parameters, dict) or parameters.get("format") != FORMAT:
        raise refuse(parameters_path, f"without \"format\": \"{FORMAT}\"")
    if parameters.get("version") != FORMAT_VERSION or parameters.get("kernel") != "rbf":
        raise refuse(parameters_path, f"of version {parameters.get('version')!r} and kernel "
                     f"{parameters.get('kernel')!r}, not {FORMAT_VERSION} and 'rbf'")
    gamma, c = parameters.get("gamma"), parameters.get("c")
    for name, value in (("gamma", gamma), ("c", c)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                not np.isfinite(value) or value <= 0:
            raise refuse(parameters_path, f"with {name}={value!r}, not a float > 0")
    try:
        with np.load(arrays_path, allow_pickle=False) as saved:
            arrays = {name: saved[name] for name in saved.files}
    except (ValueError, OSError, zipfile.BadZipFile) as error:
        # An object array or a pickle raises ValueError with allow_pickle=False.
        raise refuse(arrays_path, f"unreadable without pickle ({error})") from error
    if sorted(arrays) != sorted(ARRAY_NAMES):
        raise refuse(arrays_path, f"holding arrays {sorted(arrays)}, not {sorted(ARRAY_NAMES)}")
    support_vectors, dual_coef, intercept, n_support, classes = (
        arrays[name] for name in ARRAY_NAMES)
    count, size = len(classes), parameters.get("code_size")
    shapes_hold = (
        count >= 2 and classes.ndim == 1 and classes.dtype.kind in "biufU"
        and support_vectors.ndim == 2 and support_vectors.shape[1] == size
        and n_support.shape == (count,) and n_support.dtype.kind in "iu"
        and (n_support >= 0).all() and n_support.sum() == len(support_vectors)
        and dual_coef.shape == (count - 1, len(support_vectors))
        and intercept.shape == (count * (count - 1) // 2,)
        and all(array.dtype.kind == "f" for array in (support_vectors, dual_coef, intercept)))
    if not shapes_hold:
        raise refuse(arrays_path, "with inconsistent arrays: " + ", ".join(
            f"{name} {arrays[name].dtype}{list(arrays[name].shape)}" for name in ARRAY_NAMES)
            + f" for code_size={size!r}")
    return CodeSvm(support_vectors.astype("float64"), dual_coef.astype("float64"),
                   intercept.astype("float64"), n_support.astype("int64"), classes,
                   float(gamma), float(c))
