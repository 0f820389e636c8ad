"""The equivariance report: perturbation grids, judged plausibility, code maps.

    python tools/train_judge.py --output_dir=runs/judge          # once
    python tools/equivariance_report.py \\
        --models=runs/enc_untrained_dec_recon,runs/enc_deep_bp_dec_recon,runs/enc_ksparse_dec_recon \\
        --judge=runs/judge --output_dir=runs/equivariance

For every model directory (holding `model.keras`; a study model, CapsNet or
any capskeras model) it measures, on MNIST test digits padded to the
model's canvas (see `capskeras.evaluation.equivariance`):

- with a reconstruction decoder: perturbation sweeps of the `--rows` most
  active code elements (CapsNet: the winning capsule's 16 dimensions) of
  `--sweep_digits` digits across `--scales` (default -2.5 ... 2.5)
  standard deviations of the element, the
  judge's verdict on every decoding (confident-digit fraction, entropy,
  per scale), and the sweeps' smoothness; a PNG grid of the first
  `--grid_digits` digits, as in the study's figures;
- for every model: linear equivariance and invariance of the code under
  rotation by 15 degrees, shear 0.2, scale 1.2 and a 2-pixel translation,
  fitted and tested on `--pairs` digits (half each);
- for a model whose first layer is a convolution: its rotated feature
  families over `--family_digits` digits, drawn as a chart.

It writes `<model>_equivariance.json`, the PNGs and `equivariance.md` (the
tables, linked to the PNGs) into `--output_dir` and prints the tables.
Without a judge (`--judge=` empty or missing) the plausibility columns
are left out and the report says so.
"""

import json
import os
import re
import sys

from absl import app
from absl import flags
import numpy as np

from capskeras import cli
from capskeras.data import mnist
from capskeras.evaluation import equivariance
from capskeras.evaluation import judge as judge_lib
from capskeras.evaluation import plots
from capskeras.files import write_text_atomically

FLAGS = flags.FLAGS


def define_flags(flag_values):
    """Defines the tool's flags on `flag_values`."""
    flags.DEFINE_list("models", [], "Model directories holding model.keras (or .keras files).",
                      flag_values=flag_values)
    flags.DEFINE_list("names", [], "Display names, one per model; default the directory names.",
                      flag_values=flag_values)
    flags.DEFINE_string("judge", "runs/judge", "The judge (tools/train_judge.py's output_dir); "
                        "empty to skip plausibility.", flag_values=flag_values)
    flags.DEFINE_string("output_dir", "runs/equivariance", "Where the report and PNGs go.",
                        flag_values=flag_values)
    flags.DEFINE_integer("grid_digits", 3, "Digits drawn in each perturbation grid.",
                         flag_values=flag_values)
    flags.DEFINE_integer("sweep_digits", 100, "Digits whose sweeps the judge scores.",
                         flag_values=flag_values)
    flags.DEFINE_integer("rows", 8, "Code elements perturbed per digit (capsules: all 16).",
                         flag_values=flag_values)
    flags.DEFINE_list("scales", [str(s) for s in equivariance.SCALES],
                      "Perturbation offsets, in standard deviations of the perturbed element.",
                      flag_values=flag_values)
    flags.DEFINE_integer("pairs", 2000,
                         "Digits for the transformation maps (half fit, half test).",
                         flag_values=flag_values)
    flags.DEFINE_integer("family_digits", 500, "Digits for the rotated feature families.",
                         flag_values=flag_values)
    flags.DEFINE_string("data_dir", "", "Prepared TFDS directory; empty for $TFDS_DATA_DIR.",
                        flag_values=flag_values)

REPORT_FILE = "equivariance.md"


def test_digits(count, image_shape, data_dir=None, offset=0):
    """MNIST test digits `offset ... offset + count`, padded to `image_shape`."""
    pad_to = image_shape[0] if image_shape[0] != mnist.IMAGE_SHAPE[0] else None
    batches = mnist.load_mnist("test", batch_size=1000, num_examples=offset + count,
                               data_dir=data_dir, pad_to=pad_to)
    images = np.concatenate([np.asarray(x) for x, _ in batches])
    return images[offset:offset + count]


def _slug(name):
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "model"


