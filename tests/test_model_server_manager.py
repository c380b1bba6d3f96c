"""ModelManager: version policies, file-system polling, load-before-unload, labels, load failures, warmup."""

from __future__ import annotations

import asyncio
import gc
import logging
import shutil
import threading
import time
import weakref
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc, predict_pb2

from serving.model_server import ServerOptions, build_single_model_config, create_server
from serving.model_server.config import parse_model_server_config
from serving.model_server.core import ModelServerCore
from serving.model_server.errors import FailedPrecondition, ModelServerError, NotFound
from serving.model_server.manager import ModelManager, VersionState
from tests.model_fixtures.keras_classifier import export_test_model, random_images, write_warmup_requests

AVAILABLE, END = VersionState.AVAILABLE, VersionState.END
# No background polling, no retry waits: each test polls when it wants to.
OPTIONS = ServerOptions(file_system_poll_wait_seconds=0, max_num_load_retries=0)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[int, Path]:
    """Versions 1-3 of a tiny model, exported once; tests copy them where they need them."""
    root = tmp_path_factory.mktemp("exported")
    return {version: Path(export_test_model(root / str(version), seed=version)) for version in (1, 2, 3)}


@pytest.fixture
def base_path(tmp_path, exported) -> Path:
    path = tmp_path / "model"
    path.mkdir()
    return path


def add_version(base_path: Path, exported: dict[int, Path], version: int) -> None:
    shutil.copytree(exported[version], base_path / str(version))


@pytest.fixture
def start_manager():
    managers: list[ModelManager] = []

    def start(config, options: ServerOptions = OPTIONS) -> ModelManager:
        manager = ModelManager(options)
        managers.append(manager)
        manager.reload_config(config)
        return manager

    yield start
    for manager in managers:
        manager.stop()


def states(manager: ModelManager, name: str = "model") -> dict[int, VersionState]:
    return {version: status.state for version, status in manager.version_states(name).items()}


def config_with_policy(base_path: Path, policy: str):
    return parse_model_server_config(
        f'model_config_list {{ config {{ name: "model" base_path: "{base_path}" model_platform: "tensorflow" '
        f"model_version_policy {{ {policy} }} }} }}"
    )


def test_latest_policy_serves_the_newest_version(base_path, exported, start_manager):
    for version in (1, 2):
        add_version(base_path, exported, version)
    manager = start_manager(build_single_model_config("model", str(base_path)))
    assert states(manager) == {2: AVAILABLE}


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("latest { num_versions: 2 }", {3: AVAILABLE, 2: AVAILABLE}),
        ("all {}", {3: AVAILABLE, 2: AVAILABLE, 1: AVAILABLE}),
        ("specific { versions: 1 versions: 3 }", {3: AVAILABLE, 1: AVAILABLE}),
    ],
)
def test_version_policies(base_path, exported, start_manager, policy, expected):
    for version in (1, 2, 3):
        add_version(base_path, exported, version)
    manager = start_manager(config_with_policy(base_path, policy))
    assert states(manager) == expected


def test_non_numeric_directories_are_ignored(base_path, exported, start_manager):
    add_version(base_path, exported, 1)
    (base_path / "tmp-export").mkdir()
    (base_path / "2.partial").mkdir()
    manager = start_manager(build_single_model_config("model", str(base_path)))
    assert states(manager) == {1: AVAILABLE}


def test_new_version_is_loaded_before_the_old_one_goes(base_path, exported, start_manager):
    add_version(base_path, exported, 1)
    manager = start_manager(build_single_model_config("model", str(base_path)))
    core = ModelServerCore(manager)
    images = random_images(1)
    served: set[int] = set()
    failures: list[Exception] = []
    done = threading.Event()

    def keep_predicting() -> None:
        while not done.is_set():
            try:
                served.add(asyncio.run(core.predict("model", {"images": images})).version)
            except ModelServerError as error:
                failures.append(error)

    client = threading.Thread(target=keep_predicting)
    client.start()
    try:
        add_version(base_path, exported, 2)
        manager.poll_file_system()
    finally:
        done.set()
        client.join()
    assert not failures
    assert states(manager) == {2: AVAILABLE, 1: END}
    assert asyncio.run(core.predict("model", {"images": images})).version == 2
    with pytest.raises(NotFound, match=r"Specific\(model, 1\)"):
        asyncio.run(core.predict("model", {"images": images}, version=1))


def test_polling_thread_picks_up_a_new_version(base_path, exported, start_manager):
    add_version(base_path, exported, 1)
    manager = start_manager(
        build_single_model_config("model", str(base_path)), ServerOptions(file_system_poll_wait_seconds=1)
    )
    manager.start()
    add_version(base_path, exported, 2)
    deadline = time.monotonic() + 20
    while states(manager).get(2) != AVAILABLE and time.monotonic() < deadline:
        time.sleep(0.1)
    assert states(manager)[2] == AVAILABLE


