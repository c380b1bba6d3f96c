"""`AsyncClient` against the live test stack: the same answers as `Client`, many requests in
flight at once, errors, and `predict_folder` bounded by a semaphore.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from PIL import Image
from pixelgate import AsyncClient, Client, ModelDetail, PixelgateError

from tests.conftest import encode


def test_async_answers_match_the_sync_client(gateway_url, test_images, tmp_path):
    images = test_images["fashion_mnist"][0][:8]
    path = tmp_path / "item.png"
    path.write_bytes(encode(images[0]))

    async def run():
        async with AsyncClient(gateway_url) as client:
            concurrent = await asyncio.gather(
                *(client.predict(encode(image), model="fashion_mnist", top_k=2) for image in images)
            )
            kinds = await asyncio.gather(
                client.predict(path, model="fashion_mnist"),
                client.predict(Image.open(path), model="fashion_mnist"),
                client.predict(images[0], model="fashion_mnist"),
            )
            return (
                concurrent,
                kinds,
                await client.models(),
                await client.model("cifar10"),
                await client.ready(),
            )

    concurrent, kinds, models, detail, ready = asyncio.run(run())
    with Client(gateway_url) as client:
        expected = client.predict([encode(image) for image in images], model="fashion_mnist", top_k=2)
    # One batch and eight single requests: the same answers, up to float rounding in the batch.
    assert [(r.predictions[0].label, [c.label for c in r.predictions[0].top_k]) for r in concurrent] == [
        (p.label, [c.label for c in p.top_k]) for p in expected.predictions
    ]
    assert [r.predictions[0].probability for r in concurrent] == pytest.approx(
        [p.probability for p in expected.predictions], abs=1e-4
    )
    assert len({r.predictions[0].label for r in kinds}) == 1
    assert kinds[0].predictions[0].label == expected.predictions[0].label
    assert {m.name for m in models} == {"mnist", "fashion_mnist", "cifar10"}
    assert isinstance(detail, ModelDetail) and detail.input_shape == [32, 32, 3]
    assert ready is True


def test_async_errors_carry_the_gateway_code(gateway_url):
    async def run():
        async with AsyncClient(gateway_url) as client:
            errors = []
            for model, image in (("mnist", b"garbage"), ("unknown", b"garbage")):
                try:
                    await client.predict(image, model=model)
                except PixelgateError as error:
                    errors.append((error.status, error.code))
            try:
                await client.model("unknown")
            except PixelgateError as error:
                errors.append((error.status, error.code))
            return errors

    assert asyncio.run(run()) == [(400, "invalid_image"), (404, "model_not_found"), (404, "model_not_found")]


def test_async_predict_folder(gateway_url, test_images, tmp_path):
    images, labels = test_images["mnist"]
    for index in range(12):
        (tmp_path / f"{index:02d}.png").write_bytes(encode(images[index]))
    (tmp_path / "broken.png").write_bytes(b"not a png")

    async def run():
        async with AsyncClient(gateway_url) as client:
            return await client.predict_folder(
                tmp_path,
                model="mnist",
                concurrency=3,
                progress=False,
                output=tmp_path / "out" / "results.json",
            )

    results = asyncio.run(run())
    with Client(gateway_url) as client:
        expected = client.predict([encode(image) for image in images[:12]], model="mnist").predictions
    assert [r.path.rsplit("/", 1)[1] for r in results] == [f"{i:02d}.png" for i in range(12)] + ["broken.png"]
    assert [r.label for r in results[:12]] == [p.label for p in expected]
    assert results[-1].code == "invalid_image" and not results[-1].ok
    assert (tmp_path / "out" / "results.json").is_file()


def test_async_predict_folder_stops_when_the_model_is_unknown(gateway_url, test_images, tmp_path):
    for index in range(6):
        (tmp_path / f"{index}.png").write_bytes(encode(test_images["mnist"][0][index]))

    async def run():
        async with AsyncClient(gateway_url) as client:
            await client.predict_folder(tmp_path, model="unknown", concurrency=2, progress=False)

    with pytest.raises(PixelgateError) as raised:
        asyncio.run(run())
    assert raised.value.code == "model_not_found"


def test_async_flags_and_explanations(gateway_url, test_images, tmp_path):
    """A real Fashion item and a blank frame, explained; then a folder with its heatmaps written."""
    item = encode(test_images["fashion_mnist"][0][0])
    blank = encode(np.zeros((28, 28, 1), np.uint8))
    for name, data in (("item.png", item), ("blank.png", blank)):
        (tmp_path / "in" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "in" / name).write_bytes(data)

    async def run():
        async with AsyncClient(gateway_url) as client:
            result = await client.predict([item, blank], model="fashion_mnist", explain=True)
            files = await client.predict_folder(
                tmp_path / "in",
                model="fashion_mnist",
                explain=True,
                heatmap_dir=tmp_path / "maps",
                progress=False,
            )
            return result, files

    result, files = asyncio.run(run())
    real, empty = result.predictions
    assert empty.in_distribution is False and empty.ood_score > real.ood_score
    assert all(p.explanation is not None and p.explanation.shape == (28, 28) for p in result.predictions)
    assert [(f.path, f.in_distribution) for f in files] == [
        (str(tmp_path / "in" / "blank.png"), False),
        (str(tmp_path / "in" / "item.png"), real.in_distribution),
    ]
    for file in files:
        assert file.heatmap == str(tmp_path / "maps" / (file.path.rsplit("/", 1)[1] + ".heatmap.png"))
        with Image.open(file.heatmap) as heatmap:
            assert heatmap.size == (28, 28)
