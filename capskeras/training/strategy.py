"""`tf.distribute` strategies by name, and the host CPU split for trying them."""

import json
import os
import re

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
    if name == "multi_worker":
        try:
            tf_config = _tf_config()
        except json.JSONDecodeError as error:
            raise ValueError(
                f"Received: TF_CONFIG={os.environ.get('TF_CONFIG')!r}, not JSON ({error}); "
                "expected the cluster and this task, e.g. "
                '{"cluster": {"worker": ["host1:port", "host2:port"]}, '
                '"task": {"type": "worker", "index": 0}}'
            ) from None
        task = tf_config.get("task", {})
        if task and not tf_config.get("cluster"):
            raise ValueError(
                f"Received: TF_CONFIG with task {task!r} and no cluster; expected the "
                "cluster's workers beside this task"
            )
        if tf_config.get("cluster") and task.get("type") not in ("chief", "worker"):
            raise ValueError(
                f"Received: TF_CONFIG task {task!r}; expected a task of type 'chief' or "
                "'worker' with its index"
            )


def make_strategy(name, collective_timeout_seconds=0):
    """The `tf.distribute` strategy called `name`.

    - `default`: no distribution, the current default strategy.
    - `mirrored`: synchronous data parallelism over every local GPU, or
      over the logical CPU devices when there is no GPU.
    - `multi_worker`: `MultiWorkerMirroredStrategy` with collective ops
      across the workers `TF_CONFIG` names (a single local worker without
      one). Every worker runs the same command with its own `TF_CONFIG`.

    Args:
        name: one of `STRATEGIES`.
        collective_timeout_seconds: `multi_worker` only: a collective that
            waits longer than this for its peers raises
            `tf.errors.DeadlineExceededError`; 0 sets no timeout. Either way
            TensorFlow's coordination service notices a worker that stops
            sending heartbeats (see `peer_lost`).
    """
    check_strategy(name)
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([device.name for device in devices])
    options = tf.distribute.experimental.CommunicationOptions(
        timeout_seconds=collective_timeout_seconds or None)
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)


class LostWorkerError(RuntimeError):
    """A peer worker died or stopped answering; the cluster cannot go on without it."""


# What a collective raises when a peer is lost: UNAVAILABLE when its connection
# drops or the coordination service misses its heartbeats, DEADLINE_EXCEEDED
# when a heartbeat or the collective itself times out, ABORTED when a peer's
# error aborts it.
_PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                tf.errors.AbortedError)
_CAUSES = ("aborted by", "unhealthy", "heartbeat", "timed out", "connection", "socket closed")


def peer_lost(error, collective_timeout_seconds):
    """A `LostWorkerError` for `error` of a `multi_worker` run, or None if not a lost peer.

    Args:
        error: the `tf.errors.OpError` the run raised.
        collective_timeout_seconds: the run's collective timeout, for the
            message.
    """
    cluster = _tf_config().get("cluster", {})
    if not isinstance(error, _PEER_ERRORS) or sum(map(len, cluster.values())) < 2:
        return None
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    cause = next((line for line in lines if any(word in line.lower() for word in _CAUSES)),
                 lines[-1] if lines else "")
    cause = re.sub(r"\{\{function_node [^}]*\}\}\s*|\s*\[Op:\w+\].*$", "", cause)
    timeout = (f"collective_timeout_seconds={collective_timeout_seconds}"
               if collective_timeout_seconds else "no collective timeout set")
    return LostWorkerError(
        f"A peer worker was lost or a collective timed out ({timeout}); training stopped. "
        f"{type(error).__name__}: {cause[:500].rstrip('.')}. To resume, start every worker "
        "again with the same command, each with its TF_CONFIG: all go on from the newest "
        "checkpoint they all hold."
    )


def _tf_config():
    return json.loads(os.environ.get("TF_CONFIG") or "{}")


def worker_index():
    """This process's index among the cluster's tasks: 0 for the chief.

    The chief writes the run's files and exports; the others checkpoint
    into their own directories.
    """
    if is_chief():
        return 0
    tf_config = _tf_config()
    has_chief = "chief" in tf_config.get("cluster", {})
    return tf_config.get("task", {}).get("index", 0) + (1 if has_chief else 0)


def is_chief():
    """Whether this process writes the run's files and exports (one per cluster)."""
    tf_config = _tf_config()
    task = tf_config.get("task", {})
    task_type = task.get("type")
    if task_type in (None, "chief"):
        return True
    has_chief = "chief" in tf_config.get("cluster", {})
    return task_type == "worker" and task.get("index", 0) == 0 and not has_chief