def test_removed_version_directory_is_unloaded(base_path, exported, start_manager):
    for version in (1, 2):
        add_version(base_path, exported, version)
    manager = start_manager(config_with_policy(base_path, "all {}"))
    shutil.rmtree(base_path / "1")
    manager.poll_file_system()
    assert states(manager) == {2: AVAILABLE, 1: END}


def test_loading_freezes_the_heap_and_an_unloaded_version_is_still_freed(base_path, exported, start_manager):
    # Full collections would otherwise walk TensorFlow's ~300,000 objects mid-request (tail latency).
    gc.unfreeze()
    try:
        for version in (1, 2):
            add_version(base_path, exported, version)
        manager = start_manager(config_with_policy(base_path, "all {}"))
        assert gc.get_freeze_count() > 0
        bundle = weakref.ref(manager._serving["model"][1])
        shutil.rmtree(base_path / "1")
        manager.poll_file_system()
        assert states(manager) == {2: AVAILABLE, 1: END}
        assert bundle() is None  # not kept alive by the frozen generation
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_version_labels_must_name_available_versions(base_path, exported, start_manager):
    for version in (1, 2):
        add_version(base_path, exported, version)
    labelled = config_with_policy(base_path, "all {}")
    labelled.model_config_list.config[0].version_labels["stable"] = 1
    # As in TF Serving: at startup nothing is loaded yet, so a label is refused...
    with pytest.raises(FailedPrecondition, match="Request to assign label to version 1 of model model"):
        start_manager(labelled)
    # ...unless --allow_version_labels_for_unavailable_models, or once the version serves.
    allowing = ServerOptions(
        file_system_poll_wait_seconds=0,
        max_num_load_retries=0,
        allow_version_labels_for_unavailable_models=True,
    )
    core = ModelServerCore(start_manager(labelled, allowing))
    result = asyncio.run(core.predict("model", {"images": random_images(1)}, version_label="stable"))
    assert result.version == 1
    manager = start_manager(config_with_policy(base_path, "all {}"))
    manager.reload_config(labelled)
    core = ModelServerCore(manager)
    result = asyncio.run(core.predict("model", {"images": random_images(1)}, version_label="stable"))
    assert result.version == 1


def test_a_broken_version_fails_startup_with_tf_servings_message(base_path, start_manager):
    (base_path / "1").mkdir()  # no saved_model.pb
    with pytest.raises(ModelServerError) as raised:
        start_manager(build_single_model_config("model", str(base_path)))
    assert raised.value.message.startswith(
        "1 model(s) did not become available: {{{name: model version: 1} due to error: NOT_FOUND: "
        "Could not find SavedModel .pb or .pbtxt"
    )


def test_startup_fails_when_the_newest_version_fails_even_if_an_older_one_loads(
    base_path, exported, start_manager
):
    """TF Serving waits for Latest(model): the first version to become AVAILABLE or reach END
    decides, and versions load newest first. A saved_model.pb that does not parse is DATA_LOSS."""
    add_version(base_path, exported, 1)
    (base_path / "2").mkdir()
    (base_path / "2" / "saved_model.pb").write_bytes(b"garbage")
    with pytest.raises(ModelServerError) as raised:
        start_manager(config_with_policy(base_path, "all {}"))
    assert raised.value.message == (
        "1 model(s) did not become available: {{{name: model version: 2} due to error: DATA_LOSS: "
        f"Can't parse {base_path / '2' / 'saved_model.pb'} as binary proto}}, }}"
    )


def test_one_unaspired_version_serves_until_an_aspired_one_does(base_path, exported, start_manager):
    """AvailabilityPreservingPolicy: of the versions no longer aspired only the newest stays while
    no aspired version loads; once one does, it goes too."""
    for version in (1, 2):
        add_version(base_path, exported, version)
    manager = start_manager(config_with_policy(base_path, "latest { num_versions: 2 }"))
    assert states(manager) == {2: AVAILABLE, 1: AVAILABLE}
    for version in (3, 4):
        (base_path / str(version)).mkdir()  # no saved_model.pb: both fail to load
    manager.poll_file_system()
    assert states(manager) == {4: END, 3: END, 2: AVAILABLE, 1: END}
    assert asyncio.run(ModelServerCore(manager).predict("model", {"images": random_images(1)})).version == 2
    shutil.copytree(exported[3], base_path / "5")  # aspired now: 5, which loads, and the broken 4
    manager.poll_file_system()
    assert states(manager) == {5: AVAILABLE, 4: END, 3: END, 2: END, 1: END}


def test_load_retries_stop_once_the_version_is_no_longer_aspired(base_path, exported, start_manager, caplog):
    add_version(base_path, exported, 1)
    options = ServerOptions(file_system_poll_wait_seconds=0, max_num_load_retries=3,
                            load_retry_interval_micros=3_000_000)
    manager = start_manager(build_single_model_config("model", str(base_path)), options)
    (base_path / "2").mkdir()  # no saved_model.pb: every attempt fails
    poll = threading.Thread(target=manager.poll_file_system)
    with caplog.at_level(logging.INFO, logger="serving.model_server"):
        started = time.monotonic()
        poll.start()
        deadline = time.monotonic() + 30
        while "failed" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
        (base_path / "2").rmdir()  # during the first wait between attempts
        poll.join(timeout=60)
        elapsed = time.monotonic() - started
    assert "Retrying of Loading servable: {name: model version: 2} was cancelled." in caplog.text
    assert caplog.text.count("Loading servable version {name: model version: 2} from") == 2
    assert elapsed < 9  # 4 attempts 3 s apart take 9 s
    assert states(manager) == {2: END, 1: AVAILABLE}


