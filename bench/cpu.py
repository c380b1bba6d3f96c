"""CPU time the serving processes spend per request, read from /proc: on a shared machine it
says more than throughput does, since it does not change with what else is running.
"""

from __future__ import annotations

import os
import platform
import resource
import time
from collections.abc import Callable
from pathlib import Path

from bench.stats import LoadResult

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of `pids` (a process that is gone counts 0)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / _TICKS


def load_cpu_seconds() -> float:
    """CPU time of this process (the asyncio load clients) plus its ended children (wrk)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def bench_cores() -> set[int]:
    """The cores this process may run on (and the servers it starts, which inherit them)."""
    return os.sched_getaffinity(0)


def machine_cpu_seconds(cores: set[int]) -> float:
    """CPU time every process spent on `cores` (user, nice, system) plus steal, from /proc/stat.

    Interrupt time is left out: loopback traffic's softirqs belong to the load itself but to no
    process. On a kernel without IRQ time accounting, softirq time taken while a measured
    process runs lands in that process's system time instead, so others may read a little low."""
    total = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()  # "cpuN user nice system idle iowait irq softirq steal ..."
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cores:
            total += int(fields[0]) + int(fields[1]) + int(fields[2]) + int(fields[7])
    return total / _TICKS


def with_cpu(pids: list[int], run: Callable[[], LoadResult]) -> LoadResult:
    """Run a load; record the CPU milliseconds `pids`, and the load generator, spent per request,
    and the share of the cores everything else on the machine took meanwhile."""
    cores = bench_cores()
    before, load_before, machine_before = cpu_seconds(pids), load_cpu_seconds(), machine_cpu_seconds(cores)
    started = time.monotonic()
    result = run()
    wall = time.monotonic() - started
    served, loaded = cpu_seconds(pids) - before, load_cpu_seconds() - load_before
    others = machine_cpu_seconds(cores) - machine_before - served - loaded
    sent = max(result.sent or result.requests + sum(result.errors.values()), 1)
    result.server_cpu_ms = served * 1000 / sent
    result.load_cpu_ms = loaded * 1000 / sent
    result.other_cpu_share = max(others, 0.0) / (wall * len(cores)) if wall > 0 else 0.0
    return result


def cpu_description(cpuinfo: str | None = None) -> str:
    """The CPU's model name and the vector instructions that decide how fast a model runs and
    whether TensorFlow picks oneDNN's kernels by itself (AVX-512 VNNI or BF16, AVX-VNNI, AMX):
    runs on machines that differ there are not comparable ("AMD EPYC, AVX2")."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return platform.machine() or "CPU unknown"
    first = cpuinfo.split("\n\n", 1)[0]  # processor 0's block: every core of a VM reads the same
    lines = (line.partition(":") for line in first.splitlines())
    fields = {key.strip(): value.strip() for key, _, value in lines}
    flags = set((fields.get("flags") or fields.get("Features") or "").split())  # x86 / Arm
    vector = [name for flag, name in _VECTOR_FLAGS if flag in flags]
    return ", ".join([fields.get("model name") or platform.machine() or "CPU unknown", *vector])


_VECTOR_FLAGS = (
    ("avx2", "AVX2"),
    ("avx_vnni", "AVX-VNNI"),
    ("avx512f", "AVX-512"),
    ("avx512_vnni", "AVX512-VNNI"),
    ("avx512_bf16", "AVX512-BF16"),
    ("amx_tile", "AMX"),
    ("asimd", "NEON"),
    ("sve", "SVE"),
)
