"""The gateway's core, as plain Python calls: a prediction for decoded-from-HTTP images, the
model listing, one model's detail and readiness. The HTTP views parse requests and call these;
a test calls them without a socket.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from serving.gateway import explanations, metrics
from serving.gateway.call_planner import CallPlanner
from serving.gateway.catalog import ModelCatalog, ModelInfo
from serving.gateway.content_normalization import Framing
from serving.gateway.errors import (
    ExplanationUnavailableError,
    GatewayError,
    InvalidImageError,
    InvalidRequestError,
    ModelMisconfiguredError,
    ModelNotFoundError,
    ModelServerUnavailableError,
)
from serving.gateway.explanations import ExplanationSignature
from serving.gateway.limits import ImageLimits, check_image_sizes
from serving.gateway.model_server_client import Answer, ModelServerClient, PredictCall
from serving.gateway.preprocess import model_input_png, preprocess_images_explained
from serving.gateway.requests_parsing import PredictOptions

logger = logging.getLogger(__name__)

Result = TypeVar("Result")
MAX_LOOKUP_THREADS = 32


@dataclass
class RequestTrace:
    """What a request learned on its way, for its log line and metrics."""

    model: str = ""
    version: int | str = ""
    images: int = 0
    preprocess_seconds: float = 0.0
    model_server_seconds: float = 0.0


class Gateway:
    """Answers predictions and model questions from a catalog, a call planner and a client.

    `config` is read at each call (the app's config: settings as config.py loads them)."""

    def __init__(self, config: Mapping[str, Any], catalog: ModelCatalog, planner: CallPlanner,
                 client: ModelServerClient):
        self.config, self.catalog, self.planner, self.client = config, catalog, planner, client
        # Readiness: whether this process has been ready, and the models it has seen AVAILABLE.
        self._been_ready = False
        self._seen_available: set[str] = set()

    def check_model(self, name: str) -> None:
        """Raise ModelNotFoundError unless the gateway serves `name`."""
        self.catalog.check_name(name)

    def predict(self, name: str, images: Sequence[bytes], options: PredictOptions, request_id: str = "",
                trace: RequestTrace | None = None) -> dict[str, Any]:
        """The answer to a prediction of encoded `images` by model `name`; raises a GatewayError."""
        trace = RequestTrace() if trace is None else trace
        self.catalog.check_name(name)  # before `name` labels a metric
        trace.model, trace.images = name, len(images)
        metrics.IMAGES_PER_REQUEST.labels(name).observe(len(images))
        config = self.config
        if options.explain and len(images) > config["MAX_IMAGES_PER_EXPLAIN"]:
            raise InvalidRequestError(
                f"{len(images)} images in one request with explain=true; at most "
                f"{config['MAX_IMAGES_PER_EXPLAIN']} are explained at once",
                code="too_many_images_to_explain")
        check_image_sizes(images, ImageLimits(config["MAX_IMAGE_PIXELS"], config["MAX_IMAGE_SIDE"],
                                              config["MAX_REQUEST_PIXELS"]))
        info = self.catalog.resolve(name, options.version, options.label)
        if options.explain:
            _explanation_signature(info)  # refused before any work
        started = time.perf_counter()
        batch, framings = self._preprocess(images, info)
        trace.preprocess_seconds = time.perf_counter() - started
        metrics.PREPROCESS_SECONDS.labels(name).observe(trace.preprocess_seconds)
        metrics.observe_inputs(name, batch, [f.inverted for f in framings], [f.cropped for f in framings])
        started = time.perf_counter()
        info, answer, saliency = self._answer(info, batch, options, request_id)
        trace.model_server_seconds = time.perf_counter() - started
        trace.version = answer.version
        metrics.MODEL_SERVER_SECONDS.labels(name).observe(trace.model_server_seconds)
        probabilities = _rows(answer, info.output_key, len(images), name)
        caveats = _out_of_distribution(info, answer, len(images))
        predictions = top_predictions(probabilities.reshape(len(images), -1), info.classes, options.top_k,
                                      caveats)
        if saliency is not None:
            method = _explanation_signature(info).method
            for prediction, image_saliency in zip(predictions, saliency, strict=True):
                prediction["explanation"] = explanations.explanation(image_saliency, method)
        if options.debug:
            # What the model saw, so a user can tell a bad crop or a wrong inversion from a bad model.
            for prediction, model_input, framing in zip(predictions, batch, framings, strict=True):
                png = model_input_png(model_input, info.spec)
                prediction["preprocessed"] = base64.b64encode(png).decode("ascii")
                prediction["preprocessing"] = {"mode": info.spec.mode, **framing.as_dict()}
        return {"model": name, "version": answer.version, "predictions": predictions}

    def _answer(self, info: ModelInfo, batch: np.ndarray, options: PredictOptions,
                request_id: str) -> tuple[ModelInfo, Answer, np.ndarray | None]:
        """The prediction (and saliency maps) of `batch`, and the info of the version that gave them."""
        try:
            answer = self._send(info, batch, request_id)
        except ModelNotFoundError:
            if options.version is not None:
                raise
            # The cached latest (or labelled) version was unloaded meanwhile, or (several model servers, a
            # new version rolling out) the replica the call reached has another one: ask again once, for
            # whichever version is latest, or has the label, on the replica that takes the call (asking the
            # catalog again could name the other replica's), with no output filter: the versions may differ
            # in their outputs (one exported without a score), and the answer is read by the version that
            # gave it.
            self.catalog.forget(info.name)
            answer = self._send(info, batch, request_id, pinned=False, label=options.label)
            name, version = info.name, answer.version
            info = _on_another_replica(lambda: self.catalog.resolve(name, version), (
                f"model '{name}' version {version} answered, then could not be described (a new version is "
                "rolling out); retry"))
        return info, answer, self._explain(info, batch, request_id) if options.explain else None

    def _send(self, info: ModelInfo, batch: np.ndarray, request_id: str, pinned: bool = True,
              label: str | None = None) -> Answer:
        """Predict `batch` with `info`'s version and outputs (not `pinned`: with the version the model server
        has as its latest, or labelled `label`, which answers every output it has)."""
        call = PredictCall(info.name, info.version if pinned else None, info.input_key,
                           info.output_keys if pinned else (), batch, (request_id,) if request_id else (),
                           label=None if pinned else label)
        return self.planner.predict(call, time.monotonic() + self.config["REQUEST_TIMEOUT_SECONDS"])

    def _explain(self, info: ModelInfo, batch: np.ndarray, request_id: str) -> np.ndarray:
        """Saliency maps [N, H, W] of the batch, from the explanation signature of the version that
        predicted it."""
        signature = _explanation_signature(info)
        call = PredictCall(info.name, info.version, signature.input_key, (signature.output_key,), batch,
                           (request_id,) if request_id else (), signature_name=signature.name)
        deadline = time.monotonic() + self.config["REQUEST_TIMEOUT_SECONDS"]
        answer = _on_another_replica(lambda: self.planner.predict(call, deadline), (
            f"model '{info.name}' version {info.version} was unloaded while its explanation was computed (a "
            "new version is rolling out); retry"))
        saliency = _rows(answer, signature.output_key, len(batch), info.name)
        frame = (info.spec.height, info.spec.width)
        if saliency.shape[1:] not in (frame, (*frame, 1)):
            raise ModelMisconfiguredError(
                f"model '{info.name}' version {info.version}: signature '{signature.name}' answered "
                f"'{signature.output_key}' of shape {list(saliency.shape)}; the gateway needs [N, H, W]")
        return saliency.reshape(len(batch), *frame)

    def _preprocess(self, images: Sequence[bytes], info: ModelInfo) -> tuple[np.ndarray, list[Framing]]:
        try:
            return preprocess_images_explained(images, info.spec, self.config["MAX_IMAGE_PIXELS"])
        except GatewayError:
            raise
        except Exception as error:  # noqa: BLE001 - whatever bytes make a decoder fail are the upload's fault
            logger.exception("preprocessing failed on an upload")
            raise InvalidImageError(f"the image could not be decoded ({type(error).__name__})") from None

    def list_models(self) -> list[dict[str, Any]]:
        def look_up(name: str) -> dict[str, Any]:
            try:
                return {**describe(self.catalog.resolve(name)), "state": "AVAILABLE"}
            except GatewayError as error:
                return {"name": name, "state": "UNAVAILABLE", "error": error.message}

        return _for_each_model(self.catalog.model_names(), look_up)

    def model_detail(self, name: str) -> dict[str, Any]:
        self.catalog.check_name(name)
        versions = self.client.status(name)
        body: dict[str, Any] = {
            "name": name,
            "versions": [{"version": v.version, "state": v.state, "error": v.error,
                          "out_of_distribution": self._threshold_of(name, v.version)
                          if v.state == "AVAILABLE" else None} for v in versions],
        }
        if any(v.state == "AVAILABLE" for v in versions):
            body.update(describe(self.catalog.resolve(name)))
            body["name"] = name
        return body

    def _threshold_of(self, name: str, version: int) -> dict[str, Any] | None:
        """A served version's out-of-distribution threshold (`?version=` requests are flagged against
        it), or None: exported without a score, or its metadata unreadable just now."""
        try:
            ood = self.catalog.resolve(name, version).out_of_distribution
        except GatewayError:
            return None
        return ood.describe() if ood else None

    def readiness(self) -> tuple[bool, dict[str, str]]:
        """Whether every served model is AVAILABLE and usable, and each one's state. With several model
        servers each status call goes to one that is up (round_robin skips the dead, retries move a call
        off one dying): ready while any replica serves each model.

        A model added once the gateway has been ready (registered into the model config while it runs)
        does not hold readiness back until it is first AVAILABLE: a gateway that took traffic would
        otherwise leave its load balancer for as long as the new model loads, or for good if it never
        loads. Its state is shown; its requests answer 503 model_loading meanwhile."""
        timeout = self.config["READINESS_TIMEOUT_SECONDS"]

        def state(name: str) -> str:
            try:
                states = {v.state for v in self.client.status(name, timeout)}
                others = ", ".join(sorted(states)) or "NO_VERSIONS"
                answer = "AVAILABLE" if "AVAILABLE" in states else others
                if answer == "AVAILABLE":
                    self.catalog.resolve(name)  # served, but can the gateway feed it? (cached once it can)
                return answer
            except GatewayError as error:
                return f"UNAVAILABLE: {error.message}"

        names = self.catalog.model_names()
        models = dict(zip(names, _for_each_model(names, state), strict=True))
        self._seen_available.update(name for name, value in models.items() if value == "AVAILABLE")
        ready = bool(names) and all(
            value == "AVAILABLE" or self._been_ready and name not in self._seen_available
            for name, value in models.items())
        self._been_ready = self._been_ready or ready  # first ready: every model was AVAILABLE
        return ready, models


def _on_another_replica(attempt: Callable[[], Result], message: str) -> Result:
    """`attempt()`, a call about a version that answered a moment ago, tried once more if it meets a
    model server without it: mid-rollout the call reached a replica that has another version (the next
    call goes to another), or it was unloaded since. The model is there either way: then 503 `message`,
    not a 404."""
    try:
        return attempt()
    except ModelNotFoundError:
        try:
            return attempt()
        except ModelNotFoundError:
            raise ModelServerUnavailableError(message) from None


def _for_each_model(names: list[str], look_up: Callable[[str], Result]) -> list[Result]:
    """`look_up(name)` for every model (up to MAX_LOOKUP_THREADS at once), in order: with the model
    server stalled, a listing or a readiness probe then waits out one call's deadline, not one per
    model. The threads are this request's own, so a probe never queues behind listings."""
    if len(names) <= 1:
        return [look_up(name) for name in names]
    with ThreadPoolExecutor(min(len(names), MAX_LOOKUP_THREADS), "pixelgate-model-lookup") as lookups:
        return list(lookups.map(look_up, names))


def describe(info: ModelInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "version": info.version,
        "input": {"key": info.input_key, "shape": [info.spec.height, info.spec.width, info.spec.channels]},
        "classes": list(info.classes),
        "test_accuracy": info.test_accuracy,  # the version's assets.extra/evaluation.json; null if absent
        "out_of_distribution": info.out_of_distribution.describe() if info.out_of_distribution else None,
        # Whether explain=true works with this version (null: exported without an explanation signature).
        "explanation": {"method": info.explanation.method} if info.explanation else None,
    }


def top_predictions(probabilities: np.ndarray, classes: tuple[str, ...], top_k: int,
                    caveats: Sequence[Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Per image: the top label, its class index and probability, its `caveats` (in_distribution and
    ood_score) and the top-k list."""
    answers = []
    k = min(top_k, probabilities.shape[-1])
    for index, row in enumerate(probabilities):
        order = np.argsort(-row, kind="stable")[:k]
        ranked = [{"label": classes[i] if i < len(classes) else str(i), "class_index": int(i),
                   "probability": float(row[i])} for i in order]
        answers.append({**ranked[0], **(caveats[index] if caveats else {}), "top_k": ranked})
    return answers


def _rows(answer: Answer, key: str, images: int, name: str) -> np.ndarray:
    """Output `key` of the answer, which must hold one row per image."""
    rows = answer.outputs[key]
    if images > 1 and (rows.ndim == 0 or len(rows) != images):
        raise ModelMisconfiguredError(
            f"model '{name}' answered output '{key}' of shape {list(rows.shape)} "
            f"for {images} image(s); the gateway needs one row per image")
    return rows


def _out_of_distribution(info: ModelInfo, answer: Answer, images: int) -> list[dict[str, Any]]:
    """Per image `in_distribution` and `ood_score`: null for a version exported without a score."""
    ood, scores = info.out_of_distribution, None
    if ood is not None:
        scores = answer.outputs.get(ood.output_key)
    if ood is None or scores is None or scores.size != images:
        if ood is not None:
            logger.warning("model '%s' version %d answered no usable '%s' (shape %s): flags are null",
                           info.name, info.version, ood.output_key,
                           None if scores is None else list(scores.shape))
        return [{"in_distribution": None, "ood_score": None}] * images
    rounded, flags = ood.judge(scores.reshape(images).astype(np.float64))
    metrics.observe_ood(info.name, rounded, flags)
    return [{"in_distribution": flag, "ood_score": score} for flag, score in zip(flags, rounded, strict=True)]


def _explanation_signature(info: ModelInfo) -> ExplanationSignature:
    if info.explanation is None:
        raise ExplanationUnavailableError(
            f"model '{info.name}' version {info.version} was exported without an explanation signature; "
            "explain=true needs a version exported with one")
    return info.explanation
