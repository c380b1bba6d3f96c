"""The benchmark's load generators and report against the real servers of the test session,
for a second each: answers are counted, errors are not, and the table shows what ran.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import subprocess
import sys

import grpc
import numpy as np
import pytest

from bench import grpc_load, http_load, report
from bench.cpu import cpu_description
from bench.stats import LoadResult
from bench.workload import MULTIPART_CONTENT_TYPE, load_workload
from serving.protos.inference import grpc_predict_v2_pb2
from serving.protos.tensorflow_serving.apis import predict_pb2
from serving.tensors import make_ndarray
from tests.conftest import DATA_DIR


@pytest.fixture(scope="module")
def workload(models_dir):
    return load_workload("mnist", DATA_DIR, models_dir)


def test_grpc_load_closed_and_open_loop(model_server, workload):
    closed = grpc_load.run_closed_loop(
        model_server, workload.predict_requests(), 4, 1.0, label=report.SERVER, model="mnist", warmup=0.2
    )
    assert closed.requests > 0 and not closed.errors
    assert closed.sent >= closed.requests and closed.p50_ms <= closed.p99_ms
    opened = grpc_load.run_open_loop(
        model_server, workload.predict_requests(), 50, 1.0, label=report.SERVER, model="mnist"
    )
    assert opened.requests == 50 and not opened.errors  # every scheduled call answered


@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load is not installed (nghttp2-client)")
def test_h2load_counts_answered_predicts_and_not_refused_ones(model_server, workload):
    h2load, requests = shutil.which("h2load"), workload.predict_requests()
    answered = grpc_load.run_h2load(
        h2load, model_server, requests, 4, 1.0, label=report.SERVER, model="mnist", warmup=0.2
    )
    assert answered.requests > 0 and not answered.errors and answered.tool == "h2load"
    assert answered.sent > answered.requests and answered.p50_ms <= answered.p99_ms
    # gRPC refuses with HTTP 200 and a status trailer, no message: h2load alone would count it.
    refused = predict_pb2.PredictRequest.FromString(requests[0])
    refused.model_spec.name = "no-such-model"
    size = len(grpc_load_answer(model_server, requests[0]))
    failed = grpc_load.run_h2load(
        h2load,
        model_server,
        [refused.SerializeToString()],
        4,
        1.0,
        label=report.SERVER,
        model="mnist",
        warmup=0,
        answer_size=size,
    )
    assert failed.requests == 0 and failed.errors["NO_MESSAGE"] > 4


def grpc_load_answer(target: str, request: bytes, method: str = grpc_load.PREDICT) -> bytes:
    with grpc.insecure_channel(target) as channel:
        return channel.unary_unary(method)(request, timeout=30)


def test_v2_model_infer_requests_carry_the_predict_images_and_get_its_answers(model_server, workload):
    infer, predict = workload.model_infer_requests(), workload.predict_requests()
    assert len(infer) == len(predict)
    request = grpc_predict_v2_pb2.ModelInferRequest.FromString(infer[0])
    (tensor,) = request.inputs
    assert (request.model_name, tensor.name, tensor.datatype, list(tensor.shape)) == (
        "mnist", workload.input_key, "FP32", [1, *workload.shape]
    )
    assert [output.name for output in request.outputs] == ["probabilities"]
    image = np.frombuffer(request.raw_input_contents[0], "<f4").reshape(workload.shape)
    assert np.array_equal(image, workload.floats()[0])  # the bytes Predict's tensor_content has
    answer = grpc_predict_v2_pb2.ModelInferResponse.FromString(
        grpc_load_answer(model_server, infer[0], grpc_load.MODEL_INFER)
    )
    predicted = predict_pb2.PredictResponse.FromString(grpc_load_answer(model_server, predict[0]))
    assert [output.name for output in answer.outputs] == ["probabilities"]
    probabilities = make_ndarray(predicted.outputs["probabilities"]).ravel()
    np.testing.assert_allclose(np.frombuffer(answer.raw_output_contents[0], "<f4"), probabilities, atol=1e-6)
    closed = grpc_load.run_closed_loop(
        model_server, infer, 4, 0.5, label=report.SERVER_V2, model="mnist", warmup=0.1,
        method=grpc_load.MODEL_INFER,
    )
    assert closed.requests > 0 and not closed.errors


@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load is not installed (nghttp2-client)")
def test_h2load_runs_model_infer_at_c32(model_server, workload):
    answered = grpc_load.run_h2load(
        shutil.which("h2load"), model_server, workload.model_infer_requests(), 32, 1.0, warmup=0.2,
        label=report.SERVER_V2, model="mnist", method=grpc_load.MODEL_INFER,
    )  # its answers counted by their size, as Predict's (a refused call has none: test above)
    assert answered.requests > 0 and not answered.errors and answered.tool == "h2load"


def test_http_load_posts_pngs_the_gateway_accepts(gateway_url, workload):
    url = f"{gateway_url}/v1/models/mnist:predict"
    bodies = workload.multipart_bodies()
    closed = http_load.run_python_closed_loop(
        url, bodies, MULTIPART_CONTENT_TYPE, 4, 1.0, label=report.GATEWAY, model="mnist"
    )
    assert closed.requests > 0 and not closed.errors
    opened = http_load.run_python_open_loop(
        url, bodies, MULTIPART_CONTENT_TYPE, 20, 1.0, label=report.GATEWAY, model="mnist"
    )
    assert opened.requests == 20 and not opened.errors
    broken = http_load.run_python_closed_loop(
        url, [b"not an image"], "image/png", 1, 0.5, label=report.GATEWAY, model="mnist"
    )
    assert broken.requests == 0 and broken.errors.get(
        "HTTP 400"
    )  # a refused upload is an error, not a result


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)")
def test_wrk_posts_pngs_the_gateway_accepts(gateway_url, workload):
    result = http_load.run_wrk(
        shutil.which("wrk"),
        f"{gateway_url}/v1/models/mnist:predict",
        workload.multipart_bodies(),
        MULTIPART_CONTENT_TYPE,
        2,
        1,
        label=report.GATEWAY,
        model="mnist",
    )
    assert result.requests > 0 and not result.errors and result.p50_ms > 0


def test_score_cost_runs_the_export_with_and_without_its_score(models_dir, workload):
    import tensorflow as tf

    from bench import score_cost, servers

    version_dir = models_dir / "mnist" / "1"
    images = workload.floats()[:4]
    frozen = score_cost.FrozenSignature(version_dir)
    plain, = frozen.runner(["probabilities"])(images)
    probabilities, scores = frozen.runner(["probabilities", "ood_score"])(images)
    loaded = tf.saved_model.load(str(version_dir))
    answers = loaded.signatures["serving_default"](images=tf.constant(images))
    np.testing.assert_allclose(plain, answers["probabilities"].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probabilities, plain, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scores, answers["ood_score"].numpy(), rtol=1e-4, atol=1e-4)
    # Without the score, its ops do not run: the "plain" row is a prediction without them.
    without = frozen.executed_nodes(["probabilities"], images)
    with_score = frozen.executed_nodes(["probabilities", "ood_score"], images)
    assert without < with_score and len(with_score - without) >= 5
    frozen.close()
    # Timed in a process of its own, whose thread pools start with one thread.
    measured = subprocess.run(
        [sys.executable, "-m", "bench.score_cost", "--models-dir", str(models_dir),
         "--data-dir", str(DATA_DIR), "--model", "mnist", "--seconds", "0.2", "--rounds", "1"],
        capture_output=True, text=True, timeout=300, cwd=servers.ROOT,
    )
    assert measured.returncode == 0, measured.stderr[-2000:]
    rows = [json.loads(line)["score_cost"] for line in measured.stdout.splitlines() if line.startswith("{")]
    assert [row["batch_size"] for row in rows] == [1, 2, 4, 8, 16, 32]
    assert all(row["plain_us"] > 0 and row["scored_us"] > 0 for row in rows)


def test_explain_latency_is_measured_through_the_gateway(gateway_url, workload):
    result = http_load.run_python_closed_loop(
        f"{gateway_url}/v1/models/mnist:predict?explain=true", workload.multipart_bodies(),
        MULTIPART_CONTENT_TYPE, 1, 1.0, label=report.EXPLAIN, model="mnist",
    )
    assert result.requests > 0 and not result.errors and result.p50_ms > 0


def test_report_shows_every_run_and_judges_the_goals():
    runs = report.Report(header=["test"], in_process={"mnist": {1: 100.0, 32: 1000.0}})
    for target, throughput_per_second in (
        (report.SERVER_BATCHING, 700),
        (report.SERVER_V2, 665),
        (report.GATEWAY, 300),
        (report.TUTORIAL, 100),
        (report.TUTORIAL_DEV, 60),
    ):
        runs.results.append(
            LoadResult(
                target, "mnist", 32, None, throughput_per_second * 2, 2.0, p50_ms=10, p95_ms=20, p99_ms=25
            )
        )
    text = report.render(runs)
    assert "gateway / tutorial (gunicorn) at c=32: 3.00x  goal >= 2x: met" in text
    # The development server's figure is a labelled reference, never judged against the goal.
    assert "gateway / tutorial (Flask dev server) at c=32: 5.00x  (for reference: no goal)" in text
    assert f"mnist    {report.TUTORIAL_DEV:<30}      c=32" in text
    assert "model server gRPC, batching at c=32 / in-process batch 32: 70%  goal >= 60%: met" in text
    assert "v2 ModelInfer / Predict at c=32 (gRPC, batching): 0.95  goal >= 0.9: met" in text
    runs.results[1].requests = 1200  # 600/s: 0.86 of Predict's
    assert "Predict at c=32 (gRPC, batching): 0.86  goal >= 0.9: MISSED" in report.render(runs)
    # A gateway path of 2.0 CPU ms per request: 60 µs more is 3 %, 120 µs 6 %.
    runs.find(report.GATEWAY, "mnist", 32).server_cpu_ms = 2.0
    runs.score_cost["mnist"] = [{"batch_size": 1, "plain_us": 500.0, "scored_us": 560.0},
                                {"batch_size": 32, "plain_us": 8000.0, "scored_us": 8400.0}]
    runs.results.append(LoadResult(report.EXPLAIN, "mnist", 1, None, 20, 2.0, p50_ms=160, p95_ms=170))
    text = report.render(runs)
    assert "ood_score in the model at batch 1: 500 -> 560 CPU us per call (+12.0%)" in text
    assert "ood_score in the model at batch 32: 8000 -> 8400 CPU us per call (+5.0%)" in text
    # Without the server's batches on record, a lone image's extra CPU is judged against c=32's, as a share
    # of the CPU per request without it: 60 of 1,940 µs.
    assert ("ood_score at batch 1, of the gateway path's 2.00 CPU ms per request at c=32: +3.1%  "
            "goal <= 5%: met") in text
    assert "ood_score at batch 1, of a lone request's (c=1)" not in text  # no c=1 run in this report
    runs.results.append(LoadResult(report.GATEWAY, "mnist", 1, None, 100, 2.0, p50_ms=9, p95_ms=11,
                                   server_cpu_ms=6.0))
    assert ("ood_score at batch 1, of a lone request's (c=1) 6.00 CPU ms: +1.0%  (for reference; the goal "
            "is judged at c=32)") in report.render(runs)
    assert "explain=true, one image at a time: p50 160.0 ms  goal <= 150 ms: MISSED" in text
    runs.score_cost["mnist"][0]["scored_us"] = 620.0
    assert "+6.4%  goal <= 5%: MISSED" in report.render(runs)
    assert text.count("mnist ") >= 5
    # With them, the score's extra CPU per image over the batches the server ran is judged: 120 µs per call
    # at batch 1, 200 at batch 4, so 146.7 at 2; two batches of 1, two of 2 and one of 4 hold 10 images:
    # 733.3 µs, 73.3 per image, 3.8 % of 2,000 - 73.3 µs.
    runs.score_cost["mnist"].insert(1, {"batch_size": 4, "plain_us": 1500.0, "scored_us": 1700.0})
    gateway = runs.find(report.GATEWAY, "mnist", 32)
    gateway.batch_counts, gateway.mean_batch_size = {1: 2, 2: 2, 4: 1}, 2.0
    text = report.render(runs)
    assert ("ood_score at c=32, in the model server's batches of 2.0 images on average: +73 CPU us per "
            "image, of the gateway path's 2.00 CPU ms per request: +3.8%  goal <= 5%: met") in text
    assert "per request at c=32: +6.4%  (an upper bound, for reference)" in text
    assert "ood_score per image at batch 1, 4, 32: +120, +50, +12 CPU us" in text
    # Past the largest batch measured, the cost per call grows in proportion.
    assert report.added_per_call(runs.score_cost["mnist"], 64) == pytest.approx(800)


def test_tutorial_app_runs_on_gunicorn_with_a_worker_per_core_each_loading_the_model(
    models_dir, workload, tmp_path
):
    from bench import servers

    layout = servers.TutorialLayout(workers=2, threads=2)
    assert layout.describe().startswith("gunicorn, 2 gthread workers x 2 threads")
    with servers.tutorial_app(workload, models_dir, tmp_path, layout) as (url, pids):
        assert len(pids) == 3  # gunicorn's master and its two workers: the CPU counted is theirs
        closed = http_load.run_python_closed_loop(
            url, workload.multipart_bodies(), MULTIPART_CONTENT_TYPE, 4, 1.0, label=report.TUTORIAL,
            model="mnist",
        )
    assert closed.requests > 0 and not closed.errors
    log = (tmp_path / "tutorial-mnist.log").read_text()
    assert log.count(servers.TUTORIAL_LOADED) == 2  # no --preload: each worker loaded its own copy


def test_grpc_floor_answers_predict_and_its_share_is_reported(workload):
    import subprocess
    import sys

    from bench.cpu import with_cpu
    from serving import stack

    port = stack.free_port()
    floor = subprocess.Popen(
        [sys.executable, "-m", "bench.grpc_floor", f"--port={port}"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert floor.stdout.readline().strip() == "ready"
        result = with_cpu(
            [floor.pid],
            lambda: grpc_load.run_closed_loop(
                f"127.0.0.1:{port}",
                workload.predict_requests(),
                4,
                0.5,
                label=report.FLOOR,
                model="mnist",
                warmup=0.1,
            ),
        )
    finally:
        stack.stop(floor)
        floor.stdout.close()
    assert result.requests > 0 and not result.errors
    assert result.server_cpu_ms > 0 and result.load_cpu_ms > 0
    runs = report.Report(header=["test"], in_process={"mnist": {32: 1000.0}}, results=[result])
    text = report.render(runs)
    assert f"mnist    {report.FLOOR} at c=32" not in text  # only c=4 ran: no ratio without the c=32 run
    result.concurrency = 32
    assert f"{report.FLOOR} at c=32 / in-process batch 32: " in report.render(runs)


def test_runs_that_shared_the_machine_are_measured_and_marked():
    import subprocess
    import sys
    import time

    from bench.cpu import with_cpu

    def idle_run() -> LoadResult:
        time.sleep(0.8)
        return LoadResult(report.GATEWAY, "mnist", 8, None, 100, 0.8, p50_ms=5, p95_ms=8, p99_ms=9, sent=100)

    # A process outside the measured ones (not waited for during the run) burns a core meanwhile.
    burn = "import time\nend = time.time() + 2\nwhile time.time() < end: pass"
    hog = subprocess.Popen([sys.executable, "-c", burn])
    try:
        time.sleep(0.2)  # the interpreter is up and spinning
        shared = with_cpu([], idle_run)
    finally:
        hog.kill()
        hog.wait()
    assert shared.other_cpu_share > 0.5 / len(os.sched_getaffinity(0))  # about one of the cores
    shared.other_cpu_share = max(shared.other_cpu_share, 0.5)  # a many-core machine's share is small
    runs = report.Report(header=["test"], results=[shared])
    text = report.render(runs)
    assert "* others used" in text
    assert "1 of 1 runs (marked *) shared the machine" in text
    shared.other_cpu_share = 0.01
    assert "shared the machine" not in report.render(runs)


def test_http_runs_take_turns_and_keep_each_targets_best_round(gateway_url, workload, monkeypatch):
    import argparse

    from bench import phases

    order = []
    measure = phases.with_cpu

    def recorded(pids, run):
        measured = measure(pids, run)
        order.append((measured.target, measured.concurrency))
        return measured

    monkeypatch.setattr(phases, "with_cpu", recorded)
    args = argparse.Namespace(http_concurrency=[1, 2], rounds=2, seconds=0.5)
    targets = [
        (report.GATEWAY, f"{gateway_url}/v1/models/mnist:predict", [os.getpid()]),
        (report.TUTORIAL, f"{gateway_url}/v1/models/no_such_model:predict", [os.getpid()]),
    ]
    gateway, refused = phases.http_runs(args, targets, workload, wrk=None)
    # Round by round, each target in turn, each first in every other round: a slower or faster
    # machine meanwhile weighs on both.
    gateway_1, tutorial_1, gateway_2, tutorial_2 = (
        (report.GATEWAY, 1), (report.TUTORIAL, 1), (report.GATEWAY, 2), (report.TUTORIAL, 2)
    )
    assert order == [
        gateway_1, tutorial_1, tutorial_1, gateway_1, gateway_2, tutorial_2, tutorial_2, gateway_2
    ]
    assert [(r.target, r.concurrency) for r in gateway] == [(report.GATEWAY, 1), (report.GATEWAY, 2)]
    assert all(r.requests > 0 and not r.errors for r in gateway)
    assert [(r.target, r.concurrency) for r in refused] == [(report.TUTORIAL, 1), (report.TUTORIAL, 2)]
    assert all(r.requests == 0 and r.errors.get("HTTP 404") for r in refused)


def test_cpu_description_names_the_model_and_its_vector_extensions():
    xeon = (
        "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8488C\n"
        "flags\t\t: fpu sse2 avx2 avx512f avx512_vnni avx512_bf16 amx_tile\n\n"
        "processor\t: 1\nmodel name\t: Other\nflags\t\t: fpu avx2\n"
    )
    assert cpu_description(xeon) == (
        "Intel(R) Xeon(R) Platinum 8488C, AVX2, AVX-512, AVX512-VNNI, AVX512-BF16, AMX"
    )
    assert cpu_description("model name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2 fma\n") == "AMD EPYC, AVX2"
    alder_lake = "model name\t: 12th Gen Intel(R) Core(TM) i7-1265U\nflags\t\t: avx2 avx_vnni\n"
    assert cpu_description(alder_lake) == "12th Gen Intel(R) Core(TM) i7-1265U, AVX2, AVX-VNNI"
    graviton = "processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd sve\nCPU part\t: 0xd40\n"
    assert cpu_description(graviton) == f"{platform.machine() or 'CPU unknown'}, NEON, SVE"


def test_gateway_runs_record_the_batches_the_model_server_ran(models_dir, workload, tmp_path):
    import argparse

    from bench import phases, servers
    from serving import stack

    config = servers.write_model_config(["mnist"], models_dir, tmp_path / "models.config")
    flags = stack.batching_flags(stack.ROOT / "serving" / "config" / "batching_parameters.txt")
    environment, log = {"MODELS": "mnist", "GATEWAY_WORKERS": "2"}, tmp_path / "gateway.log"
    with (servers.model_server(config, tmp_path / "server.log", *flags, metrics=True) as server,
          servers.gateway(server.target, models_dir, environment, log) as (base, gateway)):
        before = server.processed_batches()
        args = argparse.Namespace(http_concurrency=[8], rounds=1, seconds=1.0)
        targets = [(report.GATEWAY, f"{base}/v1/models/mnist:predict", [server.pid, gateway.pid])]
        counters = {report.GATEWAY: server.processed_batches}
        (result,), = phases.http_runs(args, targets, workload, None, counters)
        batched, images = server.processed_batches().since(before)
    assert result.requests > 0 and not result.errors
    # Eight requests in flight at most.
    assert set(result.batch_counts) <= {1, 2, 4, 8} and 1 <= result.mean_batch_size <= 8
    # The measured second's images (and the few in flight as it ended), not its warm-up's.
    counted = result.mean_batch_size * sum(result.batch_counts.values())
    assert result.requests <= round(counted) <= result.requests + 8 and counted < images
    assert sum(result.batch_counts.values()) < sum(batched.values())
    assert sum(size * count for size, count in result.batch_counts.items()) >= counted  # bucket bounds
    unrecorded = phases.with_batches(None, lambda: LoadResult(report.GATEWAY, "mnist", 32, None, 1, 1.0))
    assert not unrecorded.batch_counts and math.isnan(unrecorded.mean_batch_size)
