"""How many CPU threads torch uses, chosen for a machine other processes share.

Why a busy machine made tiny-model training 5-30x slower: torch splits each op over one OpenMP thread per core,
and every op ends at a barrier where the threads wait for each other. With another process on the cores, one of
the threads is often descheduled, so every op waits a scheduler slice (milliseconds) for it, while the waiting
threads spin (OpenMP's default wait policy) and take CPU time from the thread everyone waits for. A small model's
step is thousands of sub-millisecond ops, so these waits are the whole step. A full-size model's ops are long
enough that the split pays and the waits are a small share.

So, unless the user chose (`train.cpu_threads`, or `OMP_NUM_THREADS`): a small model gets 1 thread (nothing to
wait for), a large one the cores the other processes leave free. The wait policy is left to the user
(`OMP_WAIT_POLICY`): measured with scripts/benchmark_busy.py, PASSIVE made 2 threads on the idle tiny model 1.6x
slower (every op wakes a sleeping thread), and 1 thread needs no policy.
"""

from __future__ import annotations

import os

__all__ = ["SMALL_MODEL_PARAMS", "choose_cpu_threads", "apply_cpu_threads"]

SMALL_MODEL_PARAMS = 50_000_000  # below this, a step is mostly per-op overhead (builtin:tiny: 1.6 M)


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _busy_cores() -> int:
    """Cores other processes keep busy now: the running tasks Linux counts (/proc/loadavg), less this one. (The
    load average would lag by a minute and count this run's own model loading.)"""
    try:
        with open("/proc/loadavg", encoding="ascii") as f:
            running = int(f.read().split()[3].split("/")[0])
        return max(0, running - 1)
    except (OSError, ValueError, IndexError):
        return 0


def choose_cpu_threads(setting: int, model_params: int) -> tuple[int, str]:
    """(threads, why) for a CPU run: the config's number, OMP_NUM_THREADS, or the automatic choice."""
    if setting > 0:
        return setting, "train.cpu_threads"
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env), "OMP_NUM_THREADS"
    if model_params < SMALL_MODEL_PARAMS:
        return 1, f"auto: a small model ({model_params / 1e6:.1f} M parameters)"
    cores, busy = _usable_cores(), _busy_cores()
    return max(1, cores - busy), f"auto: {cores} core(s), {busy} kept busy by other processes"


def apply_cpu_threads(setting: int, model_params: int) -> str:
    """Set torch's intra-op threads; returns a line saying how many and why."""
    import torch

    threads, why = choose_cpu_threads(setting, model_params)
    torch.set_num_threads(threads)
    policy = os.environ.get("OMP_WAIT_POLICY")
    return f"CPU threads: {threads} ({why})" + (f"; OMP_WAIT_POLICY={policy}" if policy else "")