def evaluate_model(code_model, judge, output_dir, settings, data_dir=None):
    """Every measurement for one model; writes its PNGs and returns its results."""
    slug = _slug(code_model.name)
    result = {"name": code_model.name, "path": os.path.abspath(code_model.path),
              "image_shape": list(code_model.image_shape), "figures": {}}
    # Sweeps and grids on the first digits; maps and families on the next ones.
    if code_model.decode is not None:
        digits = test_digits(settings["sweep_digits"], code_model.image_shape, data_dir)
        reference = code_model.encode(test_digits(1000, code_model.image_shape, data_dir,
                                                  offset=settings["sweep_digits"]))
        sweeps = equivariance.perturbation_sweeps(
            code_model, digits, scales=settings["scales"], rows=settings["rows"],
            spread=equivariance.element_spread(reference))
        grid = sweeps["images"][:settings["grid_digits"]]
        path = os.path.join(output_dir, f"{slug}_perturbations.png")
        plots.save_perturbation_grid(
            grid, path, [float(s) for s in sweeps["scales"]],
            titles=[f"test digit {i}" for i in range(len(grid))],
            title=f"{code_model.name}: one code element at a time, {min(settings['scales']):g} to "
                  f"{max(settings['scales']):+g} std",
            row_labels=[[f"elem {e}" for e in row] for row in sweeps["elements"][:len(grid)]],
        )
        result["figures"]["perturbations"] = os.path.basename(path)
        if judge is not None:
            result["sweeps"] = equivariance.sweep_metrics(sweeps["images"], judge, sweeps["scales"])
        else:
            steps = np.diff(sweeps["images"], axis=2)
            result["sweeps"] = {"pixel_change_per_step": float(np.mean(np.abs(steps)))}
    start = settings["sweep_digits"] + 1000
    pairs = test_digits(settings["pairs"], code_model.image_shape, data_dir, offset=start)
    result["transforms"] = equivariance.equivariance_table(code_model, pairs)
    if code_model.feature_responses is not None:
        images = test_digits(settings["family_digits"], code_model.image_shape, data_dir,
                             offset=start)
        respond = code_model.feature_responses
        families = equivariance.rotated_families(
            lambda x: equivariance.response_maps(respond, x), images)
        path = os.path.join(output_dir, f"{slug}_families.png")
        equivariance.save_families_chart(
            families, path, title=f"{code_model.name}: rotated feature families of its "
                                  f"first layer ({families['partner'].size} units)")
        result["figures"]["families"] = os.path.basename(path)
        result["families"] = equivariance.family_summary(families)
        result["families"]["per_unit"] = {
            key: [None if isinstance(v, float) and np.isnan(v) else v
                  for v in np.asarray(families[key]).tolist()]
            for key in ("partner", "angle", "correlation", "unrotated_correlation")}
    write_text_atomically(os.path.join(output_dir, f"{slug}_equivariance.json"),
                          json.dumps(result, indent=2) + "\n")
    return result


