"""Where a request's CPU goes (issue 32): the gateway path (model server + gateway workers) and
the tutorial app under the same wrk load, per process and per thread name from /proc, and
optionally per Python step (py-spy samples) or per system call (strace -c).

    python -m bench.cpu_budget --model mnist --models-dir <models> --seconds 8
    python -m bench.cpu_budget ... --gateway-env --gateway-env LOG_LEVEL=WARNING  # in turns
    python -m bench.cpu_budget ... --mode profile      # + py-spy's raw stacks, shares per step
    python -m bench.cpu_budget ... --mode strace       # + syscalls per request
    gcc -O2 -shared -fPIC -o /tmp/malloc_count.so bench/malloc_count.c -ldl   # + allocations per request:
    MALLOC_COUNT_DIR=$(mktemp -d) LD_PRELOAD=/tmp/malloc_count.so PYTHONMALLOC=malloc \
        python -m bench.cpu_budget ...

py-spy and strace slow the processes they watch: their runs' CPU figures are not the plain ones.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from bench import http_load, servers
from bench.cpu import cpu_seconds, with_cpu
from bench.processes import process_tree
from bench.stats import LoadResult
from bench.workload import MULTIPART_CONTENT_TYPE, Workload, load_workload
from serving import stack

logger = logging.getLogger("bench")
_TICKS = os.sysconf("SC_CLK_TCK")
PY_SPY = Path(sys.executable).parent / "py-spy"  # requirements/dev.txt
# Set for the whole run with LD_PRELOAD and PYTHONMALLOC=malloc (the servers inherit them): each
# process's allocations are counted there (bench/malloc_count.c).
MALLOC_COUNT_DIR = os.environ.get("MALLOC_COUNT_DIR", "")
# A Python frame, as py-spy's raw format writes it: "function (path/file.py:line)".
# Steps, first match wins over the whole stack (root to leaf): the hooks around a request
# (metrics, log line) are claimed before the Flask and gunicorn frames that call them.
STEPS: list[tuple[str, re.Pattern[str]]] = [
    ("log line", re.compile(r"logging/__init__|logging_setup|_log_request")),
    ("metrics (prometheus)", re.compile(r"prometheus_client|gateway/metrics\.py")),
    ("multipart parse", re.compile(r"formparser|sansio/multipart|requests_parsing")),
    ("TensorFlow call", re.compile(r"tensorflow/|_call_tf_sessionrun|run_unbatched")),
    ("PNG decode + preprocessing", re.compile(r"PIL/|gateway/preprocess|content_normalization")),
    ("batch scheduling", re.compile(r"model_server/batching/")),
    ("Predict edge (tensors in/out)",
     re.compile(r"model_server/(grpc_service|core|predict|tensor_encoding)")),
    ("protobuf + gRPC (Python side)", re.compile(r"grpc/|model_server_client|call_planner|protobuf|_pb2")),
    ("JSON answer", re.compile(r"json/|jsonify|flask/json")),
    ("HTTP parse + write (gunicorn)", re.compile(r"gunicorn/http/")),
    ("Flask / werkzeug dispatch", re.compile(r"flask/|werkzeug/")),
    ("tutorial view (numpy glue)", re.compile(r"tutorial_app")),
    # grpc.aio's server runs in Cython under asyncio's loop: its frames end at Handle._run.
    ("asyncio loop + gRPC aio (Cython)", re.compile(r"asyncio/|base_events|events\.py")),
    ("server loop + thread plumbing",
     re.compile(r"gunicorn/|http_worker|selectors|socket\.py|threading\.py")),
]

# A leaf that blocks: py-spy (--nonblocking) counts a thread waiting in C as active, so the leaves
# where a thread waits (a lock, a queue, a poll, grpcio's completion queue, a blocking call's
# answer) are named here and their samples left out of the steps.
_WAITING = re.compile(
    r"^(Condition\.wait|Event\.wait|\S*\.select|_wait_once|Thread\.join|Handler\.acquire|Condition\.__enter__"
    r"|GatewayThreadWorker\.handle|_worker|_run_channel_spin_thread\.<locals>\.channel_spin"
    r"|_UnaryUnaryMultiCallable\._blocking) ")


def thread_cpu(pid: int) -> dict[tuple[int, int], tuple[str, float]]:
    """Each live thread of `pid`: (tid, start time) -> (name, digits dropped; CPU seconds so far).

    Keyed by thread, not name: on Python 3.11 every Python thread shares the process's name, so
    one that ends would take its lifetime's CPU out of the others'. The start time tells a tid
    the kernel reused from the thread that had it before.
    """
    threads: dict[tuple[int, int], tuple[str, float]] = {}
    for task in Path(f"/proc/{pid}/task").glob("[0-9]*"):
        try:
            name = re.sub(r"[\d#_.-]+$", "", (task / "comm").read_text().strip()) or "?"
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        threads[int(task.name), int(fields[19])] = (name, (int(fields[11]) + int(fields[12])) / _TICKS)
    return threads


def cpu_by_name(before: dict[tuple[int, int], tuple[str, float]],
                after: dict[tuple[int, int], tuple[str, float]]) -> dict[str, float]:
    """CPU seconds spent between two thread_cpu reads, added up by thread name. A thread that
    started in between counts from 0; one that ended is in neither sum, only in its process's."""
    spent: dict[str, float] = collections.defaultdict(float)
    for key, (name, seconds) in after.items():
        spent[name] += seconds - before.get(key, (name, 0.0))[1]
    return spent


