"""`pixelgate` command line: predict files and folders (with a progress bar), list models, check health.
Readable tables by default, `--json` for scripts; exit status 1 when anything failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pixelgate import __version__
from pixelgate._client import Client
from pixelgate._errors import PixelgateError
from pixelgate._folder import find_images, result_to_json
from pixelgate._protocol import DEFAULT_URL
from pixelgate._types import FileResult, Health, ModelDetail, ModelInfo


def _add_connection_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """Accepted before and after the command (`pixelgate predict x --json`); only the main parser
    has defaults, so a value given after the command is not overwritten by one before it."""

    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument(
        "--url",
        default=default(os.environ.get("PIXELGATE_URL", DEFAULT_URL)),
        help=f"gateway URL (env PIXELGATE_URL, default {DEFAULT_URL})",
    )
    parser.add_argument(
        "--token",
        default=default(os.environ.get("PIXELGATE_TOKEN")),
        help="bearer token (env PIXELGATE_TOKEN)",
    )
    parser.add_argument(
        "--timeout", type=float, default=default(30.0), help="seconds per attempt (default 30)"
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=default(2),
        help="extra attempts after a 503 or a failed connection (default 2)",
    )
    parser.add_argument("--json", action="store_true", default=default(False), help="print JSON")
    parser.add_argument("-v", "--verbose", action="store_true", default=default(False), help="log retries")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pixelgate", description="Classify images with a pixelgate gateway."
    )
    parser.add_argument("--version", action="version", version=f"pixelgate-client {__version__}")
    _add_connection_options(parser, defaults=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    predict = commands.add_parser(
        "predict",
        help="classify image files and folders",
        description="Classify images; folders are searched for image files. IN-DIST is 'no' when an "
        "image looks unlike the model's training data (its OOD SCORE is above the version's threshold: "
        "the label is then a guess), '-' when the model version has no such score.",
    )
    predict.add_argument("paths", nargs="+", metavar="FILE_OR_DIR")
    predict.add_argument("--model", "-m", required=True, help="model name, e.g. mnist")
    predict.add_argument("--top-k", "-k", type=int, help="how many classes to list per image")
    which = predict.add_mutually_exclusive_group()
    which.add_argument("--version", dest="model_version", type=int, help="model version (default: latest)")
    which.add_argument("--label", help="model version label, e.g. stable")
    predict.add_argument("--concurrency", "-c", type=int, default=4, help="requests in flight (default 4)")
    predict.add_argument("--output", "-o", help="also write the results to this .csv or .json file")
    predict.add_argument("--no-progress", action="store_true", help="no progress bar")
    predict.add_argument("--no-recursive", action="store_true", help="only the folders' own files")
    predict.add_argument(
        "--explain",
        action="store_true",
        help="also ask why: write one heatmap PNG per image (where the pixels pushed the model towards "
        "its label) to --explain-dir",
    )
    predict.add_argument(
        "--explain-dir",
        metavar="DIR",
        help="where --explain writes the heatmaps (implies --explain): each image's path below the "
        "images' common folder + .heatmap.png; default: beside --output, as <its name>-heatmaps/, "
        "else ./heatmaps/",
    )

    models = commands.add_parser("models", help="list the served models")
    model = commands.add_parser("model", help="one model's metadata and versions")
    model.add_argument("name")
    health = commands.add_parser("health", help="is the gateway ready? (exit status 0 if so)")
    for command in (predict, models, model, health):
        _add_connection_options(command, defaults=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    try:
        with Client(args.url, timeout=args.timeout, token=args.token, retries=args.retries) as client:
            if args.command == "predict":
                return _predict(client, args)
            if args.command == "models":
                _print_models(client.models(), args.json)
            elif args.command == "model":
                _print_model(client.model(args.name), args.json)
            else:
                return _print_health(client.health(), args.json)
    except PixelgateError as error:
        _print_error(error.message, error.code, error.status, args.json)
        return 1
    except BrokenPipeError:  # `pixelgate predict ... | head`: the reader has gone, say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (OSError, ValueError) as error:
        _print_error(str(error), "usage_error", None, args.json)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def _predict(client: Client, args: argparse.Namespace) -> int:
    heatmap_dir = _heatmap_dir(args)
    files = find_images(args.paths, recursive=not args.no_recursive)
    if not files:
        raise ValueError(f"no image files (.png, .jpg, .gif, .bmp, .webp, .tif) in {' '.join(args.paths)}")
    started = time.perf_counter()
    results = client.predict_folder(
        files,
        model=args.model,
        top_k=args.top_k,
        version=args.model_version,
        label=args.label,
        concurrency=args.concurrency,
        output=args.output,
        progress=not args.no_progress and len(files) > 1,
        explain=heatmap_dir is not None,
        heatmap_dir=heatmap_dir,
    )
    elapsed = time.perf_counter() - started
    failed = sum(not r.ok for r in results)
    if args.json:
        print(json.dumps([result_to_json(r) for r in results]))
    else:
        _print_table(results)
        served = sorted({f"{r.model} v{r.version}" for r in results if r.ok})
        rate = len(results) / max(elapsed, 1e-9)
        plural = "" if len(results) == 1 else "s"
        by = f" by {', '.join(served)}" if served else ""
        written = f"; results written to {args.output}" if args.output else ""
        if heatmap_dir is not None:
            heatmaps = sum(r.heatmap is not None for r in results)
            written += f"; {heatmaps} heatmap{'' if heatmaps == 1 else 's'} written to {heatmap_dir}"
        print(
            f"{len(results)} image{plural}: {len(results) - failed} classified, {failed} failed"
            f"{_flagged(results)} in {elapsed:.2f}s ({rate:.1f} images/s){by}{written}",
            file=sys.stderr,
        )
    return 1 if failed else 0


def _heatmap_dir(args: argparse.Namespace) -> Path | None:
    if args.explain_dir:
        return Path(args.explain_dir)
    if not args.explain:
        return None
    if args.output:
        output = Path(args.output)
        return output.with_name(f"{output.stem}-heatmaps")
    return Path("heatmaps")


def _flagged(results: list[FileResult]) -> str:
    """The summary's count of images flagged out of distribution; nothing when the model version
    flags none at all (exported without a score)."""
    flags = [r.in_distribution for r in results if r.ok and r.in_distribution is not None]
    return f", {flags.count(False)} out of distribution" if flags else ""


def _print_table(results: list[FileResult]) -> None:
    width = min(60, max(len(r.path) for r in results))  # longer paths are printed whole, unaligned
    print(f"{'PATH':<{width}}  {'LABEL':<12} {'PROB':>7}  {'IN-DIST':<7}  {'OOD SCORE':>9}  OTHERS")
    for result in results:
        path = result.path
        if result.ok:
            flag = {True: "yes", False: "no", None: "-"}[result.in_distribution]
            score = "-" if result.ood_score is None else f"{result.ood_score:.2f}"
            others = "  ".join(f"{s.label} {s.probability:.1%}" for s in result.top_k[1:])
            print(
                f"{path:<{width}}  {result.label:<12} {result.probability or 0:>7.1%}  {flag:<7}  "
                f"{score:>9}  {others}".rstrip()
            )
        else:
            print(f"{path:<{width}}  error: {result.error} ({result.code})")


def _print_models(models: list[ModelInfo], as_json: bool) -> None:
    if as_json:
        print(json.dumps([asdict(m) for m in models]))
        return
    rows = [("NAME", "VERSION", "STATE", "INPUT", "CLASSES")]
    for model in models:
        shape = "x".join(str(n) for n in model.input_shape) or "-"
        classes = ", ".join(model.classes[:4]) + (", …" if len(model.classes) > 4 else "")
        rows.append(
            (
                model.name,
                str(model.version or "-"),
                model.state,
                shape,
                f"{len(model.classes)}: {classes}" if model.classes else "-",
            )
        )
    _print_rows(rows)


def _print_model(model: ModelDetail, as_json: bool) -> None:
    if as_json:
        print(json.dumps(asdict(model)))
        return
    print(
        f"{model.name}: latest v{model.version}, input {'x'.join(map(str, model.input_shape)) or '-'}, "
        f"{len(model.classes)} classes ({', '.join(model.classes)})"
    )
    ood = model.out_of_distribution
    if ood is None:
        print("out-of-distribution flag: none (this version answers no score, or no threshold the gateway "
              "could read)")
    else:
        rate = ood.target_in_distribution_flag_rate
        calibrated = f", calibrated to flag {rate:.0%} of in-distribution images" if rate is not None else ""
        method = f" ({ood.method})" if ood.method else ""
        print(f"out-of-distribution flag: score above {ood.threshold:.4g}{method}{calibrated}")
    rows = [("VERSION", "STATE", "OOD THRESHOLD", "ERROR")]
    for v in model.versions:
        threshold = f"{v.out_of_distribution.threshold:.4g}" if v.out_of_distribution else "-"
        rows.append((str(v.version), v.state, threshold, v.error))
    _print_rows(rows)


def _print_health(health: Health, as_json: bool) -> int:
    if as_json:
        print(json.dumps(asdict(health)))
    else:
        print("ready" if health.ready else "not ready")
        _print_rows([(f"  {name}", state) for name, state in health.models.items()])
    return 0 if health.ready else 1


def _print_rows(rows: Sequence[Sequence[str]]) -> None:
    if not rows:
        return
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _print_error(message: str, code: str, status: int | None, as_json: bool) -> None:
    if as_json:
        body: dict[str, Any] = {"error": message, "code": code, "status": status}
        print(json.dumps(body))
    where = f", HTTP {status}" if status is not None else ""
    print(f"error: {message} ({code}{where})", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
