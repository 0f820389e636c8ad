"""An RBF support vector machine on a frozen code: Sparse Unsupervised Capsules' read-out.

    result = fit_code_svm(train_codes, train_labels, test_codes, test_labels)
    result["test_accuracy"], result["classifier"].predict(codes)

Rawlinson, Ahmed and Kowadlo classify the 256-element latent code of their
unsupervised capsules with an RBF-kernel SVM (C=100, gamma=0.1), trained on
MNIST's training codes; the study's `class` head is the other read-out.
scikit-learn is an optional extra: `pip install capskeras[svm]`.

Reference:
    Rawlinson, Ahmed and Kowadlo, "Sparse Unsupervised Capsules Generalize
    Better", 2018. https://arxiv.org/abs/1804.06094
"""

import time

import numpy as np

# The paper's hyperparameters.
C = 100.0
GAMMA = 0.1


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
    from sklearn.svm import SVC

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
    # A 1 GB kernel cache: libsvm's default 200 MB recomputes most of the kernel on MNIST.
    classifier = SVC(C=float(c), kernel="rbf", gamma=float(gamma), cache_size=1000)
    classifier.fit(train_codes, train_labels)
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
