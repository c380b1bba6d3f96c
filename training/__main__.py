"""Command line: `python -m training train --model all --profile quick`,
`python -m training train --model flowers --data photos/` (a folder of one's own images),
`python -m training import --name flowers --model flowers.keras --labels labels.txt`,
`python -m training evaluate --model mnist [--version N]`, `python -m training samples --model mnist`.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported: quiet its C++ logs

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402

from .datasets import (  # noqa: E402
    DATASETS,
    DatasetNotFoundError,
    ModelNameError,
    check_model_name,
    load_data,
    load_exact_test_mask,
)
from .distribute import STRATEGIES, StrategyError  # noqa: E402
from .profiles import PROFILES, TrainingSetTooSmallError  # noqa: E402

logger = logging.getLogger("training")  # __name__ is "__main__" under -m


def train_command(args):
    from .export import list_versions
    from .pipeline import train_and_export

    data = _folder_data(args)
    names = list(DATASETS) if args.model == "all" else [args.model]
    results = []
    for name in names:
        if args.if_missing and list_versions(args.models_dir, name):
            version = list_versions(args.models_dir, name)[-1]
            print(f"{name}: version {version} already exported under {args.models_dir}/{name}, skipped")
            continue
        version_dir = train_and_export(
            name, profile=args.profile, models_dir=args.models_dir, data_dir=args.data_dir,
            architecture=args.architecture, limit=args.limit, epochs=args.epochs,
            verbose=1 if sys.stdout.isatty() else 2,  # progress bars only where they redraw in place
            data=data,
            logs_dir=args.logs_dir, resume=args.resume, precision=args.precision, strategy=args.strategy,
        )
        if version_dir is None:  # a worker other than the chief: the chief exports and reports
            print(f"{name}: trained with the other workers; the chief exports the version")
            continue
        results.append((name, version_dir))
    for name, version_dir in results:
        record = json.loads((version_dir / "assets.extra" / "evaluation.json").read_text())
        exact = (f", {record['exact_test_accuracy']:.2%} on the exact-pixel images"
                 if "exact_test_accuracy" in record else "")
        print(f"{name}: {version_dir}  test accuracy {record['test_accuracy']:.2%}{exact}"
              f"  ({record['training_seconds']:.0f} s training; report: {version_dir / 'REPORT.md'})")
    return 0


def _folder_data(args):
    """The folder of one's own images that --data names, read and split; None for a built-in model."""
    if args.data is None:
        if args.model not in (*DATASETS, "all"):
            raise ModelNameError(f"{args.model!r} is not a built-in model ({', '.join(DATASETS)}, all); give "
                                 "--data <folder> to train it on your own images")
        if args.image_size is not None or args.preprocessing:
            raise ModelNameError("--image-size and --preprocessing apply to --data folders only")
        return None
    from .folders import read_folder

    check_model_name(args.model)
    return read_folder(args.data, args.model, image_size=args.image_size, preprocessing=args.preprocessing)


def import_command(args):
    from .importer import import_model

    version_dir = import_model(args.name, args.model, args.labels, models_dir=args.models_dir,
                               preprocessing=args.preprocessing, data=args.data, image_size=args.image_size)
    record = json.loads((version_dir / "assets.extra" / "evaluation.json").read_text())
    accuracy = (f"  test accuracy {record['test_accuracy']:.2%} on {record['test_images']} images of "
                f"{args.data} (report: {version_dir / 'REPORT.md'})" if args.data else "")
    print(f"{args.name}: {version_dir}{accuracy}")
    return 0