def malloc_calls(pid: int) -> int:
    """The allocations bench/malloc_count.c has counted in `pid` so far (to within 4096)."""
    path = Path(MALLOC_COUNT_DIR) / str(pid)
    try:
        return int(path.read_text())
    except (OSError, ValueError) as error:
        # No file: the preload did not take in that process; a 0 would read as no allocations.
        raise SystemExit(f"cpu_budget: MALLOC_COUNT_DIR is set but {path} cannot be read ({error}): "
                         "start with LD_PRELOAD=<malloc_count.so> PYTHONMALLOC=malloc") from error


def classify(stack_text: str) -> str:
    if _WAITING.search(stack_text.rsplit(";", 1)[-1]):
        return "waiting (not CPU)"
    for step, pattern in STEPS:
        if any(pattern.search(frame) for frame in stack_text.split(";")):
            return step
    return "other Python"


def read_py_spy(path: Path) -> collections.Counter[str]:
    """Samples per step from py-spy's raw output ("frame;frame;... count" per line)."""
    steps: collections.Counter[str] = collections.Counter()
    for line in path.read_text().splitlines():
        stack_text, _, count = line.rpartition(" ")
        if stack_text and count.isdigit():
            steps[classify(stack_text)] += int(count)
    return steps


@contextlib.contextmanager
def watched(pids: dict[str, int], mode: str, out: Path, seconds: float, rate: int) -> Iterator[None]:
    """py-spy or strace attached to each process for the block's length (mode 'plain': nothing)."""
    tools: list[tuple[str, subprocess.Popen, IO[bytes]]] = []
    with contextlib.ExitStack() as stderrs:
        for role, pid in pids.items():
            if mode == "profile":
                # --gil: only the thread holding the GIL, so that a thread waiting for it (after a
                # socket write, a PNG decode) is not counted as working there.
                command = [str(PY_SPY), "record", "--format", "raw", "--nonblocking", "--gil",
                           "--rate", str(rate), "--pid", str(pid), "--duration", str(max(1, round(seconds))),
                           "--output", str(out / f"{role}.txt")]
            elif mode == "strace":
                command = ["strace", "-c", "-f", "-q", "-o", str(out / f"{role}.strace"), "-p", str(pid)]
            else:
                continue
            # stderr kept: a tool that could not attach says why there, and its figures are missing.
            stderr = stderrs.enter_context(tempfile.TemporaryFile())
            tools.append((role, subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr), stderr))
        try:
            yield
        finally:
            for role, tool, output in tools:
                if mode == "strace":
                    tool.send_signal(signal.SIGINT)
                try:
                    tool.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    tool.kill()
                    tool.wait()
                if tool.returncode:
                    output.seek(0)
                    logger.warning("%s on %s exited %d: %s", mode, role, tool.returncode,
                                   output.read().decode(errors="replace").strip()[-2000:])


def syscalls(path: Path) -> dict[str, int]:
    """strace -c's summary: calls per syscall."""
    counts: dict[str, int] = {}
    for line in path.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[0].replace(".", "").isdigit() and fields[-1] != "total":
            counts[fields[-1]] = int(fields[3])
    return counts


