"""Many files at once: find the images under a folder, show progress, write results as CSV or JSON.
The clients' `predict_folder` methods do the requests; this module does everything around them.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Iterable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Protocol

from pixelgate._errors import PixelgateError
from pixelgate._images import IMAGE_SUFFIXES
from pixelgate._types import FileResult, PredictResult

CSV_COLUMNS = (
    "path",
    "model",
    "version",
    "label",
    "class_index",
    "probability",
    "top_k",
    "in_distribution",
    "ood_score",
    "heatmap",
    "error",
    "code",
)
HEATMAP_SUFFIX = ".heatmap.png"


class Progress(Protocol):
    def update(self, n: int = 1) -> object: ...
    def close(self) -> None: ...


def find_images(paths: Iterable[str | os.PathLike[str]], *, recursive: bool = True) -> list[Path]:
    """Files given directly, plus the image files (by suffix) under the folders given: sorted,
    hidden ones and the heatmaps of earlier runs (*.heatmap.png) skipped."""
    found: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            candidates = path.rglob("*") if recursive else path.iterdir()
            found.extend(
                sorted(
                    p
                    for p in candidates
                    if p.suffix.lower() in IMAGE_SUFFIXES
                    and not p.name.endswith(HEATMAP_SUFFIX)
                    and p.is_file()
                    and not any(part.startswith(".") for part in p.relative_to(path).parts)
                )
            )
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    return found


def progress_bar(total: int, enabled: bool, description: str = "predict") -> Progress:
    if not enabled:
        return _NoProgress()
    from tqdm.auto import tqdm  # imported here: `import pixelgate` stays fast

    bar: Progress = tqdm(total=total, unit="img", desc=description, file=sys.stderr, dynamic_ncols=True)
    return bar


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def heatmap_paths(files: list[Path], directory: str | os.PathLike[str]) -> dict[Path, Path]:
    """Where each file's heatmap goes: its path below the files' common folder, mirrored under
    `directory`, its whole name + `.heatmap.png` (a.png and a.jpg get one each). `directory` is
    created now: one that cannot be written fails the run before any request, not file by file."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    if not files:
        return {}
    base = os.path.commonpath([os.path.dirname(os.path.abspath(file)) for file in files])
    return {
        file: Path(directory) / (os.path.relpath(os.path.abspath(file), base) + HEATMAP_SUFFIX)
        for file in files
    }


def file_result(path: Path, model: str, result: PredictResult, heatmap: Path | None = None) -> FileResult:
    """The file's FileResult; with `heatmap`, its explanation's heatmap PNG is written there."""
    best = result.predictions[0]
    written = None
    if heatmap is not None and best.explanation is not None and best.explanation.heatmap_png is not None:
        heatmap.parent.mkdir(parents=True, exist_ok=True)
        heatmap.write_bytes(best.explanation.heatmap_png)
        written = str(heatmap)
    return FileResult(
        path=str(path),
        model=model,
        version=result.version,
        label=best.label,
        class_index=best.class_index,
        probability=best.probability,
        top_k=best.top_k,
        in_distribution=best.in_distribution,
        ood_score=best.ood_score,
        explanation=best.explanation,
        heatmap=written,
    )


def failed_file(path: Path, model: str, error: PixelgateError | OSError) -> FileResult:
    """A file the gateway refused (4xx) or that could not be read. Other failures stop the run instead."""
    if isinstance(error, PixelgateError):
        return FileResult(str(path), model, error=error.message, code=error.code)
    return FileResult(
        str(path), model, error=f"cannot read the file: {error.strerror or error}", code="unreadable_file"
    )


# 400s that every file would get too: the model version cannot explain (explain=True).
RUN_ERROR_CODES = frozenset({"explanation_unavailable"})


def is_per_file(error: PixelgateError) -> bool:
    """4xx errors concern one file (a bad image, say); others (gateway down, 5xx) concern them all."""
    if error.code in RUN_ERROR_CODES:
        return False
    return error.status is not None and 400 <= error.status < 500 and error.status not in (401, 403, 404)


def write_results(results: list[FileResult], output: str | os.PathLike[str]) -> Path:
    """`.json` writes a JSON array, `.csv` (or any other suffix) a CSV table with a header."""
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps([result_to_json(r) for r in results], indent=2) + "\n")
        return path
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for result in results:
            row = result_to_json(result)
            row["top_k"] = " ".join(f"{s['label']}:{s['probability']:.6f}" for s in row["top_k"])
            flag = row["in_distribution"]
            row["in_distribution"] = "" if flag is None else str(flag).lower()  # as in the JSON
            del row["explanation"]  # the saliency map is in the JSON output and the heatmap file
            writer.writerow(row)
    return path


def result_to_json(result: FileResult) -> dict[str, Any]:
    """The result as JSON values: its explanation's method and saliency (the PNG is the heatmap file)."""
    row = asdict(replace(result, explanation=None))
    explanation = result.explanation
    if explanation is not None:
        row["explanation"] = {"method": explanation.method, "saliency": explanation.saliency}
    return row
