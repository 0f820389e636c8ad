"""Which Keras dtype policy pays on this machine: `capskeras-train --precision=auto`.

bfloat16 keeps float32's range, so `mixed_bfloat16` needs no loss scaling;
it pays where the hardware multiplies bfloat16 natively: GPUs of compute
capability 8.0 and newer (A100, H100, RTX 30xx and later), and CPUs with
AMX (`amx_bf16`) or AVX-512 BF16 (`avx512_bf16`), which TensorFlow reaches
through oneDNN. Elsewhere bfloat16 is emulated and slower than float32.

This module imports nothing heavy at module level; `auto_precision` imports
TensorFlow only to list GPUs, and not when given the GPU details.
"""

from capskeras import onednn

# /proc/cpuinfo flags of the CPU instructions that multiply bfloat16:
# AMX's tile multiply (amx_bf16) and AVX-512's dot product (avx512_bf16).
# `amx_tile` alone is only the tile registers (AMX-INT8 parts also have it).
BFLOAT16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})

# Compute capability from which NVIDIA GPUs have bfloat16 tensor cores.
BFLOAT16_COMPUTE_CAPABILITY = (8, 0)


def auto_precision(cpu_flags=None, gpu_details=None):
    """The dtype policy `--precision=auto` resolves to here, and why.

    With GPUs, the GPUs decide (the model runs there): `mixed_bfloat16`
    when every one has compute capability >= 8.0, else `float32`. Without
    one, the CPU decides: `mixed_bfloat16` with AMX-BF16 or AVX-512 BF16,
    else `float32`.

    Args:
        cpu_flags: the CPU's flags; `None` reads them from `/proc/cpuinfo`
            (none elsewhere, which gives `float32` on a CPU).
        gpu_details: a list of dicts as from
            `tf.config.experimental.get_device_details`, one per GPU
            (`compute_capability` a `(major, minor)` tuple); `None` asks
            TensorFlow for this machine's, `[]` says there is no GPU.

    Returns:
        `(policy, reason)`: `"mixed_bfloat16"` or `"float32"`, and the
        hardware fact that decided, in words.

    Example:

    ```python
    policy, reason = auto_precision()
    keras.config.set_dtype_policy(policy)
    ```
    """
    if gpu_details is None:
        import tensorflow as tf

        gpu_details = [tf.config.experimental.get_device_details(gpu)
                       for gpu in tf.config.list_physical_devices("GPU")]
    if gpu_details:
        capabilities = [tuple(details.get("compute_capability") or (0, 0))
                        for details in gpu_details]
        lowest = min(capabilities)
        if lowest >= BFLOAT16_COMPUTE_CAPABILITY:
            return "mixed_bfloat16", f"GPU compute capability {lowest[0]}.{lowest[1]} >= 8.0"
        return "float32", (f"GPU compute capability {lowest[0]}.{lowest[1]} < 8.0, "
                           "no bfloat16 tensor cores")
    if cpu_flags is None:
        cpu_flags = onednn.cpu_info()[1]
    found = sorted(BFLOAT16_CPU_FLAGS & set(cpu_flags))
    if found:
        return "mixed_bfloat16", f"CPU has {', '.join(found)}"
    return "float32", "CPU has neither amx_bf16 nor avx512_bf16"
