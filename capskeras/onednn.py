"""oneDNN on every x86 CPU: the switch, and a report of whether it is on.

TensorFlow's CPU wheel runs its convolutions and matmuls through oneDNN only
when `TF_ENABLE_ONEDNN_OPTS` says so or, when the variable is unset, on CPUs
with the neural-network extensions (AVX-512 VNNI or BF16, AVX-VNNI, AMX).
Elsewhere (AVX2 machines, AVX-512 without VNNI) it falls back to Eigen,
about 4x slower on the study models' training. TensorFlow reads the variable
once, when it starts, so it acts only if set before `import tensorflow`.

capskeras's entry points (`capskeras-train`, `capskeras-eval`, the scripts
in `tools/`, the test suite) call `enable()` before they import TensorFlow.
User code sets the variable itself:

```bash
export TF_ENABLE_ONEDNN_OPTS=1   # or in Python, before `import tensorflow`
```

and `warn_if_off()` (called when capskeras builds a model) says so once when
TensorFlow is already running without oneDNN on a CPU where that matters.

This module imports nothing heavy at module level: it must be importable
before TensorFlow.
"""

import os
import sys
import warnings

VARIABLE = "TF_ENABLE_ONEDNN_OPTS"

# /proc/cpuinfo flags with which TensorFlow 2.21 turns oneDNN on by default
# on Linux (`DefaultOneDnnPolicy` in tensorflow/core/util/port.cc).
DEFAULT_ON_FLAGS = frozenset(
    {"avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16"}
)

# The vector extensions a speed figure depends on, in the order reported.
VECTOR_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
    "avx512_vnni", "avx512_bf16", "avx_vnni", "avx512_fp16", "amx_tile", "amx_int8",
    "amx_bf16", "asimd", "sve",
)

_TRUE = ("1", "true")
_FALSE = ("0", "false")
_warned = False


def enable():
    """Sets `TF_ENABLE_ONEDNN_OPTS=1` unless the user set it or TensorFlow runs.

    Call it before anything imports TensorFlow (Keras included).

    Returns:
        `True` if it set the variable; `False` if the variable was already
        set (the user's choice stands, `0` included) or TensorFlow was
        already imported (setting it then would change nothing, so it is
        left as it is).

    Example:

    ```python
    from capskeras import onednn
    onednn.enable()
    import tensorflow as tf  # Runs with oneDNN.
    ```
    """
    if VARIABLE in os.environ or "tensorflow" in sys.modules:
        return False
    os.environ[VARIABLE] = "1"
    return True


def cpu_info(path="/proc/cpuinfo"):
    """This CPU's model name and flags, read from `/proc/cpuinfo`.

    Returns:
        `(model, flags)`: the model name (`platform.processor()` or the
        architecture where the file has none) and a frozenset of its flags
        (`flags` on x86, `Features` on Arm; empty where the file is missing).
    """
    import platform

    model, flags = None, frozenset()
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if model is None and key in ("model name", "cpu model"):
                    model = value.strip()
                elif not flags and key in ("flags", "features"):
                    flags = frozenset(value.split())
                if model is not None and flags:
                    break
    except OSError:
        pass
    return model or platform.processor() or platform.machine(), flags


def default_on(flags):
    """Whether TensorFlow turns oneDNN on by itself on a CPU with these flags.

    Linux x86 policy of TensorFlow 2.21: on with AVX-512 VNNI or BF16,
    AVX-VNNI or AMX, off otherwise.
    """
    return bool(DEFAULT_ON_FLAGS & set(flags))


def status():
    """Whether oneDNN is (or will be) on in this process, and whether it matters here.

    Returns:
        A dict:
        - `cpu`: the CPU model name.
        - `vector_extensions`: its vector extensions among `VECTOR_FLAGS`.
        - `variable`: the value of `TF_ENABLE_ONEDNN_OPTS`, or `None`.
        - `default_on`: whether TensorFlow turns oneDNN on here by itself.
        - `enabled`: whether TensorFlow runs with oneDNN: asked of TensorFlow
          when it is imported, else what it will decide from the variable
          and the CPU.
        - `matters`: whether oneDNN is off by default on this CPU, so that
          the variable decides (x86 only: TensorFlow's CPU wheel builds
          oneDNN for x86).
    """
    import platform

    model, flags = cpu_info()
    value = os.environ.get(VARIABLE)
    x86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
    on_by_default = x86 and default_on(flags)
    if "tensorflow" in sys.modules:
        enabled = _tensorflow_says()
    elif value is not None and value.strip().lower() in _TRUE:
        enabled = x86
    elif value is not None and value.strip().lower() in _FALSE:
        enabled = False
    else:
        enabled = on_by_default
    return {
        "cpu": model,
        "vector_extensions": [flag for flag in VECTOR_FLAGS if flag in flags],
        "variable": value,
        "default_on": on_by_default,
        "enabled": bool(enabled),
        "matters": x86 and not on_by_default,
    }


def _tensorflow_says():
    from tensorflow.python.util import _pywrap_util_port  # Private, but the only source.

    return bool(_pywrap_util_port.IsMklEnabled())


def warn_if_off():
    """Warns once per process when TensorFlow runs without oneDNN where it matters.

    Does nothing on Keras backends other than TensorFlow (JAX and PyTorch
    run the layers on their own kernels, whatever TensorFlow's setting),
    before TensorFlow is imported (the entry points turn
    oneDNN on then), after the first warning, when the user set
    `TF_ENABLE_ONEDNN_OPTS` (to anything: their choice stands), or where
    oneDNN is on or TensorFlow's default decides well anyway. The warning
    is a `RuntimeWarning` naming the variable and how to set it.

    Returns:
        `True` if it warned.
    """
    global _warned
    if _warned or "tensorflow" not in sys.modules or VARIABLE in os.environ:
        return False
    import keras  # Imported by now: TensorFlow is, and this runs when layers are built.

    if keras.backend.backend() != "tensorflow":
        return False
    report = status()
    if report["enabled"] or not report["matters"]:
        return False
    _warned = True
    warnings.warn(
        f"TensorFlow runs without oneDNN ({VARIABLE} unset) on this CPU ({report['cpu']}, no AVX-512 "
        "VNNI), where its convolutions train several times slower. Set "
        f"{VARIABLE}=1 in the environment, or os.environ['{VARIABLE}'] = '1' before "
        f"the first `import tensorflow` or `import keras`; set {VARIABLE}=0 to keep it off "
        "and silence this warning.",
        RuntimeWarning,
        stacklevel=3,
    )
    return True