def measure(label: str, url: str, pids: dict[str, int], workload: Workload, args: argparse.Namespace,
            wrk: str, out: Path) -> dict:
    bodies = workload.multipart_bodies()
    options = {"label": label, "model": workload.model}
    http_load.run_wrk(wrk, url, bodies, MULTIPART_CONTENT_TYPE, args.concurrency, 1.0, **options)  # warm-up
    before = {role: thread_cpu(pid) for role, pid in pids.items()}
    process_before = {role: cpu_seconds([pid]) for role, pid in pids.items()}
    mallocs_before = {role: malloc_calls(pid) for role, pid in pids.items()} if MALLOC_COUNT_DIR else {}
    run_dir = out / label
    run_dir.mkdir(parents=True, exist_ok=True)
    with watched(pids, args.mode, run_dir, args.seconds, args.rate):
        result: LoadResult = with_cpu(list(pids.values()), lambda: http_load.run_wrk(
            wrk, url, bodies, MULTIPART_CONTENT_TYPE, args.concurrency, args.seconds, **options))
    sent = max(result.sent, 1)
    row: dict = {"target": label, "model": workload.model, "mode": args.mode,
                 "requests_per_second": round(result.throughput, 1), "cpu_ms": round(result.server_cpu_ms, 3),
                 "others": round(result.other_cpu_share, 3), "sent": sent, "processes": {}}
    if MALLOC_COUNT_DIR:
        row["malloc_counting"] = True
    for role, pid in pids.items():
        after = thread_cpu(pid)
        threads = {name: round(seconds * 1e6 / sent)
                   for name, seconds in cpu_by_name(before[role], after).items() if seconds > 0}
        # The main thread's name is every Python thread's ("python", "python3." as python3.11).
        python_name = next((name for (tid, _), (name, _) in after.items() if tid == pid), None)
        # A thread that ended during the run is in its process's time, not in any thread's.
        total = round((cpu_seconds([pid]) - process_before[role]) * 1e6 / sent)
        threads["(ended threads)"] = total - sum(threads.values())
        row["processes"][role] = {"us": total, "threads_us": threads}
        if MALLOC_COUNT_DIR:
            mallocs = malloc_calls(pid) - mallocs_before[role]
            row["processes"][role]["mallocs_per_request"] = round(mallocs / sent)
        if args.mode == "profile" and (run_dir / f"{role}.txt").exists():
            # The Python threads' CPU shared out by the GIL-holding samples: a thread holding the GIL
            # but descheduled still counts, C run without the GIL (TensorFlow's kernels on the
            # calling thread, Pillow's inflate) does not; hence shares, not seconds.
            samples = read_py_spy(run_dir / f"{role}.txt")
            working = [(step, n) for step, n in samples.most_common() if not step.startswith("waiting")]
            python_us = threads.get(python_name, 0) if python_name else 0
            if not python_us:
                logger.warning("%s: no CPU found on its Python threads (main thread %s)", role, python_name)
            samples_total = sum(n for _, n in working) or 1
            row["processes"][role]["python_steps_us"] = {
                step: round(python_us * n / samples_total) for step, n in working}
        if args.mode == "strace" and (run_dir / f"{role}.strace").exists():
            counts = syscalls(run_dir / f"{role}.strace")
            row["processes"][role]["syscalls_per_request"] = {
                name: round(count / sent, 2) for name, count in sorted(counts.items(), key=lambda kv: -kv[1])}
    return row


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mnist")
    parser.add_argument("--models-dir", type=Path, required=True)
    parser.add_argument("--data-dir", default=os.environ.get("DATA_DIR", "data"))
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--mode", choices=["plain", "profile", "strace"], default="plain")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--out", type=Path, default=Path("bench-results/cpu-budget"))
    parser.add_argument("--gateway-env", nargs="*", action="append", metavar="KEY=VALUE",
                        help="a gateway with these settings; several --gateway-env run several gateways "
                        "in turns (an empty one: the defaults)")
    parser.add_argument("--server-flags", nargs="*", default=[])
    parser.add_argument("--batching-parameters", type=Path,
                        default=servers.ROOT / "serving" / "config" / "batching_parameters.txt")
    parser.add_argument("--tutorial-layout", nargs="*", default=[f"{len(os.sched_getaffinity(0))}x4"],
                        metavar="WORKERSxTHREADS", help="one tutorial app per layout, in turns")
    parser.add_argument("--skip", nargs="*", choices=["gateway", "tutorial"], default=[])
    return parser.parse_args()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parse_args()
    wrk = http_load.find_wrk()
    tool = {"plain": "true", "profile": str(PY_SPY), "strace": "strace"}[args.mode]
    if wrk is None or not shutil.which(tool):
        raise SystemExit(f"cpu_budget: wrk and, for --mode {args.mode}, its tool must be installed")
    models_dir = args.models_dir.resolve()
    workload = load_workload(args.model, args.data_dir, models_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    flags = [*stack.batching_flags(args.batching_parameters), *args.server_flags]
    with tempfile.TemporaryDirectory(prefix="pixelgate-budget-") as scratch, contextlib.ExitStack() as up:
        config = servers.write_model_config([args.model], models_dir, Path(scratch) / "models.config")
        server = up.enter_context(servers.model_server(config, args.out / "server.log", *flags))
        targets = []
        for index, items in enumerate([] if "gateway" in args.skip else args.gateway_env or [[]]):
            environment = {"MODELS": args.model, **dict(item.split("=", 1) for item in items)}
            base, gateway = up.enter_context(
                servers.gateway(server.target, models_dir, environment, args.out / f"gateway-{index}.log"))
            url = f"{base}/v1/models/{args.model}:predict"
            servers.post_until_ok(url, workload, gateway)
            workers = process_tree(gateway.pid)[1:]
            pids = {"model server": server.pid,
                    **{f"gateway worker {i}": pid for i, pid in enumerate(workers)}}
            targets.append((" ".join(["gateway", *items]), url, pids))
        for layout_text in [] if "tutorial" in args.skip else args.tutorial_layout:
            workers_text, _, threads_text = layout_text.partition("x")
            layout = servers.TutorialLayout(int(workers_text), int(threads_text))
            tutorial_url, tutorial_pids = up.enter_context(
                servers.tutorial_app(workload, models_dir, args.out, layout))
            pids = {"tutorial master": tutorial_pids[0],
                    **{f"tutorial worker {i}": pid for i, pid in enumerate(tutorial_pids[1:])}}
            targets.append((f"tutorial {layout_text}", tutorial_url, pids))
        for _ in range(args.rounds):
            for label, url, pids in targets:
                row = measure(label, url, pids, workload, args, wrk, args.out)
                row["server_flags"] = [*args.server_flags, args.batching_parameters.name]
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
