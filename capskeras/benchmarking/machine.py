"""Timing, and the facts about this machine that a speed figure depends on."""

import os
import platform
import resource
import sys
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from capskeras import onednn


def time_steps(steps_by_name, steps, repeats, warmup_steps):
    """Times `steps` calls of each step function per repeat, after warm-up calls.

    The functions take turns call by call (A, B, A, B, ...), so a load that
    comes and goes on a shared machine slows them alike.

    Args:
        steps_by_name: dict mapping names to functions of no arguments.
        steps: calls per function and repeat.
        repeats: timed repeats.
        warmup_steps: untimed calls of each function first.

    Returns:
        A dict mapping each name to `(seconds, cores_busy)`: the wall-clock
        seconds of its repeats (the sum of its `steps` calls in each), and
        this process's CPU time over that wall time (about the core count
        when nothing else competes for the CPU).
    """
    for step in steps_by_name.values():
        for _ in range(warmup_steps):
            step()
    seconds = {name: [] for name in steps_by_name}
    cpu_seconds = dict.fromkeys(steps_by_name, 0.0)
    for _ in range(repeats):
        repeat_seconds = dict.fromkeys(steps_by_name, 0.0)
        for _ in range(steps):
            for name, step in steps_by_name.items():
                cpu_started, started = time.process_time(), time.perf_counter()
                step()
                repeat_seconds[name] += time.perf_counter() - started
                cpu_seconds[name] += time.process_time() - cpu_started
        for name in steps_by_name:
            seconds[name].append(repeat_seconds[name])
    return {
        name: (seconds[name], cpu_seconds[name] / sum(seconds[name]))
        for name in steps_by_name
    }


def matmul_peak_gflops(sizes=(1024, 2048), repeats=10, warmup=2):
    """This machine's float32 matmul rate: the best over `sizes` of 2 n^3 / fastest time.

    The fastest repeat, not the median: a peak is what the machine can do,
    and on a shared machine the median of a few repeats swung by a third
    between runs (84 to 111 GFLOP/s with oneDNN off), which let models
    timed by their medians report more than 100% of it.

    Returns:
        `(gflops, n)`: the best rate and the size that reached it.
    """
    best, best_size = 0.0, None
    rng = np.random.default_rng(0)
    for n in sizes:
        a = tf.constant(rng.uniform(-1, 1, (n, n)).astype("float32"))
        b = tf.constant(rng.uniform(-1, 1, (n, n)).astype("float32"))

        def step():
            # Reading one element back waits for the product, also on a GPU.
            tf.linalg.matmul(a, b)[0, 0].numpy()

        seconds = min(time_steps({"matmul": step}, 1, repeats, warmup)["matmul"][0])
        gflops = 2 * n**3 / seconds / 1e9
        logging.info("float32 matmul %dx%d: %.1f GFLOP/s", n, n, gflops)
        if gflops > best:
            best, best_size = gflops, n
    return best, best_size


def device_description():
    """The device models run on, in words: the GPU, or the CPU and its core count."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        count = f" (x{len(gpus)})" if len(gpus) > 1 else ""
        return f"GPU: {details.get('device_name', gpus[0].name)}{count}"
    return f"CPU: {onednn.cpu_info()[0] or platform.machine()}, {os.cpu_count()} cores"


def peak_rss_mib():
    """Peak resident memory of this process in MiB (`ru_maxrss` is KiB on Linux)."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if sys.platform == "darwin":  # Bytes on macOS.
        kib /= 1024
    return round(kib / 1024, 1)


def machine_facts():
    """What a speed figure depends on: device, CPU and its vector extensions, oneDNN, versions.

    Also the 1-minute load average, which tells a figure taken on a busy
    shared machine apart.
    """
    status = onednn.status()
    return {
        "device": device_description(),
        "cpu": status["cpu"],
        "cpu_cores": os.cpu_count(),
        "cpu_vector_extensions": status["vector_extensions"],
        "onednn_enabled": status["enabled"],
        "onednn_variable": status["variable"],
        "load_average_1min": round(os.getloadavg()[0], 2),
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
    }
