"""Equivariance, measured: perturbation sweeps, their plausibility, and code maps.

The equivariance study judged its perturbation pictures by eye. This module
draws them and measures them:

- Perturbation sweeps (`perturbation_sweeps`): for a model with a
  decoder (the contract's `code` and `code_decoder()`), add an offset to
  one element of the code at a time (to each dimension of the winning
  capsule, for capsule codes: `code_capsules`), across `SCALES`, and
  decode. Offsets are in units of the element's standard deviation over
  the test digits, so codes of different magnitudes are perturbed
  comparably; rows are the `rows` most active elements of each digit's
  code.
- Plausibility (`sweep_metrics`): a judge network
  (`capskeras.evaluation.judge`) scores every decoding: the fraction it
  judges a confident digit and its mean entropy, per scale.
- Smoothness (`sweep_metrics`): the mean absolute pixel change per step of
  a sweep, and how often the judged class changes between steps.
- Transformation equivariance (`linear_equivariance`): for a fixed input
  transformation T (`TRANSFORMS`: rotation, shear, scale, translation), a
  linear map (ridge regression, with bias) is fitted from code(x) to
  code(T x) on one half of the digits and tested on the other. Reported:
  `equivariance`, the held-out fraction of the variance of code(T x) the
  map explains (R^2; 1 for any code that changes linearly, including an
  invariant one), and `invariance`, 1 - E|code(T x) - code(x)|^2 /
  (Var code(x) + Var code(T x)) (1 when the code does not change, about 0
  when code(T x) is unrelated to code(x)). Equivariance well above
  invariance is a code that changes predictably with T.
- Rotated feature families (`rotated_families`): for each first-layer
  unit, the input rotation and the other unit that best match its
  response maps (turned back into register, correlated over images and
  positions), in the spirit
  of Olah et al.'s "Naturally Occurring Equivariance in Neural Networks"
  (Distill 2020): units whose rotated input reproduces another unit's
  response form rotated families.

Each metric is tested on a case with a known answer (an exactly equivariant
map, an invariant one, a random one) in tests/test_equivariance.py.
"""

import dataclasses
import os
from typing import Callable

import keras
import numpy as np

import capskeras.models  # noqa: F401  Registers the classes `model.keras` files name.
from capskeras.data import affnist
from capskeras.data import transforms
from capskeras.evaluation import judge as judge_lib
from capskeras.evaluation import perturbation
from capskeras.evaluation.generalization import keras_input_shape
from capskeras.models import contract

# Offsets in standard deviations of the perturbed element: -2.5 ... 2.5.
SCALES = tuple(round(0.5 * step, 1) for step in range(-5, 6))
# Fixed transformations, as `capskeras.data.affnist.TRANSFORM_FIELDS` rows.
TRANSFORMS = {
    "rotation 15°": (15.0, 0.0, 1.0, 1.0, 0.0, 0.0),
    "shear 0.2": (0.0, 0.2, 1.0, 1.0, 0.0, 0.0),
    "scale 1.2": (0.0, 0.0, 1.2, 1.2, 0.0, 0.0),
    "translation 2 px": (0.0, 0.0, 1.0, 1.0, 2.0, 2.0),
}
FAMILY_ANGLES = tuple(float(angle) for angle in range(15, 360, 15))
_BATCH = 256


@dataclasses.dataclass
class CodeModel:
    """A trained model seen as an encoder (and decoder, if it has one).

    Attributes:
        name: display name.
        path: where it was loaded from.
        image_shape: `(H, W, C)` of its input.
        encode: images `[N, H, W, C]` -> codes `[N, D]` (NumPy).
        decode: codes `[N, D]` -> images `[N, H, W]`, or None without a
            reconstruction decoder.
        feature_responses: images `[N, H, W, C]` -> the response maps
            `[N, h, w, U]` of the first learned layer, or None.
        capsules: `(num_capsules, capsule_dim)` for capsule codes, else None.
    """

    name: str
    path: str
    image_shape: tuple
    encode: Callable
    decode: Callable = None
    feature_responses: Callable = None
    capsules: tuple = None


def _batched(function, array):
    array = np.asarray(array, "float32")
    outputs = [keras.ops.convert_to_numpy(function(array[i:i + _BATCH]))
               for i in range(0, len(array), _BATCH)]
    return np.concatenate(outputs).astype("float32") if outputs else np.zeros((0,), "float32")