def evaluate_command(args):
    from .export import load_exported_model
    from .train import evaluate

    model = load_exported_model(args.models_dir, args.model, args.version)
    _, (x_test, y_test) = load_data(args.model, args.data_dir)
    evaluation = evaluate(model, x_test, y_test)
    print(f"{args.model}: {model.version_dir}  test accuracy {evaluation['accuracy']:.2%}"
          f" on {evaluation['test_images']} images")
    exact = load_exact_test_mask(args.model, args.data_dir)
    if exact is not None:
        exact_accuracy = evaluate(model, x_test[exact], y_test[exact])["accuracy"]
        print(f"{args.model}: accuracy {exact_accuracy:.2%} on the {exact.sum()} exact test images")
    if model.ood is None:
        print(f"{args.model}: version {model.version_dir.name} was exported without an "
              "out-of-distribution score")
        return 0
    from .ood_report import evaluate_ood, render_table

    result = evaluate_ood(model, args.model, model.preprocessing, model.ood["threshold"],
                          data_dir=args.data_dir, count=args.foreign_count, test_count=args.test_count,
                          seed=args.seed)
    print(f"{args.model}: out-of-distribution score ({model.ood['method']}), {args.foreign_count} foreign "
          f"images per kind (seed {args.seed}):")
    print("\n".join(render_table(result)))
    return 0


def samples_command(args):
    """Write real test-set images as PNG files named <index>_<label>.png, to try the API with."""
    from PIL import Image

    _, (x_test, y_test) = load_data(args.model, args.data_dir)
    if args.start >= len(x_test):
        logger.error("--start %d: %s's test set has %s images (indexes 0 to %s)", args.start, args.model,
                     f"{len(x_test):,}", f"{len(x_test) - 1:,}")
        return 2
    classes = DATASETS[args.model].classes
    output = os.path.join(args.output_dir, args.model)
    os.makedirs(output, exist_ok=True)
    for index in range(args.start, min(args.start + args.count, len(x_test))):
        image = x_test[index]
        label = classes[int(y_test[index])].replace("/", "-").replace(" ", "_")
        path = os.path.join(output, f"{index}_{label}.png")
        Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(path)
        print(path)
    return 0


