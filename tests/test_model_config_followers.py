"""What follows a model config while it runs, `make serve` (serving/stack.py) and the gateway's catalog,
treats a config file with nothing in it as TF Serving does ("Taking no action for empty config"): an
editor that saves in place truncates the file first, and a read at that moment must not unload or
drop every model."""

from __future__ import annotations

from pathlib import Path

from serving import model_config, stack
from serving.gateway.catalog import ModelCatalog


def exported(models_dir: Path, name: str) -> None:
    version = models_dir / name / "1"
    version.mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"")


def test_make_serve_keeps_serving_its_models_while_the_registry_is_empty(tmp_path):
    exported(tmp_path, "flowers")
    model_config.register_model(tmp_path, "flowers")
    served = stack.ServedModelConfig(tmp_path)
    assert stack.model_names_in_config(served.path) == ["flowers"]
    model_config.registry_path(tmp_path).write_text("")  # an in-place save, caught half-way
    served.update()
    assert stack.model_names_in_config(served.path) == ["flowers"]
    model_config.registry_path(tmp_path).write_text("model_config_list { }")  # an empty list is meant
    served.update()
    assert stack.model_names_in_config(served.path) == []


def test_the_gateway_keeps_its_models_while_the_config_file_is_empty(tmp_path):
    config_file = tmp_path / "models.config"
    catalog = ModelCatalog(client=None, base_path=tmp_path, ttl=0, config_file=config_file)  # type: ignore[arg-type]
    config_file.write_text('model_config_list { config { name: "a" } }')
    assert catalog.model_names() == ["a"]
    config_file.write_text("# only a comment\n")
    assert catalog.model_names() == ["a"]
    config_file.write_text("model_config_list { }")
    assert catalog.model_names() == []