def code_model_from_keras(model, name, path=""):
    """A `CodeModel` for a Keras model following the contract (`capskeras.models.contract`).

    Its code is `model.code` (or the served `encoding`), decoded by
    `model.code_decoder()`; `model.code_capsules` and
    `model.feature_responses()` give the capsule layout and the first
    layer's responses where the model has them.
    """
    if not callable(getattr(model, "serving_outputs", None)):
        raise ValueError(
            f"Received: model {name!r} of type {type(model).__name__}; expected a capskeras "
            "model with serving_outputs (capskeras.models.contract)"
        )
    decoder = contract.member(model, "code_decoder")
    decode = None
    if decoder is not None:
        def decode(codes):
            return _batched(lambda c: decoder(c), codes)[..., 0]
    return CodeModel(
        name, path, tuple(keras_input_shape(model, path)),
        encode=lambda images: _batched(lambda x: contract.code_of(model, x), images),
        decode=decode,
        feature_responses=contract.member(model, "feature_responses"),
        capsules=contract.member(model, "code_capsules"),
    )


def load_code_model(path, name=None):
    """Loads `<path>/model.keras` (or a `.keras` file) as a `CodeModel`."""
    path = os.fspath(path)
    file = os.path.join(path, "model.keras") if os.path.isdir(path) else path
    if not (os.path.isfile(file) and file.endswith(".keras")):
        raise ValueError(
            f"Received: model path {path!r}; expected a model directory holding model.keras "
            "(as capskeras-train writes it) or a .keras file"
        )
    name = name or os.path.basename(os.path.normpath(path)).removesuffix(".keras")
    return code_model_from_keras(keras.saving.load_model(file, safe_mode=True), name, path)


# --- perturbation sweeps -------------------------------------------------------------


def element_spread(codes):
    """Per-element standard deviation of `codes` `[N, D]`; elements that never vary get
    the mean spread of those that do (1 when none does)."""
    spread = np.asarray(codes, "float64").std(axis=0)
    varying = spread > 1e-8
    fill = spread[varying].mean() if varying.any() else 1.0
    return np.where(varying, spread, fill).astype("float32")


def perturbation_sweeps(code_model, images, scales=SCALES, rows=8, spread=None):
    """Decodings of `images` with one code element at a time moved across `scales`.

    Args:
        code_model: a `CodeModel` with `decode`.
        images: `[B, H, W, C]` in [0, 1].
        scales: offsets in units of each element's spread.
        rows: elements perturbed per image: its `rows` most active ones
            (largest |value|); for capsule codes, every dimension of the
            winning capsule instead.
        spread: `[D]` per-element spread; defaults to `element_spread` of
            the codes of `images`.

    Returns:
        A dict: `images` `[B, R, S, H, W]` decodings, `elements` `[B, R]`
        the perturbed element of each row, `scales`, `codes` `[B, D]`.
    """
    if code_model.decode is None:
        raise ValueError(
            f"Received: model {code_model.name!r} without a reconstruction decoder; "
            "perturbation sweeps need one"
        )
    scales = np.asarray(scales, "float32").reshape(-1)
    codes = code_model.encode(images)
    spread = element_spread(codes) if spread is None else np.asarray(spread, "float32")
    if code_model.capsules:
        count, dim = code_model.capsules
        winners = perturbation.winning_capsules(codes.reshape(-1, count, dim))
        elements = winners[:, None] * dim + np.arange(dim)[None, :]
    else:
        rows = min(int(rows), codes.shape[1])
        elements = np.argsort(-np.abs(codes), axis=1, kind="stable")[:, :rows]
    batch, count_rows = elements.shape
    perturbed = np.repeat(codes[:, None, None, :], count_rows, axis=1)
    perturbed = np.repeat(perturbed, len(scales), axis=2)  # [B, R, S, D]
    for b in range(batch):
        for r, element in enumerate(elements[b]):
            perturbed[b, r, :, element] += scales * spread[element]
    decoded = code_model.decode(perturbed.reshape(-1, codes.shape[1]))
    height, width = decoded.shape[1:3]
    return {
        "images": decoded.reshape(batch, count_rows, len(scales), height, width),
        "elements": elements,
        "scales": scales,
        "codes": codes,
    }


