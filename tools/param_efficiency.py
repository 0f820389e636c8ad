"""Parameter efficiency of group-equivariant models, in the Circuits study's terms.

For a model, reports its parameter count against the ordinary CNN of the
same width (the same number of feature maps in every layer: each
`GroupConv2D` replaced by the `Conv2D` with its expanded kernel, each
`GroupBatchNormalization` by a `BatchNormalization` over all its maps; this
is exactly the model's `serving_model()`), layer by layer, next
to the formula `1 - (K - 1) / K * r^2` for the fraction of parameters a
network needs when a fraction `r` of its units come in orbits of `K`
transformed copies (weights between two equivariant units are tied
`K`-fold, the rest are free).

    python tools/param_efficiency.py --model=p4cnn,p4mcnn,z2cnn
    python tools/param_efficiency.py --model=runs/p4cnn/model.keras --json=out.json

Reference:
    Olah, Cammarata, Voss, Schubert and Goh, "Naturally Occurring
    Equivariance in Neural Networks", Distill 2020 (the r^2 formula);
    Cohen and Welling, "Group Equivariant Convolutional Networks", ICML 2016.
"""

import json
import math
import sys

from absl import app
from absl import flags
import keras

from capskeras import cli
from capskeras.layers import GroupBatchNormalization
from capskeras.layers import GroupConv2D
from capskeras.models import build_p4cnn
from capskeras.models import build_z2cnn

FLAGS = flags.FLAGS
BUILDERS = {
    "p4cnn": lambda: build_p4cnn(seed=0),
    "p4mcnn": lambda: build_p4cnn(seed=0, group="p4m"),
    "z2cnn": lambda: build_z2cnn(seed=0),
}


def formula(group_order, r):
    """Fraction of a plain network's parameters needed: `1 - (K - 1) / K * r^2`."""
    return 1.0 - (group_order - 1) / group_order * r * r


def _layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _layers(layer)
        else:
            yield layer


def _size(layer):
    return sum(math.prod(weight.shape) for weight in layer.weights)


def efficiency(model, name=None):
    """Per-layer and total parameters of `model` against the plain CNN of the same width.

    Returns:
        A dict: `layers` (name, type, params, plain_params), `params`,
        `plain_params`, `ratio`, `group_order` (K, None without group
        layers), `r` (the fraction of convolution output maps that belong
        to group layers) and `formula` (at that K and r).
    """
    folded = model.serving_model()
    plain_layers = {layer.name: layer for layer in _layers(folded)}
    rows = []
    orders = set()
    group_maps = plain_maps = 0
    for layer in _layers(model):
        params = _size(layer)
        plain = _size(plain_layers[layer.name])
        if isinstance(layer, (GroupConv2D, GroupBatchNormalization)):
            orders.add(layer.group_order)
        if isinstance(layer, GroupConv2D):
            group_maps += layer.filters * layer.group_order
        elif isinstance(layer, keras.layers.Conv2D):
            plain_maps += layer.filters
        if params or plain:
            rows.append({"layer": layer.name, "type": type(layer).__name__,
                         "params": params, "plain_params": plain})
    if len(orders) > 1:
        raise ValueError(f"Received: a model mixing group orders {sorted(orders)}; expected one")
    order = orders.pop() if orders else None
    r = group_maps / (group_maps + plain_maps) if group_maps + plain_maps else 0.0
    params, plain_params = model.count_params(), folded.count_params()
    return {
        "model": name or model.name,
        "layers": rows,
        "params": params,
        "plain_params": plain_params,
        "ratio": params / plain_params,
        "group_order": order,
        "r": r,
        "formula": formula(order, r) if order else 1.0,
    }


def markdown(report):
    lines = [f"### {report['model']}", "",
             "| layer | type | params | plain CNN, same width | ratio |",
             "|---|---|---:|---:|---:|"]
    for row in report["layers"]:
        lines.append(f"| {row['layer']} | {row['type']} | {row['params']:,} | "
                     f"{row['plain_params']:,} | {row['params'] / row['plain_params']:.3f} |")
    lines.append(f"| **total** | | **{report['params']:,}** | **{report['plain_params']:,}** | "
                 f"**{report['ratio']:.3f}** |")
    k = report["group_order"]
    if k is None:
        return "\n".join(lines + ["", "No group layers: r = 0, the plain CNN itself."])
    lines += ["", f"K = {k}, r = {report['r']:.2f}: formula 1 - (K-1)/K r^2 = "
              f"{report['formula']:.3f}; measured {report['ratio']:.3f} (the dense softmax "
              "layer on the invariant features is shared by both)."]
    return "\n".join(lines)


def _load(spec):
    if spec in BUILDERS:
        return BUILDERS[spec]()
    if not spec.endswith(".keras"):
        raise ValueError(
            f"Received: model={spec!r}; expected one of {sorted(BUILDERS)} or a .keras file")
    return keras.saving.load_model(spec, safe_mode=True)


def define_flags(flag_values):
    """Defines the tool's flags on `flag_values`."""
    flags.DEFINE_list("model", ["p4cnn", "p4mcnn", "z2cnn"],
                      f"Comma-separated models: any of {sorted(BUILDERS)}, or .keras files.",
                      flag_values=flag_values)
    flags.DEFINE_string("json", None, "Also write the reports here.", flag_values=flag_values)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Received unexpected arguments {argv[1:]}; expected flags only")
    try:
        reports = [efficiency(_load(spec), spec) for spec in FLAGS.model]
    except (ValueError, OSError) as error:
        print(f"param_efficiency.py: error: {error}", file=sys.stderr)
        sys.exit(2)
    for report in reports:
        print(markdown(report) + "\n")
    table = ["| r | " + " | ".join(f"K={k}" for k in (4, 8, 16)) + " |", "|---|---|---|---|"]
    for r in (0.0, 0.25, 0.5, 0.75, 1.0):
        table.append(f"| {r:.2f} | " + " | ".join(f"{formula(k, r):.3f}" for k in (4, 8, 16))
                     + " |")
    print("Formula 1 - (K-1)/K r^2:\n\n" + "\n".join(table))
    if FLAGS.json:
        with open(FLAGS.json, "w") as handle:
            json.dump(reports, handle, indent=2)


if __name__ == "__main__":
    cli.run_command("param_efficiency.py", define_flags, main)