def format_tables(results, judged):
    """The report's Markdown tables."""
    lines = []
    swept = [r for r in results if "sweeps" in r]
    if swept and judged:
        lines += ["## Perturbed decodings, judged", "",
                  "| model | confident digit % | mean entropy (nats) | judged class kept % | "
                  "pixel change / step | class change rate | sweeps changing class % |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for r in swept:
            s = r["sweeps"]
            lines.append(
                f"| {r['name']} | {100 * s['confident_fraction']:.1f} | {s['mean_entropy']:.3f} | "
                f"{100 * s.get('class_kept', float('nan')):.1f} | "
                f"{s['pixel_change_per_step']:.4f} | {s['class_change_rate']:.3f} | "
                f"{100 * s['sweeps_changing_class']:.1f} |")
        scales = list(swept[0]["sweeps"]["by_scale"])
        lines += ["", "Confident-digit % by perturbation scale (standard deviations):", "",
                  "| model | " + " | ".join(scales) + " |",
                  "|---|" + "---:|" * len(scales)]
        for r in swept:
            lines.append(f"| {r['name']} | " + " | ".join(
                f"{100 * r['sweeps']['by_scale'][k]['confident_fraction']:.1f}" for k in scales)
                + " |")
        lines += ["", "Mean judge entropy by scale:", "",
                  "| model | " + " | ".join(scales) + " |",
                  "|---|" + "---:|" * len(scales)]
        for r in swept:
            lines.append(f"| {r['name']} | " + " | ".join(
                f"{r['sweeps']['by_scale'][k]['mean_entropy']:.3f}" for k in scales) + " |")
        lines.append("")
    elif swept:
        lines += ["## Perturbed decodings", "", "No judge: plausibility not measured.", "",
                  "| model | pixel change / step |", "|---|---:|"]
        lines += [f"| {r['name']} | {r['sweeps']['pixel_change_per_step']:.4f} |" for r in swept]
        lines.append("")
    names = list(results[0]["transforms"]) if results else []
    lines += ["## Code under input transformations: equivariance / invariance", "",
              "Held-out R² of a linear map code(x) -> code(T x) / invariance "
              "(1 - E|code(Tx) - code(x)|² / (Var + Var)).", "",
              "| model | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for r in results:
        lines.append(f"| {r['name']} | " + " | ".join(
            f"{r['transforms'][n]['equivariance']:.3f} / {r['transforms'][n].get('invariance', float('nan')):.3f}"
            for n in names) + " |")
    with_families = [r for r in results if "families" in r]
    if with_families:
        lines += ["", "## Rotated feature families (first layer)", "",
                  "| model | units | responding | rotated partner ≥ 0.9 | rotated better than "
                  "unrotated | median best correlation |",
                  "|---|---:|---:|---:|---:|---:|"]
        for r in with_families:
            f = r["families"]
            lines.append(f"| {r['name']} | {f['units']} | {f['responding_units']} | "
                         f"{f['rotated_partner_above_0.9']} | {f['rotated_better_than_unrotated']} | "
                         f"{f['median_best_correlation']:.3f} |")
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Received unexpected arguments {argv[1:]}; expected flags only")
    try:
        paths = [p for p in FLAGS.models if p.strip()]
        if not paths:
            raise ValueError("Received: models=[]; expected one or more model directories")
        if FLAGS.names and len(FLAGS.names) != len(paths):
            raise ValueError(f"Received: names={FLAGS.names} for {len(paths)} models; expected "
                             "one name per model or none")
        for flag in ("grid_digits", "sweep_digits", "rows", "pairs", "family_digits"):
            if getattr(FLAGS, flag) < 1:
                raise ValueError(f"Received: {flag}={getattr(FLAGS, flag)}; expected an int >= 1")
        try:
            scales = sorted(float(s) for s in FLAGS.scales)
        except ValueError:
            scales = []
        if not scales:
            raise ValueError(f"Received: scales={FLAGS.scales}; expected numbers, e.g. -2,-1,0,1,2")
        if FLAGS.pairs < 4:
            raise ValueError(f"Received: pairs={FLAGS.pairs}; expected an int >= 4")
        models = [equivariance.load_code_model(p, FLAGS.names[i] if FLAGS.names else None)
                  for i, p in enumerate(paths)]
        judge = None
        if FLAGS.judge and os.path.exists(FLAGS.judge):
            judge = judge_lib.load_judge(FLAGS.judge)
        elif FLAGS.judge:
            print(f"equivariance_report: no judge at {FLAGS.judge!r} (python tools/train_judge.py "
                  f"--output_dir={FLAGS.judge}); plausibility is left out", file=sys.stderr)
    except (ValueError, OSError) as error:
        print(f"equivariance_report: error: {error}", file=sys.stderr)
        sys.exit(2)
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    settings = {key: getattr(FLAGS, key) for key in
                ("grid_digits", "sweep_digits", "rows", "pairs", "family_digits")}
    settings["scales"] = scales
    results = [evaluate_model(model, judge, FLAGS.output_dir, settings, FLAGS.data_dir or None)
               for model in models]
    tables = format_tables(results, judge is not None)
    judge_line = "no judge"
    if judge is not None:
        recipe = os.path.join(FLAGS.judge, judge_lib.RECIPE_FILE)
        accuracy = ""
        if os.path.isfile(recipe):
            with open(recipe) as file:
                accuracy = f", MNIST test accuracy {100 * json.load(file)['mnist_test_accuracy']:.2f}%"
        judge_line = f"judge `{FLAGS.judge}`{accuracy}; confident = top probability >= {judge_lib.CONFIDENT}"
    figures = []
    for r in results:
        for kind, file in r["figures"].items():
            figures += ["", f"{r['name']}, {kind}:", "", f"![{r['name']} {kind}]({file})"]
    report = "\n".join([
        "# Equivariance report", "",
        f"MNIST test digits; {settings['sweep_digits']} digits x {settings['rows']} code elements "
        f"(capsules: 16 dimensions) x {len(scales)} scales per model for the sweeps, "
        f"{settings['pairs']} digits for the maps, {settings['family_digits']} for the families; "
        f"{judge_line}.", "", tables, "", "## Figures"] + figures) + "\n"
    write_text_atomically(os.path.join(FLAGS.output_dir, REPORT_FILE), report)
    print(tables)
    print(f"Wrote {os.path.join(FLAGS.output_dir, REPORT_FILE)}")


if __name__ == "__main__":
    cli.run_command("equivariance_report.py", define_flags, main)
