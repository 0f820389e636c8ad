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


def make_strategy(name):
    """The `tf.distribute` strategy called `name`.

    - `default`: no distribution, the current default strategy.
    - `mirrored`: synchronous data parallelism over every local GPU, or
      over the logical CPU devices when there is no GPU.
    - `multi_worker`: synchronous data parallelism across the workers named
      in `TF_CONFIG` (a single local worker without it).
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([device.name for device in devices])
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(
        f"Received: distribution_strategy={name!r}; "
        "expected one of ['default', 'mirrored', 'multi_worker']"
    )


def shard_by_data(dataset):
    """Makes distributed input shard `dataset` by element, not by file.

    The TFDS MNIST split is a single file, so the default file-based
    sharding cannot split it across workers; element-wise sharding can.
    Without a strategy the option has no effect.
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def is_chief():
    """Whether this process writes checkpoints and exports (one per cluster)."""
    tf_config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task = tf_config.get("task", {})
    task_type = task.get("type")
    if task_type in (None, "chief"):
        return True
    has_chief = "chief" in tf_config.get("cluster", {})
    return task_type == "worker" and task.get("index", 0) == 0 and not has_chief
