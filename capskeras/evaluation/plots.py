"""Figures written by the evaluation tools."""

import matplotlib

matplotlib.use("Agg")  # Files only; no display is assumed.
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def save_rotation_sweep_plot(sweeps, path, mark_angle=35.0, title=None, published=None):
    """Saves accuracy against rotation angle, one line per model.

    Args:
        sweeps: `{model name: {angle in degrees: accuracy in [0, 1]}}`, as
            `capskeras.evaluation.generalization.rotation_sweep` returns
            per model.
        path: the PNG file to write.
        mark_angle: an angle to mark with a dashed vertical line (35
            degrees by default); `None` for none.
        title: optional figure title.
        published: optional `{label: (angle in degrees, accuracy in [0, 1])}`,
            published points drawn as open markers with their labels.

    Returns:
        `path`.
    """
    if not sweeps:
        raise ValueError("Received: sweeps={}; expected at least one model's sweep")
    figure, axis = plt.subplots(figsize=(7.0, 4.2))
    all_angles = []
    for name, sweep in sweeps.items():
        angles = sorted(float(angle) for angle in sweep)
        by_angle = {float(angle): value for angle, value in sweep.items()}
        all_angles.extend(angles)
        axis.plot(
            angles, [100.0 * by_angle[angle] for angle in angles],
            marker="o", markersize=3, linewidth=1.5, label=name,
        )
    for label, (angle, value) in (published or {}).items():
        axis.plot([angle], [100.0 * value], marker="D", markersize=6, linestyle="none",
                  markerfacecolor="none", label=f"published: {label}")
        all_angles.append(float(angle))
    low, high = min(all_angles), max(all_angles)
    if mark_angle is not None:
        axis.axvline(mark_angle, color="gray", linestyle="--", linewidth=1)
        axis.annotate(
            f"{mark_angle:g}°", xy=(mark_angle, 1.0), xycoords=("data", "axes fraction"),
            xytext=(3, -12), textcoords="offset points", color="gray", fontsize=8,
        )
        low, high = min(low, mark_angle), max(high, mark_angle)
    span = high - low
    if span >= 90:
        axis.set_xticks(np.arange(np.ceil(low / 30) * 30, high + 1e-9, 30))
    axis.set_xlim(low - 0.02 * span - 1e-3, high + 0.02 * span + 1e-3)
    axis.set_ylim(0, 100)
    axis.set_xlabel("rotation (degrees, counter-clockwise)")
    axis.set_ylabel("test accuracy (%)")
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=8, loc="best")
    return _save_accuracy_axes(figure, axis, path, title)


