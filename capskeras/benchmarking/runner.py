"""One benchmark run: N workloads timed in turns, their FLOPs and this machine's peak."""

import statistics

from capskeras.benchmarking import flops as flop_counting
from capskeras.benchmarking import machine
from capskeras.benchmarking.workloads import synthetic_batch
from capskeras.settings import dtype_policy

# A training step costs this many forward passes (forward + backward).
TRAIN_FLOPS_FACTOR = 3
TRAIN_FLOPS_ASSUMPTION = (
    "train FLOPs = 3 x forward FLOPs per image (backward ~ 2 x forward); "
    "frozen encoders skip their backward pass, so for them this overstates the work: "
    "see train_flops_per_image_counted"
)


def benchmark(workloads, repeats=5, steps=10, warmup_steps=3, matmul_sizes=(1024, 2048),
              seed=0):
    """Times every workload's train and predict steps in turns; returns the report.

    After `warmup_steps` untimed steps, each of `repeats` repeats times
    `steps` calls of every model's compiled train step
    (`model.train_on_batch`) and predict step (`model.predict_on_batch`),
    call by call in turns, so a load that comes and goes on a shared machine
    slows them alike and their ratios are fair even when the absolute
    figures are not. Then counts each model's FLOPs and measures this
    machine's float32 matmul peak.

    Args:
        workloads: `{name: Workload}`, in report order; the first is the
            reference of the ratios.
        repeats: timed repeats; throughputs are their medians.
        steps: steps per repeat.
        warmup_steps: untimed steps before the first repeat (tracing, compiling).
        matmul_sizes: square matmul sizes tried for the peak.
        seed: seeds the synthetic batches.

    Returns:
        A dict: `models`, `{name: per-model report}` (throughputs, FLOPs
        per image forward, 3x forward and counted for training, the GFLOP/s
        achieved and their fractions of the matmul peak); `ratios`, `{name:
        throughput over the first model's}` for train and inference (with
        per-repeat values) when there are two or more; and the machine's
        facts (`machine.machine_facts`), its matmul peak and this process's
        peak resident memory.

    Example:

    ```python
    report = benchmark({"conv_stack": registered_workload("capsnet_conv_stack")})
    report["models"]["conv_stack"]["train_fraction_of_peak"]
    ```
    """
    if not workloads:
        raise ValueError("Received: workloads={}; expected at least one workload")
    batches = {name: synthetic_batch(workload, seed) for name, workload in workloads.items()}
    step_functions = {}
    for name, workload in workloads.items():
        model, (inputs, targets) = workload.model, batches[name]
        step_functions[(name, "train")] = (
            lambda m=model, x=inputs, y=targets: m.train_on_batch(x, y))
        step_functions[(name, "infer")] = lambda m=model, x=inputs: m.predict_on_batch(x)
    timings = machine.time_steps(step_functions, steps, repeats, warmup_steps)
    counts = {}
    for name, workload in workloads.items():
        inputs, targets = batches[name]
        with dtype_policy(workload.precision):
            counts[name] = (flop_counting.forward_flops(workload.model, inputs),
                            flop_counting.train_flops(workload.model, inputs, targets))
    peak, peak_size = machine.matmul_peak_gflops(matmul_sizes)
    reports = {
        name: _model_report(workload, *counts[name], timings[(name, "train")],
                            timings[(name, "infer")], steps, peak)
        for name, workload in workloads.items()
    }
    result = {"models": reports}
    if len(reports) > 1:
        result["ratios"] = _ratios(reports)
    result.update(machine.machine_facts())
    result.update({
        "matmul_peak_gflops": round(peak, 1),
        "matmul_peak_size": peak_size,
        "peak_rss_mib": machine.peak_rss_mib(),
        "peak_rss_note": "of this process, which held every model",
        "repeats": repeats,
        "steps": steps,
        "warmup_steps": warmup_steps,
    })
    return result


def _model_report(workload, forward, train, train_timing, infer_timing, steps, peak):
    (train_seconds, train_cores), (infer_seconds, infer_cores) = train_timing, infer_timing
    images_per_repeat = workload.batch_size * steps
    train_rates = [images_per_repeat / s for s in train_seconds]
    infer_rates = [images_per_repeat / s for s in infer_seconds]
    train_rate, infer_rate = statistics.median(train_rates), statistics.median(infer_rates)
    train_gflops = TRAIN_FLOPS_FACTOR * forward.total * train_rate / 1e9
    infer_gflops = forward.total * infer_rate / 1e9
    return {
        "batch_size": workload.batch_size,
        "train_images_per_s": round(train_rate, 1),
        "infer_images_per_s": round(infer_rate, 1),
        "params": int(workload.model.count_params()),
        "forward_flops_per_image": forward.total,
        "forward_flops_by_op_type": forward.by_op_type,
        "flops_uncounted_ops": forward.uncounted_ops,
        "flops_uncounted_output_elements": forward.uncounted_elements,
        "train_flops_per_image": TRAIN_FLOPS_FACTOR * forward.total,
        "train_flops_assumption": TRAIN_FLOPS_ASSUMPTION,
        "train_flops_per_image_counted": train.total,
        "train_flops_by_op_type": train.by_op_type,
        "train_flops_uncounted_ops": train.uncounted_ops,
        "achieved_train_gflops": round(train_gflops, 2),
        "achieved_infer_gflops": round(infer_gflops, 2),
        "achieved_train_gflops_counted": round(train.total * train_rate / 1e9, 2),
        "train_fraction_of_peak": round(train_gflops / peak, 3),
        "infer_fraction_of_peak": round(infer_gflops / peak, 3),
        "train_images_per_s_repeats": [round(r, 1) for r in train_rates],
        "infer_images_per_s_repeats": [round(r, 1) for r in infer_rates],
        "train_cpu_cores_busy": round(train_cores, 2),
        "infer_cpu_cores_busy": round(infer_cores, 2),
        "workload": workload.description,
        "jit_compile": workload.jit_compile,
        "precision": workload.precision,
    }


def _ratios(reports):
    """Every model's throughputs over the first model's: medians, and per repeat."""
    names = list(reports)
    first = reports[names[0]]
    ratios = {"of": f"each model / {names[0]}; medians over repeats"}
    for name in names[1:]:
        report = reports[name]
        ratios[name] = {}
        for kind in ("train", "infer"):
            key = f"{kind}_images_per_s"
            ratios[name][kind] = round(report[key] / first[key], 3)
            ratios[name][f"{kind}_repeats"] = [
                round(a / b, 3) for a, b in zip(report[key + "_repeats"], first[key + "_repeats"])
            ]
    return ratios