def sweep_metrics(decoded, judge_model, scales):
    """Plausibility and smoothness of perturbation sweeps `[B, R, S, H, W]`.

    Returns:
        A dict:
        - `by_scale`: `{scale: {"confident_fraction", "mean_entropy"}}`;
        - `confident_fraction`, `mean_entropy`: over every perturbed
          decoding (scale != 0);
        - `pixel_change_per_step`: mean |pixel difference| between
          neighbouring scales;
        - `class_change_rate`: the fraction of steps where the judged class
          changes; `sweeps_changing_class`: the fraction of sweeps with at
          least one change;
        - `class_kept`: the fraction of perturbed decodings judged the
          class of their unperturbed one (scale 0, when among the scales).
    """
    decoded = np.asarray(decoded, "float32")
    batch, rows, steps = decoded.shape[:3]
    scales = [float(s) for s in np.asarray(scales).reshape(-1)]
    if len(scales) != steps:
        raise ValueError(
            f"Received: {len(scales)} scales for sweeps of {steps} steps; expected one per step"
        )
    probabilities = judge_lib.judge_probabilities(
        judge_model, decoded.reshape((-1,) + decoded.shape[3:])
    ).reshape(batch, rows, steps, -1)
    classes = probabilities.argmax(axis=-1)
    by_scale = {f"{s:g}": judge_lib.plausibility(probabilities[:, :, i].reshape(-1, 10))
                for i, s in enumerate(scales)}
    moved = [i for i, s in enumerate(scales) if s != 0.0] or list(range(steps))
    overall = judge_lib.plausibility(probabilities[:, :, moved].reshape(-1, 10))
    changes = classes[:, :, 1:] != classes[:, :, :-1]
    result = {
        "by_scale": by_scale,
        "confident_fraction": overall["confident_fraction"],
        "mean_entropy": overall["mean_entropy"],
        "pixel_change_per_step": float(np.mean(np.abs(np.diff(decoded, axis=2)))),
        "class_change_rate": float(changes.mean()) if steps > 1 else 0.0,
        "sweeps_changing_class": float(changes.any(axis=-1).mean()) if steps > 1 else 0.0,
    }
    if 0.0 in scales:
        centre = classes[:, :, scales.index(0.0)][:, :, None]
        result["class_kept"] = float(np.mean(classes[:, :, moved] == centre))
    return result


# --- transformation equivariance ----------------------------------------------------


def transform_images(images, params):
    """`images` `[N, H, W, C]` under one fixed transform (`TRANSFORM_FIELDS` order)."""
    images = np.asarray(images, "float32")
    rows = np.tile(np.asarray(params, "float32")[None], (len(images), 1))
    return affnist.warp_images(images, rows)


RIDGES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


def _ridge_fit(z, z_t, ridge):
    """`(weights, mean, mean_t)` of the ridge map z -> z_t (ridge relative to mean variance)."""
    mean, mean_t = z.mean(axis=0), z_t.mean(axis=0)
    centred = z - mean
    gram = centred.T @ centred
    penalty = ridge * max(np.trace(gram) / max(gram.shape[0], 1), 1e-12)
    weights = np.linalg.solve(gram + penalty * np.eye(gram.shape[0]), centred.T @ (z_t - mean_t))
    return weights, mean, mean_t


def _r2(target, predicted):
    total = np.sum((target - target.mean(axis=0)) ** 2)
    return float(1.0 - np.sum((target - predicted) ** 2) / total) if total > 0 else float("nan")