def test_failed_version_is_reported_by_get_model_status(base_path, exported, start_manager):
    add_version(base_path, exported, 1)
    manager = start_manager(config_with_policy(base_path, "all {}"))
    (base_path / "2").mkdir()
    manager.poll_file_system()
    status = ModelServerCore(manager).get_model_status("model")
    assert [(version, entry.state) for version, entry in status.items()] == [(2, END), (1, AVAILABLE)]
    assert status[2].error is not None and status[2].error.code == grpc.StatusCode.NOT_FOUND


def test_warmup_requests_are_replayed_and_a_failing_one_fails_the_load(
    base_path, exported, start_manager, caplog
):
    add_version(base_path, exported, 1)
    request = predict_pb2.PredictRequest()
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(random_images(2)))
    write_warmup_requests(base_path / "1", [request, request])
    with caplog.at_level(logging.INFO):
        manager = start_manager(build_single_model_config("model", str(base_path)))
    assert states(manager) == {1: AVAILABLE}
    assert "Number of warmup records read: 2" in caplog.text

    add_version(base_path, exported, 2)
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(np.zeros((1, 28, 28, 1), np.int32)))
    write_warmup_requests(base_path / "2", [request])
    manager.poll_file_system()
    assert states(manager) == {2: END, 1: AVAILABLE}  # version 1 keeps serving
    error = manager.version_states("model")[2].error
    assert error is not None and error.message == "Expects arg[0] to be float but int32 is provided"


def test_keras_model_saved_through_tf_module_fails_as_in_tf_serving(base_path, start_manager, caplog):
    """tf.Module + tf.saved_model.save of a Keras 3 model: TF Serving answers FAILED_PRECONDITION."""
    import keras

    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    module = tf.Module()
    module.model = model
    module.serve = tf.function(
        lambda images: {"probabilities": model(images)},
        input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.float32, name="images")],
    )
    tf.saved_model.save(module, str(base_path / "1"), signatures={"serving_default": module.serve})
    with caplog.at_level(logging.WARNING):
        manager = start_manager(build_single_model_config("model", str(base_path)))
    assert "its restore op does not initialize" in caplog.text
    with pytest.raises(ModelServerError) as raised:
        asyncio.run(ModelServerCore(manager).predict("model", {"images": random_images(1)}))
    assert raised.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert raised.value.message.startswith("Could not find variable")


def test_reload_config_request_adds_a_model(base_path, exported, tmp_path):
    add_version(base_path, exported, 1)
    other = tmp_path / "other"
    add_version(other, exported, 2)
    server, port = create_server("127.0.0.1:0", build_single_model_config("model", str(base_path)), OPTIONS)
    server.start()
    try:
        request = model_management_pb2.ReloadConfigRequest()
        request.config.CopyFrom(build_single_model_config("model", str(base_path)))
        extra = request.config.model_config_list.config.add(name="other", base_path=str(other))
        extra.model_platform = "tensorflow"
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            response = model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(
                request, timeout=60
            )
        assert response.status.error_code == 0
        assert states(server.manager, "other") == {2: AVAILABLE}
    finally:
        server.stop(0)


def test_model_config_file_is_polled(base_path, exported, tmp_path):
    add_version(base_path, exported, 1)
    other = tmp_path / "other"
    add_version(other, exported, 2)
    config_file = tmp_path / "models.config"
    entry = 'config {{ name: "{}" base_path: "{}" model_platform: "tensorflow" }}'
    config_file.write_text(f"model_config_list {{ {entry.format('model', base_path)} }}")
    options = ServerOptions(
        file_system_poll_wait_seconds=0,
        max_num_load_retries=0,
        model_config_file=str(config_file),
        model_config_file_poll_wait_seconds=1,
    )
    server, _ = create_server("127.0.0.1:0", parse_model_server_config(config_file.read_text()), options)
    server.start()
    try:
        config_file.write_text(
            f"model_config_list {{ {entry.format('model', base_path)} {entry.format('other', other)} }}"
        )
        # Generous: a loaded CI machine takes its time; a passing run ends as soon as it is done.
        deadline = time.monotonic() + 60
        while not server.manager.version_states("other") and time.monotonic() < deadline:
            time.sleep(0.1)
        deadline = time.monotonic() + 60
        while states(server.manager, "other").get(2) != AVAILABLE and time.monotonic() < deadline:
            time.sleep(0.1)
        assert states(server.manager, "other") == {2: AVAILABLE}
    finally:
        server.stop(0)
