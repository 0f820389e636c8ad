"""CapsNet and P4CNN training and inference speed under each Keras backend.

    python tools/bench_backends.py                          # tensorflow, jax, torch (if installed)
    python tools/bench_backends.py --backends=tensorflow,jax --batch_size=32 --steps=5

Each backend runs in its own process (Keras picks its backend once, at
import), one after the other, on the same synthetic batch (images uniform
in [0, 1], random labels): `CapsNet` (Sabour et al., with its decoder,
28x28) and `P4CNN` (Cohen and Welling), compiled with Adam and their
default losses under each backend's Keras default (`jit_compile="auto"`:
the whole step under XLA on JAX, eager on PyTorch, TensorFlow's graph with
capskeras's XLA-compiled routing on TensorFlow). After `--warmup_steps`
untimed steps (tracing, compilation), each of `--repeats` repeats times
`--steps` train steps (`train_on_batch`) and predict steps
(`predict_on_batch`); images/s are medians over the repeats.

Prints one JSON object: per backend and model, train and inference
images/s and their ratio to TensorFlow's; the CPU (`lscpu`'s model name),
its vector extensions, whether TensorFlow ran with oneDNN, the library
versions and the load average before and after (the machine is shared:
compare figures of one run).
"""

# oneDNN on (unless TF_ENABLE_ONEDNN_OPTS is set) before anything imports TensorFlow.
from capskeras import onednn

onednn.enable()

import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from capskeras import cli  # noqa: E402

BACKENDS = ("tensorflow", "jax", "torch")
MODELS = ("capsnet", "p4cnn")
FLAGS = flags.FLAGS


def define_flags(flag_values):
    """Defines the tool's flags on `flag_values`."""
    flags.DEFINE_list("backends", None, "Keras backends to run, from tensorflow, jax, torch; "
                      "default: every one installed.", flag_values=flag_values)
    flags.DEFINE_list("models", list(MODELS), "Models to run: capsnet, p4cnn.",
                      flag_values=flag_values)
    flags.DEFINE_integer("batch_size", 32, "Images per step.", lower_bound=1,
                         flag_values=flag_values)
    flags.DEFINE_integer("steps", 5, "Train and predict steps per timed repeat.", lower_bound=1,
                         flag_values=flag_values)
    flags.DEFINE_integer("repeats", 3, "Timed repeats; images/s are their medians.", lower_bound=1,
                         flag_values=flag_values)
    flags.DEFINE_integer("warmup_steps", 2, "Untimed steps first (tracing, compilation).",
                         lower_bound=1, flag_values=flag_values)
    flags.DEFINE_string("worker", None, "Internal: run the models under this backend (already "
                        "set in KERAS_BACKEND) and print their JSON.", flag_values=flag_values)
    flags.DEFINE_string("output", None, "Also write the JSON result to this file.",
                        flag_values=flag_values)


def cpu_description():
    """`lscpu`'s model name (else /proc/cpuinfo's) and the CPU's vector extensions."""
    model = None
    try:
        listing = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in listing.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name":
                model = value.strip()
                break
    except (OSError, subprocess.CalledProcessError):
        pass
    report = onednn.status()
    return {"cpu": model or report["cpu"], "vector_extensions": report["vector_extensions"],
            "cpu_count": os.cpu_count()}


def installed_backends():
    import importlib.util

    return [name for name in BACKENDS if importlib.util.find_spec(name)]


def _model(name):
    import keras

    from capskeras import tasks
    from capskeras.models.gcnn import build_p4cnn

    if name == "capsnet":
        model = tasks.build_model("capsnet")
        model.compile(keras.optimizers.Adam(1e-3), model.default_loss())
        return model, model.make_example
    if name == "p4cnn":
        model = build_p4cnn(seed=0)
        model.compile(keras.optimizers.Adam(1e-3), model.head.default_loss())
        return model, lambda images, labels: (images, labels)
    raise ValueError(f"Received: model={name!r}; expected one of {list(MODELS)}")


def _images_per_second(step, batch_size):
    for _ in range(FLAGS.warmup_steps):
        step()
    rates = []
    for _ in range(FLAGS.repeats):
        start = time.perf_counter()
        for _ in range(FLAGS.steps):
            step()
        rates.append(FLAGS.steps * batch_size / (time.perf_counter() - start))
    return statistics.median(rates)


def run_worker(backend):
    """This process's backend: every model's train and inference images/s."""
    import keras
    import numpy as np

    if keras.backend.backend() != backend:
        raise ValueError(f"Received: worker={backend!r} under KERAS_BACKEND="
                         f"{keras.backend.backend()!r}")
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(FLAGS.batch_size, 28, 28, 1)).astype("float32")
    labels = rng.integers(0, 10, size=(FLAGS.batch_size,)).astype("int32")
    results = {}
    for name in FLAGS.models:
        model, example = _model(name)
        inputs, targets = example(images, labels)
        train = _images_per_second(lambda: model.train_on_batch(inputs, targets),
                                   FLAGS.batch_size)
        infer = _images_per_second(lambda: model.predict_on_batch(images), FLAGS.batch_size)
        results[name] = {"train_images_per_s": round(train, 1),
                         "inference_images_per_s": round(infer, 1)}
    versions = {"keras": keras.__version__}
    module = sys.modules.get(backend)
    if module is not None:
        versions[backend] = getattr(module, "__version__", None)
    if backend == "tensorflow":
        versions["onednn"] = onednn.status()["enabled"]
    return {"models": results, "versions": versions}


def run_all(backends):
    result = {**cpu_description(), "batch_size": FLAGS.batch_size, "steps": FLAGS.steps,
              "repeats": FLAGS.repeats, "load_average_before": os.getloadavg(), "backends": {}}
    for backend in backends:
        command = [sys.executable, os.path.abspath(__file__), f"--worker={backend}",
                   f"--models={','.join(FLAGS.models)}", f"--batch_size={FLAGS.batch_size}",
                   f"--steps={FLAGS.steps}", f"--repeats={FLAGS.repeats}",
                   f"--warmup_steps={FLAGS.warmup_steps}"]
        started = time.perf_counter()
        done = subprocess.run(command, env=dict(os.environ, KERAS_BACKEND=backend),
                              capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{backend} failed:\n{done.stderr[-4000:]}")
        result["backends"][backend] = json.loads(done.stdout.strip().splitlines()[-1])
        result["backends"][backend]["seconds"] = round(time.perf_counter() - started, 1)
    reference = result["backends"].get("tensorflow")
    if reference:
        for measured in result["backends"].values():
            for name, figures in measured["models"].items():
                base = reference["models"][name]
                figures["train_vs_tensorflow"] = round(
                    figures["train_images_per_s"] / base["train_images_per_s"], 2)
                figures["inference_vs_tensorflow"] = round(
                    figures["inference_images_per_s"] / base["inference_images_per_s"], 2)
    result["load_average_after"] = os.getloadavg()
    return result


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    for name in FLAGS.models:
        if name not in MODELS:
            raise app.UsageError(f"Received: --models={name}; expected some of {list(MODELS)}")
    if FLAGS.worker:
        print(json.dumps(run_worker(FLAGS.worker)))
        return
    backends = FLAGS.backends or installed_backends()
    for name in backends:
        if name not in BACKENDS:
            raise app.UsageError(f"Received: --backends={name}; expected some of {list(BACKENDS)}")
    result = run_all(backends)
    text = json.dumps(result, indent=1)
    print(text)
    if FLAGS.output:
        with open(FLAGS.output, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    cli.run_command("bench_backends.py", define_flags, main)