def whole_number(low, high=None):
    """argparse type: an integer from `low` to `high` (0 or -1 epochs exported an untrained model, a
    negative --limit dropped the last images, a negative --test-count the last test images)."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low or high is not None and value > high:
            bounds = f"of at least {low}" if high is None else f"from {low} to {high:,}"
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number {bounds}")
        return value

    return parse


positive_int = whole_number(1)
# The foreign images of a kind come from another data set's 10,000 test images at most.
FOREIGN_COUNT = whole_number(1, 10000)


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train and export a new version")
    train.add_argument("--model", required=True,
                       help=f"{', '.join(DATASETS)} or all; with --data, a name for a model of your own")
    train.add_argument("--data", help="a folder with one sub-folder of images per class: train on it")
    train.add_argument("--image-size", type=int, help="with --data: the input's side in pixels (default: "
                                                      "from the images)")
    train.add_argument("--preprocessing", choices=["full_frame", "centered_object", "mnist_digit"],
                       help="with --data: how the gateway reframes uploads (default: from the images)")
    train.add_argument("--profile", default="quick", choices=list(PROFILES))
    train.add_argument("--architecture", default="cnn", choices=["cnn", "mlp"])
    train.add_argument("--epochs", type=positive_int, help="override the profile's epochs")
    train.add_argument("--limit", type=positive_int, help="train on the first LIMIT training images only")
    train.add_argument("--if-missing", action="store_true", help="skip models that have a version already")
    train.add_argument("--logs-dir", default=os.environ.get("LOGS_DIR", "logs"),
                       help="checkpoints, the per-epoch history (JSON lines) and TensorBoard logs of "
                            "each run (default: logs)")
    train.add_argument("--resume", action="store_true",
                       help="continue the interrupted run of this model and profile from its last checkpoint")
    train.add_argument("--precision", default="auto",
                       choices=["auto", "float32", "mixed_float16", "mixed_bfloat16"],
                       help="auto: mixed float16 on a GPU, float32 otherwise")
    train.add_argument("--strategy", default="auto", choices=STRATEGIES,
                       help="one: one device; mirrored: every GPU of this machine; multiworker: the "
                            "cluster in TF_CONFIG (only its chief exports); auto (default): multiworker "
                            "when TF_CONFIG names several workers, mirrored on several GPUs, else one")
    train.set_defaults(handler=train_command)

    imported = commands.add_parser("import", help="export a classifier trained elsewhere as a new version")
    imported.add_argument("--name", required=True, help="the model's name (not a built-in model's)")
    imported.add_argument("--model", required=True, help="a .keras file or a SavedModel folder")
    imported.add_argument("--labels", required=True, help="one class name a line, in output order")
    imported.add_argument("--preprocessing", choices=["full_frame", "centered_object", "mnist_digit"],
                          default="full_frame", help="how the gateway reframes uploads (default full_frame)")
    imported.add_argument("--image-size", type=int,
                          help="the input's side, for a model whose input size is not fixed")
    imported.add_argument("--data", help="a folder with one sub-folder of images per class: evaluate on it "
                          "(and, from 100 images, calibrate an out-of-distribution threshold on half)")
    imported.add_argument("--models-dir", default=os.environ.get("MODEL_BASE_PATH", "models"))
    imported.set_defaults(handler=import_command)

    evaluate = commands.add_parser("evaluate", help="measure an exported version on the test set")
    evaluate.add_argument("--model", required=True, choices=list(DATASETS))
    evaluate.add_argument("--version", type=positive_int, help="default: the latest")
    evaluate.add_argument("--foreign-count", type=FOREIGN_COUNT, default=1000,
                          help="foreign images of each kind for the out-of-distribution table (default 1000)")
    evaluate.add_argument("--test-count", type=positive_int, help="test images for it (default: all)")
    evaluate.add_argument("--seed", type=whole_number(0), default=0,
                          help="seed of the foreign images (default 0)")
    evaluate.set_defaults(handler=evaluate_command)

    samples = commands.add_parser("samples", help="write test-set images as PNG files to try the API with")
    samples.add_argument("--model", required=True, choices=list(DATASETS))
    samples.add_argument("--count", type=positive_int, default=10)
    samples.add_argument("--start", type=whole_number(0), default=0, help="index of the first test image")
    samples.add_argument("--output-dir", default="samples")
    samples.add_argument("--data-dir", help="default: $DATA_DIR, else ~/.keras/datasets")
    samples.set_defaults(handler=samples_command)

    for command in (train, evaluate):
        command.add_argument("--models-dir", default=os.environ.get("MODEL_BASE_PATH", "models"))
        command.add_argument("--data-dir", help="default: $DATA_DIR, else ~/.keras/datasets")
    return parser


def _terminate(signum, frame):
    raise SystemExit(128 + signum)


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for chatty in ("absl", "tensorflow"):  # their INFO lines narrate SavedModel internals
        logging.getLogger(chatty).setLevel(logging.WARNING)
    from serving.model_config import RegistryError

    from .export import OutputFolderError, VersionNotFoundError
    from .folders import DataFolderError
    from .importer import ModelImportError
    from .train import CheckpointMismatchError

    try:
        return args.handler(args)
    # A message, not a traceback.
    except (DatasetNotFoundError, VersionNotFoundError, TrainingSetTooSmallError, StrategyError,
            DataFolderError, ModelNameError, ModelImportError, CheckpointMismatchError,
            OutputFolderError) as error:
        logger.error("%s", error)
        return 2
    except RegistryError as error:  # after the export: the version is in place, its model not listed
        logger.error("%s. The version is exported but the model is not listed for serving: fix the file, "
                     "then run `python -m serving.model_config --models-dir %s --add <name>`", error,
                     getattr(args, "models_dir", "models"))
        return 2


if __name__ == "__main__":
    # `docker stop`, Kubernetes and `timeout` send SIGTERM: stop as Ctrl-C does, through the cleanups
    # (export_model's staging folder), not at once with a half-written version left in the models folder.
    signal.signal(signal.SIGTERM, _terminate)
    sys.exit(main())