def linear_equivariance(codes, transformed_codes, fit_fraction=0.5, ridges=RIDGES):
    """How linearly code(T x) follows code(x), and how much it stays the same.

    A map `code(T x) ~ code(x) @ M + b` is fitted by ridge regression on the
    first `fit_fraction` of the pairs and tested on the rest. The ridge
    strength is chosen among `ridges` (relative to the codes' mean
    variance) on a quarter of the fitting pairs held back, then the map is
    refitted on all of them, so codes with more elements than pairs are
    not overfitted.

    Args:
        codes: `[N, D]` codes of the inputs.
        transformed_codes: `[N, D']` codes of the transformed inputs.
        fit_fraction: share of the pairs used to fit the map.
        ridges: candidate regularization strengths.

    Returns:
        `{"equivariance", "invariance", "ridge", "fit_pairs", "test_pairs"}`:
        `equivariance` the held-out R^2 of the map, `invariance` 1 - E|z' -
        z|^2 / (Var z + Var z') on the held-out pairs (when D = D').
    """
    z = np.asarray(codes, "float64")
    z_t = np.asarray(transformed_codes, "float64")
    if z.ndim != 2 or z_t.ndim != 2 or len(z) != len(z_t):
        raise ValueError(
            f"Received: codes of shape {z.shape} and transformed codes of shape {z_t.shape}; "
            "expected [N, D] and [N, D'] for the same N"
        )
    split = int(round(len(z) * fit_fraction))
    if split < 4 or len(z) - split < 2:
        raise ValueError(
            f"Received: {len(z)} pairs with fit_fraction={fit_fraction}; expected at least two "
            "pairs to test and four to fit"
        )
    fit, fit_t, test, test_t = z[:split], z_t[:split], z[split:], z_t[split:]
    inner = split - max(split // 4, 1)
    scores = []
    for ridge in ridges:
        weights, mean, mean_t = _ridge_fit(fit[:inner], fit_t[:inner], ridge)
        scores.append(_r2(fit_t[inner:], (fit[inner:] - mean) @ weights + mean_t))
    scores = np.nan_to_num(np.asarray(scores), nan=-np.inf)
    ridge = ridges[int(np.argmax(scores))]
    weights, mean, mean_t = _ridge_fit(fit, fit_t, ridge)
    result = {
        "equivariance": _r2(test_t, (test - mean) @ weights + mean_t),
        "ridge": float(ridge),
        "fit_pairs": int(split),
        "test_pairs": int(len(z) - split),
    }
    if z.shape[1] == z_t.shape[1]:
        spread = np.sum((test - test.mean(axis=0)) ** 2) + np.sum((test_t - test_t.mean(axis=0)) ** 2)
        result["invariance"] = (float(1.0 - np.sum((test_t - test) ** 2) / spread)
                                if spread > 0 else float("nan"))
    return result


def equivariance_table(code_model, images, transforms_=None, **kwargs):
    """`linear_equivariance` of `code_model` for each named transform.

    Args:
        code_model: a `CodeModel`.
        images: `[N, H, W, C]` held-out digits in [0, 1] (N of a few thousand
            for codes of a few hundred elements).
        transforms_: `{name: TRANSFORM_FIELDS row}`; defaults to `TRANSFORMS`.

    Returns:
        `{name: {"equivariance", "invariance", ...}}`.
    """
    codes = code_model.encode(images)
    return {
        name: linear_equivariance(codes, code_model.encode(transform_images(images, params)),
                                  **kwargs)
        for name, params in (transforms_ or TRANSFORMS).items()
    }


# --- rotated feature families -------------------------------------------------------


def response_maps(respond, images):
    """`respond(images)` in batches, as float32 NumPy: the maps `[N, h, w, U]`.

    `respond` is a `CodeModel`'s `feature_responses` (the first layer's
    responses before any selection of units), or any layer.
    """
    images = np.asarray(images, "float32")
    return np.concatenate([keras.ops.convert_to_numpy(respond(images[i:i + _BATCH]))
                           for i in range(0, len(images), _BATCH)]).astype("float32")


def _correlations(a, b):
    """`[U, V]` Pearson correlations between the columns of `a` and of `b` (NaN when flat)."""
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    norms = np.outer(np.linalg.norm(a, axis=0), np.linalg.norm(b, axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norms > 1e-12, (a.T @ b) / np.maximum(norms, 1e-30), np.nan)


def rotated_families(response_fn, images, angles=FAMILY_ANGLES, max_samples=20000, seed=0):
    """For each unit, the input rotation and other unit that best match its response.

    The images are rotated by each angle; unit i's response maps to the
    rotated images, turned back by the same angle so positions line up,
    are correlated (over images and positions) with every other unit j's
    maps of the upright images. The best (j, angle) is unit i's rotated
    partner: rotating the input by `angle` makes unit i respond where and
    how unit j does. `unrotated_correlation` is the best match to another
    unit without rotating (a near duplicate rather than a rotated copy).

    Args:
        response_fn: images `[N, H, W, C]` -> response maps `[N, h, w, U]`.
        images: `[N, H, W, C]` in [0, 1].
        angles: rotations (degrees, counter-clockwise) to try, 0 excluded.
        max_samples: at most this many (image, position) samples, drawn
            once at random, enter each correlation.
        seed: seeds that draw.

    Returns:
        A dict of `[U]` arrays: `partner`, `angle`, `correlation`,
        `unrotated_correlation` (NaN for units that never respond), and the
        `angles` tried.
    """
    angles = [float(a) for a in angles if float(a) % 360.0 != 0.0]
    if not angles:
        raise ValueError(f"Received: angles={list(angles)}; expected at least one non-zero angle")
    upright = np.asarray(response_fn(images), "float32")
    if upright.ndim != 4:
        raise ValueError(
            f"Received: response maps of shape {upright.shape}; expected [N, h, w, units]"
        )
    units = upright.shape[-1]
    flat = upright.reshape(-1, units)
    rows = np.arange(len(flat))
    if len(rows) > max_samples:
        rows = np.sort(np.random.default_rng(seed).choice(len(flat), max_samples, replace=False))
    base_samples = flat[rows].astype("float64")
    others = ~np.eye(units, dtype=bool)
    best = np.full(units, -np.inf)
    partner = np.full(units, -1)
    angle = np.full(units, np.nan)
    for degrees in angles:
        turned = np.asarray(response_fn(transforms.rotate(images, degrees).numpy()), "float32")
        back = transforms.rotate(turned, -degrees).numpy().reshape(-1, units)[rows]
        corr = np.where(others, _correlations(back.astype("float64"), base_samples), np.nan)
        filled = np.where(np.isnan(corr), -np.inf, corr)
        top = filled.argmax(axis=1)
        value = filled[np.arange(units), top]
        better = value > best
        best[better], partner[better], angle[better] = value[better], top[better], degrees
    unrotated = np.where(others, _correlations(base_samples, base_samples), np.nan)
    unrotated = np.where(np.isnan(unrotated), -np.inf, unrotated).max(axis=1)
    dead = ~np.isfinite(best)
    return {
        "partner": np.where(dead, -1, partner),
        "angle": np.where(dead, np.nan, angle),
        "correlation": np.where(dead, np.nan, best),
        "unrotated_correlation": np.where(np.isfinite(unrotated), unrotated, np.nan),
        "angles": angles,
    }


def family_summary(families, threshold=0.9):
    """Counts of `rotated_families`: units with a rotated partner above `threshold`."""
    correlation = families["correlation"]
    alive = ~np.isnan(correlation)
    rotated = alive & (correlation >= threshold)
    gain = rotated & (correlation > np.nan_to_num(families["unrotated_correlation"], nan=-1.0))
    return {
        "units": int(len(correlation)),
        "responding_units": int(alive.sum()),
        f"rotated_partner_above_{threshold:g}": int(rotated.sum()),
        "rotated_better_than_unrotated": int(gain.sum()),
        "median_best_correlation": float(np.median(correlation[alive])) if alive.any()
        else float("nan"),
    }


def save_families_chart(families, path, title=None):
    """A chart of rotated feature families: each unit's best rotation and correlation."""
    from capskeras.evaluation.plots import plt

    correlation, angle = families["correlation"], families["angle"]
    alive = ~np.isnan(correlation)
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    units = np.arange(len(correlation))
    left.scatter(angle[alive], correlation[alive], s=14, c=units[alive], cmap="viridis")
    for unit in units[alive]:
        if correlation[unit] >= 0.9:
            left.annotate(f"{unit}->{families['partner'][unit]}", (angle[unit], correlation[unit]),
                          fontsize=5, xytext=(2, 2), textcoords="offset points")
    left.set_xlabel("input rotation that best matches another unit (degrees)")
    left.set_ylabel("correlation with that unit")
    left.set_xticks(np.arange(0, 361, 45))
    left.set_ylim(min(0.0, np.nanmin(correlation) if alive.any() else 0.0), 1.02)
    left.grid(True, alpha=0.3)
    order = np.argsort(-np.nan_to_num(correlation, nan=-2.0))
    right.bar(np.arange(alive.sum()), correlation[order][:alive.sum()], color="tab:blue",
              label="best rotated partner")
    right.plot(np.arange(alive.sum()), families["unrotated_correlation"][order][:alive.sum()],
               "k.", markersize=3, label="best unrotated partner")
    right.set_xlabel("units, sorted")
    right.set_ylabel("correlation")
    right.legend(fontsize=7, loc="lower left")
    right.grid(True, axis="y", alpha=0.3)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return path
