"""Many files at once: find the images under a folder, show progress, write results as CSV or JSON.
The clients' `predict_folder` methods do the requests; this module does everything around them.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

from pixelgate._errors import PixelgateError
from pixelgate._images import IMAGE_SUFFIXES
from pixelgate._types import FileResult, PredictResult

CSV_COLUMNS = ("path", "model", "version", "label", "class_index", "probability", "top_k", "error", "code")


class Progress(Protocol):
    def update(self, n: int = 1) -> object: ...
    def close(self) -> None: ...


def find_images(paths: Iterable[str | os.PathLike[str]], *, recursive: bool = True) -> list[Path]:
    """Files given directly, plus the image files (by suffix) under the folders given: sorted,
    hidden ones skipped."""
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


def file_result(path: Path, model: str, result: PredictResult) -> FileResult:
    best = result.predictions[0]
    return FileResult(
        str(path), model, result.version, best.label, best.class_index, best.probability, best.top_k
    )


def failed_file(path: Path, model: str, error: PixelgateError | OSError) -> FileResult:
    """A file the gateway refused (4xx) or that could not be read. Other failures stop the run instead."""
    if isinstance(error, PixelgateError):
        return FileResult(str(path), model, error=error.message, code=error.code)
    return FileResult(
        str(path), model, error=f"cannot read the file: {error.strerror or error}", code="unreadable_file"
    )


def is_per_file(error: PixelgateError) -> bool:
    """4xx errors concern one file (a bad image, say); others (gateway down, 5xx) concern them all."""
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
            writer.writerow(row)
    return path


def result_to_json(result: FileResult) -> dict[str, Any]:
    return asdict(result)