def save_perturbation_grid(blocks, path, perturbations, titles=None, title=None,
                           row_labels=None):
    """Saves capsule-dimension perturbation grids, one block per digit.

    Each block has one row per capsule dimension and one column per
    perturbation, as in Sabour et al. (2017), Fig. 4.

    Args:
        blocks: `[B, D, P, H, W]` images in [0, 1]: for each of B digits,
            the reconstruction with perturbation `p` added to dimension `d`
            (see `capskeras.evaluation.perturbation.perturbation_images`).
        path: the PNG file to write.
        perturbations: the P offsets, to label the columns.
        titles: optional B block titles (e.g. the digit and its capsule).
        title: optional figure title.
        row_labels: optional `[B][D]` labels of each block's rows; "dim 1"
            ... "dim D" on the first block by default.

    Returns:
        `path`.
    """
    blocks = np.asarray(blocks)
    if blocks.ndim != 5 or blocks.shape[2] != len(perturbations):
        raise ValueError(
            f"Received: blocks of shape {blocks.shape} and {len(perturbations)} "
            "perturbations; expected [B, D, P, H, W] with P the number of perturbations"
        )
    count, dims, steps, height, width = blocks.shape
    if titles is not None and len(titles) != count:
        raise ValueError(
            f"Received: {len(titles)} titles for {count} blocks; expected one per block"
        )
    cell = 0.3  # inches per image
    figure, axes = plt.subplots(
        1, count, squeeze=False, layout="constrained",
        figsize=(count * (steps * cell + 0.3) + 0.5, dims * cell + 1.1),
    )
    for index in range(count):
        # [D, P, H, W] -> one [D * H, P * W] mosaic.
        mosaic = blocks[index].transpose(0, 2, 1, 3).reshape(dims * height, steps * width)
        axis = axes[0, index]
        axis.imshow(mosaic, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        axis.set_xticks((np.arange(steps) + 0.5) * width - 0.5)
        axis.set_xticklabels([f"{value:+.2f}" for value in perturbations], rotation=90,
                             fontsize=6)
        axis.set_yticks((np.arange(dims) + 0.5) * height - 0.5)
        if row_labels is not None:
            labels = list(row_labels[index])
        else:
            labels = [f"dim {d + 1}" for d in range(dims)] if index == 0 else []
        axis.set_yticklabels(labels, fontsize=6)
        axis.tick_params(length=0)
        if titles is not None:
            axis.set_title(titles[index], fontsize=8)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def save_accuracy_bars(accuracies, path, anchors=None, title=None):
    """Saves grouped bars: test accuracy per dataset, one bar per model.

    Args:
        accuracies: `{model name: {dataset: accuracy in [0, 1]}}`; datasets
            a model was not evaluated on are simply absent.
        path: the PNG file to write.
        anchors: optional `{(label, dataset): accuracy in [0, 1]}`,
            published figures drawn as labelled dashed marks over their
            dataset's group.
        title: optional figure title.

    Returns:
        `path`.
    """
    datasets = list(dict.fromkeys(d for values in accuracies.values() for d in values))
    if not datasets:
        raise ValueError("Received: no accuracies; expected at least one model's results")
    models = list(accuracies)
    width = 0.8 / len(models)
    figure, axis = plt.subplots(figsize=(max(5.0, 1.6 * len(datasets) + 2.0), 4.2))
    for index, model in enumerate(models):
        positions = [d + (index - (len(models) - 1) / 2) * width
                     for d, name in enumerate(datasets) if name in accuracies[model]]
        values = [100 * accuracies[model][name] for name in datasets if name in accuracies[model]]
        axis.bar(positions, values, width=width * 0.95, label=model)
    for (label, dataset), value in (anchors or {}).items():
        if dataset not in datasets:
            continue
        centre = datasets.index(dataset)
        axis.hlines(100 * value, centre - 0.45, centre + 0.45, colors="black",
                    linestyles="--", linewidth=1)
        axis.annotate(label.split(",")[0], xy=(centre + 0.45, 100 * value), fontsize=6,
                      xytext=(2, -2), textcoords="offset points")
    axis.set_xticks(range(len(datasets)))
    axis.set_xticklabels(datasets)
    axis.set_ylim(0, 100)
    axis.set_ylabel("test accuracy (%)")
    axis.grid(True, axis="y", alpha=0.3)
    axis.legend(fontsize=7, loc="lower left")
    return _save_accuracy_axes(figure, axis, path, title)


def save_accuracy_curve(curves, path, published=None, published_levels=None, x_label=None,
                        y_label=None, title=None):
    """Saves one accuracy against another, one line per model, a marker per epoch.

    Args:
        curves: `{model name: [(x accuracy, y accuracy, epoch), ...]}`,
            accuracies in [0, 1], in epoch order.
        path: the PNG file to write.
        published: optional `{label: (x accuracy, y accuracy)}`, published
            points drawn as open diamonds with their labels.
        published_levels: optional `{label: y accuracy}`, published figures
            with no x, drawn as dashed horizontal lines.
        x_label, y_label: the axes' labels.
        title: optional figure title.

    Returns:
        `path`.
    """
    if not any(curves.values()):
        raise ValueError("Received: no points in curves; expected at least one model's epochs")
    figure, axis = plt.subplots(figsize=(7.0, 5.0))
    xs, ys = [], []
    for name, points in curves.items():
        if not points:
            continue
        x, y, epochs = (list(values) for values in zip(*points))
        xs.extend(x)
        ys.extend(y)
        (line,) = axis.plot([100 * v for v in x], [100 * v for v in y], marker="o",
                            markersize=3, linewidth=1.2, label=name)
        for index in {0, len(epochs) - 1}:
            axis.annotate(f"{epochs[index]}", xy=(100 * x[index], 100 * y[index]), fontsize=7,
                          xytext=(3, 3), textcoords="offset points", color=line.get_color())
    for label, (x, y) in (published or {}).items():
        axis.plot([100 * x], [100 * y], marker="D", markersize=7, linestyle="none",
                  markerfacecolor="none", label=f"published: {label}")
        xs.append(x)
        ys.append(y)
    for label, y in (published_levels or {}).items():
        axis.axhline(100 * y, color="gray", linestyle="--", linewidth=1)
        axis.annotate(f"published: {label}", xy=(0.0, 100 * y), xycoords=("axes fraction", "data"),
                      xytext=(3, 3), textcoords="offset points", color="gray", fontsize=7)
        ys.append(y)
    low, high = 100 * min(xs), 100 * max(xs)
    margin = max(0.05 * (high - low), 0.1)
    axis.set_xlim(low - margin, min(100.0, high + margin) + 0.05)
    axis.set_ylim(max(0.0, 100 * min(ys) - 5), min(100.0, 100 * max(ys) + 5))
    axis.set_xlabel(x_label or "x accuracy (%)")
    axis.set_ylabel(y_label or "y accuracy (%)")
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=7, loc="best")
    return _save_accuracy_axes(figure, axis, path, title)


def _save_accuracy_axes(figure, axis, path, title):
    """Titles, saves and closes an accuracy figure; returns `path`."""
    if title:
        axis.set_title(title, fontsize=10)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return path
