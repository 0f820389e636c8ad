"""Benchmarks: throughput, FLOPs and the machine's matmul peak, as `tools/bench.py` reports them.

- `flops`: FLOPs of a traced graph, forward and training, counted op by op.
- `machine`: timing in turns, the matmul peak and the machine's facts (CPU,
  vector extensions, oneDNN, versions).
- `workloads`: the compiled models stepped (`BENCHMARKS`, and trainer
  experiments through `experiment_workload`) and their synthetic batches.
- `runner`: `benchmark`, one run over any number of workloads.
"""

from capskeras.benchmarking.flops import FlopCount
from capskeras.benchmarking.flops import forward_flops
from capskeras.benchmarking.flops import graph_flops
from capskeras.benchmarking.flops import train_flops
from capskeras.benchmarking.machine import machine_facts
from capskeras.benchmarking.machine import matmul_peak_gflops
from capskeras.benchmarking.machine import time_steps
from capskeras.benchmarking.runner import benchmark
from capskeras.benchmarking.workloads import BENCHMARKS
from capskeras.benchmarking.workloads import BenchmarkOverrides
from capskeras.benchmarking.workloads import Workload
from capskeras.benchmarking.workloads import experiment_workload
from capskeras.benchmarking.workloads import registered_workload
from capskeras.benchmarking.workloads import synthetic_batch
