"""The models folder's registry (serving/model_config.py): what training calls after an export,
what `make serve` and the gateway read from it, and its command line."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
from google.protobuf import text_format

from serving import model_config
from serving.gateway.catalog import ModelCatalog
from serving.model_config import RegistryError, register_model, registered_names, unregister_model

ROOT = Path(__file__).resolve().parent.parent


def exported(models_dir: Path, name: str, version: int = 1) -> Path:
    """A model folder that looks exported (all the registry checks): <name>/<version>/saved_model.pb."""
    path = models_dir / name / str(version)
    path.mkdir(parents=True)
    (path / "saved_model.pb").write_bytes(b"")
    return models_dir / name


def test_a_first_registration_lists_the_models_exported_before_it(tmp_path):
    exported(tmp_path, "mnist")
    exported(tmp_path, "cifar10")
    (tmp_path / "half_written" / "1").mkdir(parents=True)  # no saved_model.pb: not exported
    exported(tmp_path, "flowers")
    register_model(tmp_path, "flowers")
    assert registered_names(tmp_path) == ["cifar10", "flowers", "mnist"]
    config = model_config.read_registry(tmp_path)
    assert config is not None
    entry = config.model_config_list.config[1]
    # What TF Serving in the containers reads: the folder mounted at /models.
    assert (entry.base_path, entry.model_platform) == ("/models/flowers", "tensorflow")
    assert entry.model_version_policy.latest.num_versions == 1


def test_registering_again_changes_nothing_and_leaves_no_temporary_file(tmp_path):
    exported(tmp_path, "flowers")
    register_model(tmp_path, "flowers")
    registry = tmp_path / "models.config"
    before = registry.stat()
    register_model(tmp_path, "flowers")
    assert registered_names(tmp_path) == ["flowers"]
    assert registry.stat().st_mtime_ns == before.st_mtime_ns and registry.stat().st_ino == before.st_ino
    left = sorted(path.name for path in tmp_path.iterdir())
    assert left == [".models.config.lock", "flowers", "models.config"]
    assert registry.stat().st_mode & 0o777 == 0o644  # readable by a TF Serving that runs as another user


def test_a_reader_sees_a_whole_registry_at_every_moment(tmp_path):
    """Each change is a new file renamed into place: a reader polling all along never sees part of one."""
    names = [f"model_{index:02d}" for index in range(30)]
    for name in names:
        exported(tmp_path, name)
    register_model(tmp_path, names[0])  # lists all thirty: they were exported before it
    for name in names[1:]:
        unregister_model(tmp_path, name)
    done, seen = threading.Event(), []

    def read_all_along():
        while not done.is_set():
            seen.append(len(registered_names(tmp_path)))  # a torn file raises RegistryError here

    reader = threading.Thread(target=read_all_along)
    reader.start()
    try:
        for name in names[1:]:
            register_model(tmp_path, name)
    finally:
        done.set()
        reader.join()
    assert len(seen) > 1 and seen == sorted(seen)  # never a torn or truncated file: it only grows
    assert len(registered_names(tmp_path)) == len(names)


def test_registrations_from_several_processes_at_once_all_land(tmp_path):
    exported(tmp_path, "mnist")
    register_model(tmp_path, "mnist")
    # Six trainings finishing together, each adding its models (exported after the registry was made).
    names = [f"run{process}_{index}" for process in range(6) for index in range(8)]
    for name in names:
        exported(tmp_path, name)
    script = ("import sys\nfrom serving.model_config import register_model\n"
              "for name in sys.argv[2:]:\n    register_model(sys.argv[1], name)\n")
    processes = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path),
                                   *[n for n in names if n.startswith(f"run{process}_")]], cwd=ROOT)
                 for process in range(6)]
    assert [process.wait(timeout=120) for process in processes] == [0] * 6
    assert sorted(registered_names(tmp_path)) == sorted(["mnist", *names])


@pytest.mark.parametrize("text, complaint", [
    ("model_config_list { config { name: 'x' basepath: '/models/x' } }", 'no field named "basepath"'),
    ("model_config_list { config { name: 'x' ", "Expected"),
    ("model_config_list { config { name: 'x' } config { name: 'x' } }", "lists x more than once"),
    ("custom_model_config { }", "a model_config_list is needed"),
])
def test_a_malformed_registry_is_a_clear_error_and_left_as_it_is(tmp_path, text, complaint):
    exported(tmp_path, "flowers")
    registry = tmp_path / "models.config"
    registry.write_text(text)
    with pytest.raises(RegistryError, match=complaint) as raised:
        register_model(tmp_path, "flowers")
    assert str(registry) in str(raised.value)
    assert registry.read_text() == text  # someone's hand edit, not overwritten


@pytest.mark.parametrize("name", ["", "has space", "../escape", "a/b", "ünïcode", ".hidden", "x" * 129])
def test_a_name_that_cannot_be_a_model_name_is_refused(tmp_path, name):
    with pytest.raises(RegistryError, match="is not a valid model name"):
        register_model(tmp_path, name)
    assert not (tmp_path / "models.config").exists()


def test_a_model_with_no_exported_version_is_refused(tmp_path):
    """TF Serving waits for every model its config lists: registering before the export would stall it."""
    (tmp_path / "flowers" / "1").mkdir(parents=True)
    with pytest.raises(RegistryError, match="holds no exported version"):
        register_model(tmp_path, "flowers")
    assert not (tmp_path / "models.config").exists()


def test_make_serve_maps_container_paths_to_the_folder_and_skips_unexported_models(tmp_path):
    exported(tmp_path, "flowers")
    exported(tmp_path, "elsewhere_model")
    (tmp_path / "models.config").write_text(
        'model_config_list {\n'
        '  config { name: "flowers" base_path: "/models/flowers" model_platform: "tensorflow" }\n'
        '  config { name: "gone" base_path: "/models/gone" model_platform: "tensorflow" }\n'
        f'  config {{ name: "other" base_path: "{tmp_path / "elsewhere_model"}" '
        'model_platform: "tensorflow" }\n'
        '}\n')
    config = model_config.served_config(tmp_path)
    assert config is not None
    assert [(m.name, m.base_path) for m in config.model_config_list.config] == [
        ("flowers", str((tmp_path / "flowers").resolve())), ("other", str(tmp_path / "elsewhere_model"))]
    assert model_config.served_config(tmp_path / "flowers") is None  # no registry there


def test_the_gateway_follows_the_config_file_and_keeps_its_list_while_it_is_broken(tmp_path):
    config_file = tmp_path / "served.config"
    catalog = ModelCatalog(client=None, base_path=tmp_path, ttl=0, config_file=config_file)  # type: ignore[arg-type]
    assert catalog.model_names() == []  # no file yet
    config_file.write_text('model_config_list { config { name: "a" } config { name: "b" } }')
    assert catalog.model_names() == ["a", "b"]
    config_file.write_text("model_config_list { config { name: ")
    assert catalog.model_names() == ["a", "b"]
    config_file.write_text('model_config_list { config { name: "b" } }')
    assert catalog.model_names() == ["b"]


def test_the_command_line_lists_adds_and_removes(tmp_path, capsys):
    exported(tmp_path, "mnist")
    exported(tmp_path, "flowers")
    assert model_config.main(["--models-dir", str(tmp_path), "--list"]) == 0
    assert "does not exist yet" in capsys.readouterr().err
    assert model_config.main(["--models-dir", str(tmp_path), "--add", "flowers"]) == 0
    assert capsys.readouterr().out == "flowers\t/models/flowers\nmnist\t/models/mnist\n"
    assert model_config.main(["--models-dir", str(tmp_path), "--remove", "mnist"]) == 0
    assert capsys.readouterr().out == "flowers\t/models/flowers\n"
    text_format.Parse((tmp_path / "models.config").read_text(), model_config.ModelServerConfig())


@pytest.mark.parametrize("arguments, complaint", [
    (["--remove", "mnist"], "'mnist' is not listed in"),
    (["--add", "nothing_here"], "holds no exported version"),
    (["--add", "bad name"], "is not a valid model name"),
])
def test_the_command_line_says_what_is_wrong_in_one_line(tmp_path, capsys, arguments, complaint):
    exported(tmp_path, "flowers")
    model_config.register_model(tmp_path, "flowers")
    assert model_config.main(["--models-dir", str(tmp_path), *arguments]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and complaint in error and error.count("\n") == 1
