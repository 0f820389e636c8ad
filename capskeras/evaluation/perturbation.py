"""What the dimensions of a digit capsule represent: the perturbation figure.

Sabour et al. (2017, Fig. 4) take the winning (longest) digit capsule of an
image, add each of 11 offsets in [-0.25, 0.25] (0.05 apart) to one of its
16 dimensions at a time, and decode every perturbed capsule with the
reconstruction decoder, all other capsules masked to zero. Each row of the
resulting grid shows how the reconstruction changes along one dimension:
stroke thickness, width, skew, localized parts of the digit.

    blocks = perturbation_images(capsnet, images)  # [B, 16, 11, H, W]

Any model whose code is capsules and which decodes it (the contract's
`code_capsules` and `code_decoder()`, `capskeras.models.contract`) draws
the same figure.

The computation is split so each step can be checked on its own:
`winning_capsules` (which capsule wins), `perturbed_decoder_inputs` (pure
NumPy: capsules -> masked, perturbed decoder inputs) and
`perturbation_images` (the model's code and decoder around them).
`tools/perturbation_figure.py` draws the grid.
"""

import keras
import numpy as np

from capskeras import ops as capsule_ops
from capskeras.models.contract import check_supports
from capskeras.models.contract import code_of

# Offsets added to one capsule dimension: -0.25, -0.20, ..., 0.25.
PERTURBATIONS = tuple(round(0.05 * step, 2) for step in range(-5, 6))


def winning_capsules(capsules):
    """The index of the longest capsule of each example.

    Args:
        capsules: `[B, N, D]` digit capsules.

    Returns:
        `[B]` int64 class ids: the capsule the decoder reconstructs from at
        inference (`CapsuleMask` without labels keeps the same one).
    """
    capsules = _check_capsules(capsules)
    return keras.ops.convert_to_numpy(capsule_ops.longest_capsule(capsules)).astype("int64")


def perturbed_decoder_inputs(capsules, perturbations=PERTURBATIONS, class_ids=None):
    """Decoder inputs with one dimension of the winning capsule perturbed.

    The layout matches `CapsuleMask`: capsules flattened capsule-major,
    `out[n * D + d] = capsules[n, d]`, zeros outside the kept capsule.

    Args:
        capsules: `[B, N, D]` digit capsules (N capsules of D dimensions).
        perturbations: the P offsets added to one dimension at a time.
        class_ids: `[B]` capsule to keep for each example; defaults to the
            longest (`winning_capsules`).

    Returns:
        float32 `[B, D, P, N * D]`: entry `[b, d, p]` is example `b`'s
        masked capsules with `perturbations[p]` added to dimension `d` of
        its kept capsule. Where a perturbation is 0 the entry is the
        unperturbed masked input.
    """
    capsules = _check_capsules(capsules)
    perturbations = np.asarray(perturbations, dtype="float32").reshape(-1)
    if perturbations.size == 0:
        raise ValueError(
            f"Received: perturbations={list(perturbations)}; expected at least one offset"
        )
    batch, num_capsules, dim = capsules.shape
    if class_ids is None:
        class_ids = winning_capsules(capsules)
    class_ids = np.asarray(class_ids).reshape(-1)
    if class_ids.shape != (batch,) or np.any((class_ids < 0) | (class_ids >= num_capsules)):
        raise ValueError(
            f"Received: class_ids={class_ids.tolist()}; expected {batch} ints in "
            f"[0, {num_capsules})"
        )
    kept = capsules[np.arange(batch), class_ids]  # [B, D]
    # [B, D, P, D]: the kept capsule with offset p added to dimension d.
    offsets = np.eye(dim, dtype="float32")[None, :, None, :] * perturbations[None, None, :, None]
    poses = kept[:, None, None, :] + offsets
    inputs = np.zeros((batch, dim, len(perturbations), num_capsules, dim), "float32")
    inputs[np.arange(batch), :, :, class_ids] = poses
    return inputs.reshape(batch, dim, len(perturbations), num_capsules * dim)


def perturbation_images(model, images, perturbations=PERTURBATIONS, class_ids=None):
    """Reconstructions of `images` with each winning-capsule dimension perturbed.

    Args:
        model: a model whose code is capsules and which decodes it: the
            contract's `code`, `code_capsules` (`(N, D)`) and
            `code_decoder()` (`capskeras.models.contract`), as CapsNet has.
        images: `[B, H, W, C]` float images in [0, 1].
        perturbations: the P offsets added to one dimension at a time.
        class_ids: `[B]` capsule to keep for each example; defaults to the
            longest.

    Returns:
        A dict:
        - `"images"`: float32 `[B, D, P, H, W]` decoded images (first
          channel), row `d` perturbing dimension `d`;
        - `"class_ids"`: `[B]` the capsule kept for each example;
        - `"capsules"`: `[B, N, D]` the code's capsules.

    Example:

    >>> model = capskeras.tasks.build_model("capsnet")
    >>> out = perturbation_images(model, np.zeros((2, 28, 28, 1), "float32"))
    >>> out["images"].shape
    (2, 16, 11, 28, 28)

    Reference:
        Sabour, Frosst and Hinton, "Dynamic Routing Between Capsules",
        NeurIPS 2017, section 5.1 and Fig. 4.
    """
    check_supports(model, "code_capsules", "code_decoder",
                   purpose="The perturbation figure (a capsule code and its decoder)")
    count, dim = model.code_capsules
    decode = model.code_decoder()
    codes = keras.ops.convert_to_numpy(
        code_of(model, keras.ops.convert_to_tensor(np.asarray(images, "float32"))))
    capsules = codes.reshape(-1, count, dim)
    if class_ids is None:
        class_ids = winning_capsules(capsules)
    inputs = perturbed_decoder_inputs(capsules, perturbations, class_ids)
    batch, dim, steps, width = inputs.shape
    decoded = keras.ops.convert_to_numpy(decode(inputs.reshape(batch * dim * steps, width)))
    height, image_width = decoded.shape[1], decoded.shape[2]
    return {
        "images": decoded[..., 0].reshape(batch, dim, steps, height, image_width),
        "class_ids": np.asarray(class_ids, "int64").reshape(-1),
        "capsules": capsules,
    }


def _check_capsules(capsules):
    capsules = np.asarray(capsules, dtype="float32")
    if capsules.ndim != 3:
        raise ValueError(
            f"Received: capsules of shape {capsules.shape}; expected [B, N, D]"
        )
    return capsules
