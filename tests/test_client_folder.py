"""Folders of images and the `pixelgate` CLI against the live test stack: `predict_folder` with
CSV and JSON output, per-file errors, the CLI's tables, `--json`, progress bar and exit codes.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
from pixelgate import Client, PixelgateError
from pixelgate.cli import main as cli_main

from tests.conftest import ROOT, encode


@pytest.fixture
def digits_folder(tmp_path, test_images):
    """10 real MNIST test digits (two in a subfolder), a file that is not an image, a hidden file."""
    images, labels = test_images["mnist"]
    folder = tmp_path / "digits"
    (folder / "more").mkdir(parents=True)
    for index in range(10):
        where = folder / "more" if index >= 8 else folder
        (where / f"{index:02d}-label{labels[index]}.png").write_bytes(encode(images[index]))
    (folder / "zz-broken.png").write_bytes(b"\x89PNG but not really")
    (folder / ".hidden.png").write_bytes(encode(images[0]))
    (folder / "notes.txt").write_text("not an image suffix: skipped")
    return folder


def test_predict_folder_writes_csv_and_json(gateway_url, digits_folder, test_images, tmp_path):
    images, _ = test_images["mnist"]
    with Client(gateway_url) as client:
        results = client.predict_folder(
            digits_folder,
            model="mnist",
            top_k=2,
            concurrency=3,
            progress=False,
            output=tmp_path / "results.csv",
        )
        client.predict_folder(digits_folder, model="mnist", progress=False, output=tmp_path / "results.json")
        expected = client.predict([encode(image) for image in images[:10]], model="mnist").predictions
    names = [os.path.relpath(r.path, digits_folder) for r in results]
    labels = test_images["mnist"][1]
    assert names == [f"{i:02d}-label{labels[i]}.png" for i in range(8)] + [
        f"more/{i:02d}-label{labels[i]}.png" for i in (8, 9)
    ] + ["zz-broken.png"]
    by_name = dict(zip(names, results, strict=True))
    assert by_name["zz-broken.png"].code == "invalid_image" and by_name["zz-broken.png"].label is None
    predicted = [r for r in results if r.ok]
    assert [r.label for r in predicted] == [p.label for p in expected]
    assert all(r.version == 1 and len(r.top_k) == 2 for r in predicted)

    with open(tmp_path / "results.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["path"] for row in rows] == [r.path for r in results]
    assert rows[0]["label"] == results[0].label and float(rows[0]["probability"]) == pytest.approx(
        results[0].probability
    )
    assert rows[10]["code"] == "invalid_image" and rows[10]["label"] == ""
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [item["label"] for item in saved] == [r.label for r in results]
    assert saved[0]["top_k"][0]["label"] == results[0].label


def test_predict_folder_without_recursion_and_single_files(gateway_url, digits_folder):
    with Client(gateway_url) as client:
        flat = client.predict_folder(digits_folder, model="mnist", recursive=False, progress=False)
        one = client.predict_folder(digits_folder / "00-label7.png", model="mnist", progress=False)
        with pytest.raises(FileNotFoundError):
            client.predict_folder(digits_folder / "missing", model="mnist", progress=False)
        with pytest.raises(ValueError):
            client.predict_folder(digits_folder, model="mnist", concurrency=0)
    assert len(flat) == 9 and [r.label for r in one] == ["7"]


def test_predict_folder_stops_on_an_unknown_model(gateway_url, digits_folder):
    with Client(gateway_url) as client, pytest.raises(PixelgateError) as raised:
        client.predict_folder(digits_folder, model="nope", progress=False)
    assert raised.value.code == "model_not_found"


def test_cli_predicts_a_folder_with_a_progress_bar(gateway_url, digits_folder, tmp_path, capsys):
    output = tmp_path / "cli.csv"
    status = cli_main(
        ["--url", gateway_url, "predict", str(digits_folder), "--model", "mnist", "-o", str(output)]
    )
    out, err = capsys.readouterr()
    assert status == 1  # one file is not an image
    header, *lines = out.splitlines()
    assert header.split() == ["PATH", "LABEL", "PROB", "IN-DIST", "OOD", "SCORE", "OTHERS"]
    assert len(lines) == 11
    assert lines[0].startswith(str(digits_folder / "00-label7.png")) and lines[0].split()[1] == "7"
    assert "error:" in lines[10] and "invalid_image" in lines[10]
    assert "11/11" in err  # tqdm's bar, on stderr
    assert "11 images: 10 classified, 1 failed" in err and "by mnist v1" in err
    assert output.is_file()


def test_cli_json_output(gateway_url, digits_folder, capsys):
    assert (
        cli_main(
            [
                "predict",
                str(digits_folder / "more"),
                "--model",
                "mnist",
                "--top-k",
                "4",
                "--json",
                "--url",
                gateway_url,
            ]
        )
        == 0
    )
    results = json.loads(capsys.readouterr().out)
    assert [len(r["top_k"]) for r in results] == [4, 4] and all(r["code"] is None for r in results)
    assert cli_main(["--json", "--url", gateway_url, "models"]) == 0
    assert {m["name"] for m in json.loads(capsys.readouterr().out)} == {"mnist", "fashion_mnist", "cifar10"}
    assert cli_main(["--url", gateway_url, "health", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ready"] is True
    assert cli_main(["--url", gateway_url, "--json", "model", "nope"]) == 1
    out, err = capsys.readouterr()
    assert json.loads(out)["code"] == "model_not_found" and "model_not_found" in err


def test_cli_readable_models_model_and_health(gateway_url, capsys):
    assert cli_main(["--url", gateway_url, "models"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["NAME", "VERSION", "STATE", "INPUT", "CLASSES"]
    assert any(line.split()[:4] == ["cifar10", "1", "AVAILABLE", "32x32x3"] for line in out)
    assert cli_main(["--url", gateway_url, "model", "fashion_mnist"]) == 0
    assert "T-shirt/top" in capsys.readouterr().out
    assert cli_main(["--url", gateway_url, "health"]) == 0
    assert capsys.readouterr().out.startswith("ready")


def test_cli_failures_exit_1_with_a_message(gateway_url, digits_folder, tmp_path, capsys):
    assert cli_main(["--url", gateway_url, "predict", str(digits_folder), "--model", "nope"]) == 1
    assert "model_not_found" in capsys.readouterr().err
    assert cli_main(["--url", gateway_url, "predict", str(tmp_path / "none"), "--model", "mnist"]) == 1
    assert "no such file or folder" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli_main(["--url", gateway_url, "predict", str(empty), "--model", "mnist"]) == 1
    assert "no image files" in capsys.readouterr().err
    assert cli_main(["--url", "http://127.0.0.1:9", "--retries", "0", "health"]) == 1
    assert "connection_error" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        cli_main(["predict", str(empty)])  # --model is required
    assert usage.value.code == 2


def test_the_installed_command_runs(gateway_url, digits_folder):
    """`pixelgate` as a user runs it: the console script, here through `python -m pixelgate`."""
    command = [
        sys.executable,
        "-m",
        "pixelgate",
        "predict",
        str(digits_folder / "more"),
        "--model",
        "mnist",
        "--url",
        gateway_url,
        "--no-progress",
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 3 and "2 images: 2 classified, 0 failed" in done.stderr


def test_cli_flags_foreign_images_and_writes_heatmaps_beside_its_results(
    gateway_url, digits_folder, tmp_path, capsys
):
    """Ten real digits, a blank frame and a broken file: IN-DIST per image, the count of flagged
    ones in the summary, and --explain's heatmaps in results-heatmaps/, mirroring the folder."""
    import numpy as np
    from PIL import Image

    (digits_folder / "blank.png").write_bytes(encode(np.zeros((28, 28, 1), np.uint8)))
    output = tmp_path / "results.csv"
    status = cli_main(
        ["--url", gateway_url, "predict", str(digits_folder), "-m", "mnist", "-o", str(output), "--explain"]
    )
    out, err = capsys.readouterr()
    assert status == 1  # the broken file
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert rows[str(digits_folder / "blank.png")][3] == "no"
    flags = [row[3] for path, row in rows.items() if not path.endswith("zz-broken.png")]
    assert set(flags) <= {"yes", "no"} and len(flags) == 11
    assert f"12 images: 11 classified, 1 failed, {flags.count('no')} out of distribution in" in err
    heatmaps = tmp_path / "results-heatmaps"
    assert f"11 heatmaps written to {heatmaps}" in err
    written = sorted(str(path.relative_to(heatmaps)) for path in heatmaps.rglob("*.png"))
    assert "more/08-label" in " ".join(written) and "blank.png.heatmap.png" in written and len(written) == 11
    for name in written:
        with Image.open(heatmaps / name) as heatmap:
            assert heatmap.size == (28, 28), name
    with open(output, newline="") as file:
        table = {row["path"]: row for row in csv.DictReader(file)}
    assert table[str(digits_folder / "blank.png")]["in_distribution"] == "false"
    assert table[str(digits_folder / "blank.png")]["heatmap"] == str(heatmaps / "blank.png.heatmap.png")
    assert table[str(digits_folder / "zz-broken.png")]["heatmap"] == ""

    # Later runs, their heatmaps inside the folder: no run classifies heatmaps, with --explain or not.
    arguments = [
        "--url",
        gateway_url,
        "predict",
        str(digits_folder),
        "-m",
        "mnist",
        "--no-progress",
        "--json",
    ]
    for explain in (["--explain-dir", str(digits_folder / "maps")],) * 2 + ([],):
        cli_main([*arguments, *explain])
        assert len(json.loads(capsys.readouterr().out)) == 12
    assert len(list((digits_folder / "maps").rglob("*.heatmap.png"))) == 11
