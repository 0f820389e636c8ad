"""The trainer's figure: test digits beside their reconstructions."""

import matplotlib

matplotlib.use("Agg")  # Files only; no display is assumed.
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def save_reconstruction_grid(images, reconstructions, path, title=None):
    """Saves test digits (top row) above their reconstructions (bottom row).

    Args:
        images: `[N, H, W, 1]` array in [0, 1].
        reconstructions: array of the same shape.
        path: the PNG file to write.
        title: optional figure title.
    """
    images = np.asarray(images)
    reconstructions = np.asarray(reconstructions)
    if images.shape != reconstructions.shape:
        raise ValueError(
            f"Received: images of shape {images.shape} and reconstructions of "
            f"shape {reconstructions.shape}; expected equal shapes"
        )
    count = len(images)
    figure, axes = plt.subplots(2, count, figsize=(count * 0.9, 2.2), squeeze=False)
    for column in range(count):
        for row, batch in enumerate((images, reconstructions)):
            axis = axes[row, column]
            axis.imshow(batch[column, :, :, 0], cmap="gray", vmin=0.0, vmax=1.0)
            axis.set_xticks([])
            axis.set_yticks([])
    axes[0, 0].set_ylabel("input", fontsize=8)
    axes[1, 0].set_ylabel("output", fontsize=8)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)
    return path
