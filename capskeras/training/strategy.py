"""`tf.distribute` strategies by name, and the host CPU split for trying them."""

import json
import os

import tensorflow as tf


def split_host_cpu(num_devices):
    """Splits the host CPU into `num_devices` logical devices.

    Must run before TensorFlow initializes its devices; if they are already
    initialized with the same split this is a no-op, otherwise it raises.
    """
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * num_devices
        )
    except RuntimeError:
        existing = len(tf.config.list_logical_devices("CPU"))
        if existing != num_devices:
            raise ValueError(
                f"Received: cpu_devices={num_devices}, but TensorFlow already "
                f"initialized {existing} logical CPU devices in this process; "
                "split the CPU before any TensorFlow work"
            ) from None


STRATEGIES = ("default", "mirrored", "multi_worker")


def check_strategy(name):
    """Raises ValueError when strategy `name` cannot run here; builds nothing."""
    if name not in STRATEGIES:
        raise ValueError(
            f"Received: distribution_strategy={name!r}; expected one of {list(STRATEGIES)}"
        )
    tasks = _cluster_tasks()
    if name == "multi_worker" and tasks > 1:
        # Keras 3's `fit` hands per-replica values to a tensor conversion when
        # several workers run (keras-team/keras#20585, still open in Keras
        # 3.15); refuse here rather than fail inside the first step.
        raise ValueError(
            f"Received: distribution_strategy='multi_worker' with {tasks} tasks in "
            "TF_CONFIG; Keras 3.15's fit runs MultiWorkerMirroredStrategy on one "
            "worker only (keras-team/keras#20585). Expected TF_CONFIG with a "
            "single worker, or distribution_strategy='mirrored' on one machine"
        )


def make_strategy(name):
    """The `tf.distribute` strategy called `name`.

    - `default`: no distribution, the current default strategy.
    - `mirrored`: synchronous data parallelism over every local GPU, or
      over the logical CPU devices when there is no GPU.
    - `multi_worker`: `MultiWorkerMirroredStrategy` with collective ops,
      on the single worker `TF_CONFIG` names (or a local one without it).
      Several workers are refused until Keras 3's `fit` supports them.
    """
    check_strategy(name)
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([device.name for device in devices])
    return tf.distribute.MultiWorkerMirroredStrategy()


def shard_by_data(dataset):
    """Makes distributed input shard `dataset` by element, not by file.

    The TFDS MNIST split is a single file, so the default file-based
    sharding cannot split it across workers; element-wise sharding can.
    Without a strategy the option has no effect.
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def _tf_config():
    return json.loads(os.environ.get("TF_CONFIG") or "{}")


def _cluster_tasks():
    """How many chief and worker tasks `TF_CONFIG` names (0 without one)."""
    cluster = _tf_config().get("cluster", {})
    return len(cluster.get("chief", [])) + len(cluster.get("worker", []))


def is_chief():
    """Whether this process writes checkpoints and exports (one per cluster)."""
    tf_config = _tf_config()
    task = tf_config.get("task", {})
    task_type = task.get("type")
    if task_type in (None, "chief"):
        return True
    has_chief = "chief" in tf_config.get("cluster", {})
    return task_type == "worker" and task.get("index", 0) == 0 and not has_chief
