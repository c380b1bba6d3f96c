"""Typed results of the gateway's answers: frozen dataclasses built from its JSON."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ClassScore:
    label: str
    class_index: int
    probability: float


@dataclass(frozen=True)
class Explanation:
    """Why the model chose its label (`explain=True`): `saliency` is an H×W map of the model
    input's size, >= 0, larger where the pixels pushed the model towards the label; `heatmap_png`
    is the same map as a colour PNG, to lay over the image the model saw."""

    method: str
    saliency: list[list[float]] = field(repr=False)
    heatmap_png: bytes | None = field(default=None, repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.saliency), len(self.saliency[0]) if self.saliency else 0

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Explanation:
        saliency = [[_number(value) for value in row] for row in body["saliency"]]
        return cls(str(body["method"]), saliency, _decode_png(body.get("heatmap_png")))


@dataclass(frozen=True)
class Prediction:
    """One image's answer: the top class and the top-k list, best first.

    `in_distribution` is False when the image looks unlike the model's training data (its
    `ood_score`, higher = less alike, is above the version's threshold): the label is then a
    guess. Both are None for versions exported without a score, and from older gateways.
    `preprocessed` is the PNG the model saw (`debug=True`); `explanation` comes with `explain=True`."""

    label: str
    class_index: int
    probability: float
    top_k: list[ClassScore]
    in_distribution: bool | None = None
    ood_score: float | None = None
    preprocessed: bytes | None = field(default=None, repr=False)
    explanation: Explanation | None = field(default=None, repr=False)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Prediction:
        flag, score, explanation = body.get("in_distribution"), body.get("ood_score"), body.get("explanation")
        if flag is not None and not isinstance(flag, bool):
            raise TypeError(f"in_distribution is {flag!r}, not true, false or null")
        return cls(
            label=body["label"],
            class_index=body["class_index"],
            probability=body["probability"],
            top_k=[ClassScore(s["label"], s["class_index"], s["probability"]) for s in body["top_k"]],
            in_distribution=flag,
            ood_score=None if score is None else _number(score),
            preprocessed=_decode_png(body.get("preprocessed")),
            explanation=None if explanation is None else Explanation.from_json(explanation),
        )


@dataclass(frozen=True)
class PredictResult:
    """The model and version that served the request, and one Prediction per image, in order."""

    model: str
    version: int
    predictions: list[Prediction]

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> PredictResult:
        return cls(body["model"], body["version"], [Prediction.from_json(p) for p in body["predictions"]])


@dataclass(frozen=True)
class OutOfDistribution:
    """How a model version flags images unlike its training data: `ood_score` above `threshold`
    is out of distribution. The threshold was calibrated at export so that about
    `target_in_distribution_flag_rate` of in-distribution (validation) images are flagged."""

    threshold: float
    method: str | None = None  # the score's name (e.g. "energy"), when the export states it
    target_in_distribution_flag_rate: float | None = None

    @classmethod
    def from_json(cls, body: Any) -> OutOfDistribution | None:
        if body is None:
            return None  # a version exported without a score
        method, rate = body.get("method"), body.get("target_in_distribution_flag_rate")
        return cls(
            _number(body["threshold"]),
            None if method is None else str(method),
            None if rate is None else _number(rate),
        )


@dataclass(frozen=True)
class ModelInfo:
    """A served model: the version requests go to by default, its input shape [H, W, C] and classes,
    and its out-of-distribution threshold (None for versions without a score, and older gateways)."""

    name: str
    version: int | None
    input_shape: list[int]
    classes: list[str]
    state: str
    out_of_distribution: OutOfDistribution | None = None

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> ModelInfo:
        return cls(
            name=body["name"],
            version=body.get("version"),
            input_shape=list(body.get("input", {}).get("shape", [])),
            classes=list(body.get("classes", [])),
            state=body.get("state", "AVAILABLE"),
            out_of_distribution=OutOfDistribution.from_json(body.get("out_of_distribution")),
        )


@dataclass(frozen=True)
class VersionStatus:
    version: int
    state: str
    error: str = ""
    # The threshold `version=` requests are flagged against (None: no score, not AVAILABLE, older gateways)
    out_of_distribution: OutOfDistribution | None = None


@dataclass(frozen=True)
class ModelDetail(ModelInfo):
    """One model's metadata and the state of each of its versions on the model server."""

    versions: list[VersionStatus] = field(default_factory=list)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> ModelDetail:
        versions = [
            VersionStatus(v["version"], v["state"], v.get("error") or "",
                          OutOfDistribution.from_json(v.get("out_of_distribution")))
            for v in body.get("versions", [])
        ]
        available = any(v.state == "AVAILABLE" for v in versions)
        return cls(
            name=body["name"],
            version=body.get("version"),
            input_shape=list(body.get("input", {}).get("shape", [])),
            classes=list(body.get("classes", [])),
            state="AVAILABLE" if available else "UNAVAILABLE",
            out_of_distribution=OutOfDistribution.from_json(body.get("out_of_distribution")),
            versions=versions,
        )


@dataclass(frozen=True)
class Health:
    """`/readyz`: ready when the model server answers and every model has an AVAILABLE version."""

    ready: bool
    models: dict[str, str]


@dataclass(frozen=True)
class FileResult:
    """One file of `predict_folder`: its prediction, or the error that file got (`code` set)."""

    path: str
    model: str
    version: int | None = None
    label: str | None = None
    class_index: int | None = None
    probability: float | None = None
    top_k: list[ClassScore] = field(default_factory=list)
    in_distribution: bool | None = None
    ood_score: float | None = None
    explanation: Explanation | None = field(default=None, repr=False)
    heatmap: str | None = None  # where its explanation's heatmap PNG was written, if it was
    error: str | None = None
    code: str | None = None

    @property
    def ok(self) -> bool:
        return self.code is None


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{value!r} is not a number")
    return float(value)


def _decode_png(encoded: Any) -> bytes | None:
    if not isinstance(encoded, str):
        return None
    try:
        return base64.b64decode(encoded.split(",", 1)[-1], validate=True)  # also accepts a data: URL
    except (binascii.Error, ValueError):
        return None
