"""The command line: ``python -m nucleilib COMMAND ...`` (also installed as ``nucleilib``).

Each command is a thin wrapper around library functions; ``--help`` on every command.
Errors a user can fix (a bad file, a missing model) are printed as one line, without a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Sequence


def _command_line(argv: Sequence[str] | None) -> str:
    words = list(sys.argv[1:] if argv is None else argv)
    world_size, per_node = int(os.environ.get("WORLD_SIZE", "1")), os.environ.get("LOCAL_WORLD_SIZE", "1")
    if world_size > 1:  # started by torchrun
        nodes = ["--nnodes", str(world_size // int(per_node))] if world_size != int(per_node) else []
        return shlex.join(["torchrun", *nodes, "--nproc_per_node", per_node, "-m", "nucleilib", *words])
    return shlex.join(["python", "-m", "nucleilib", *words])


def _make_data(args: argparse.Namespace) -> int:
    from nucleilib import io, synth
    dataset = synth.make_dataset(n=args.n, size=args.size, seed=args.seed)
    io.save_npz(args.out, dataset["images"], dataset["masks"], dataset["labels"])
    n_nuclei = sum(int(labels.max()) for labels in dataset["labels"])
    print(f"wrote {args.out}: {args.n} images of {args.size}x{args.size}, {n_nuclei} nuclei (seed {args.seed})")
    return 0


def _import(args: argparse.Namespace) -> int:
    from nucleilib import datasets
    if args.command == "import-dsb2018":
        names = _split_names(datasets.dsb2018_names(args.root), args)
        summary = datasets.import_dsb2018(args.root, args.out, size=args.size, names=names)
    elif args.command == "import-bbbc039":
        names = _split_names(datasets.bbbc039_names(args.root), args)
        summary = datasets.import_bbbc039(args.root, args.out, size=args.size, names=names)
    else:
        names = _split_names(datasets.pair_names(args.images_dir, args.labels_dir), args)
        summary = datasets.import_pairs(args.images_dir, args.labels_dir, args.out, size=args.size, names=names)
    print(f"wrote {args.out}: {json.dumps(summary)}")
    return 0


def _split_names(names: list[str], args: argparse.Namespace) -> list[str]:
    """The image ids of the chosen part of the fixed, seeded train/test split (see ``datasets.real_split``)."""
    from nucleilib import datasets
    if args.split == "all":
        return names
    train_names, test_names = datasets.real_split(names, test_fraction=args.test_fraction, seed=args.split_seed)
    return train_names if args.split == "train" else test_names


def _download(args: argparse.Namespace) -> int:
    from nucleilib import datasets
    out = datasets.download(args.name, cache_dir=args.dir, out=args.out, size=args.size)
    print(f"wrote {out}")
    return 0


def _train(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    from nucleilib import train
    from nucleilib.checkpoint import last_checkpoint_path
    # The preset's settings; the options given on the command line (not None) override them.
    settings = train.TrainSettings.from_preset(
        args.preset, epochs=args.epochs, lr=args.lr, seed=args.seed, max_minutes=args.max_minutes, base=args.base,
        depth=args.depth, batch_size=args.batch_size, compile=args.compile,
    )
    settings = dataclasses.replace(settings, early_stopping=args.early_stopping or None)  # 0: never stop early
    result = train.train_from_npz(args.data, args.out, settings, command=_command_line(argv), resume=args.resume,
                                  init=args.init)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only the first process reports
        print(json.dumps(result.get("metrics", {}), indent=2))
        print(f"wrote {args.out} and {Path(args.out).with_suffix('.history.json')}")
    if result["history"]["stop_reason"] == "interrupted":
        print(f"interrupted; continue with --resume {last_checkpoint_path(args.out)}", file=sys.stderr)
        return 130
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from nucleilib import evaluate
    settings = _count_settings(args)
    metrics = evaluate.evaluate_path(args.data, model_path=args.model, method=args.method, settings=settings,
                                     layout=args.layout, subset=args.split, precision=args.precision)
    print(json.dumps(metrics, indent=2))
    return 0


def _count_settings(args: argparse.Namespace) -> "CountSettings":
    """The counting settings the options name; the ones not given keep CountSettings' defaults."""
    from nucleilib.count import CountSettings
    given = {"threshold": args.threshold, "min_area": args.min_area, "split": False if args.no_split else None}
    return CountSettings(**{key: value for key, value in given.items() if value is not None})


def _expand_inputs(patterns: Sequence[str]) -> list[Path]:
    """Files named, files in named folders, and glob matches, in a stable order."""
    from nucleilib.io import IMAGE_SUFFIXES
    paths: list[Path] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            paths += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif any(ch in pattern for ch in "*?["):
            paths += [Path(p) for p in sorted(glob.glob(pattern))]
        else:
            paths.append(path)  # a missing file is reported when it is read
    return paths


def _count(args: argparse.Namespace) -> int:
    from nucleilib import evaluate
    settings = _count_settings(args)  # bad options are refused before anything is read
    if args.channel is not None and args.channel < 0:
        raise ValueError(f"--channel must be 0 or more, got {args.channel}")
    inputs = _expand_inputs(args.images)
    if not inputs:
        raise ValueError("no images given (no file matched)")
    summary = evaluate.count_files(inputs, args.out, model_path=args.model, settings=settings, channel=args.channel,
                                   overwrite=args.overwrite, precision=args.precision)
    for message in summary["failures"]:
        print(f"error: {message}", file=sys.stderr)
    print(f"wrote {Path(args.out) / evaluate.COUNTS_CSV}: {summary['counted']} images counted, {summary['skipped']} "
          f"counted before, {len(summary['failures'])} failed")
    return 1 if summary["failures"] else 0


def _bench(args: argparse.Namespace) -> int:
    from nucleilib import bench
    results = bench.run_all(quick=args.quick, progress=not args.json)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print("machine: " + ", ".join(f"{key} {value}" for key, value in results.pop("machine").items()))
        width = max(map(len, results))
        for key, value in results.items():
            print(f"{key:>{width}}  {value}")
    return 0


def _data_arguments(commands: argparse._SubParsersAction) -> None:
    """The ``make-data``, ``import-*`` and ``download`` commands."""
    make = commands.add_parser("make-data", help="write the built-in synthetic data set (.npz with labels)")
    make.add_argument("--n", type=int, default=2000, help="number of images (default 2000)")
    make.add_argument("--size", type=int, default=128, help="image height and width (default 128)")
    make.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    make.add_argument("--out", default="data/nuclei.npz", help="output .npz (default data/nuclei.npz)")

    for name, source in (("import-dsb2018", "a 2018 Data Science Bowl stage1_train folder"),
                         ("import-bbbc039", "a BBBC039 folder (images/ and masks/)")):
        importer = commands.add_parser(name, help=f"import {source} into the .npz contract")
        importer.add_argument("root", help=source)
        importer.add_argument("--out", required=True, help="output .npz")
        importer.add_argument("--size", type=int, default=128, help="tile size (default 128)")
    pairs = commands.add_parser("import-pairs", help="import folders of image and label files matched by stem")
    pairs.add_argument("images_dir", help="folder of TIFF/PNG images")
    pairs.add_argument("labels_dir", help="folder of label images (or binary masks) with the same stems")
    pairs.add_argument("--out", required=True, help="output .npz")
    pairs.add_argument("--size", type=int, default=128, help="tile size (default 128)")
    for importer in (commands.choices["import-dsb2018"], commands.choices["import-bbbc039"], pairs):
        importer.add_argument("--split", choices=["all", "train", "test"], default="all",
                              help="import every image, or only the training or held-out part of a seeded split")
        importer.add_argument("--test-fraction", type=float, default=0.3, help="held-out share (default 0.3)")
        importer.add_argument("--split-seed", type=int, default=0, help="seed of the split (default 0)")

    download = commands.add_parser("download", help="download a public data set (hash-checked, cached) and import it")
    download.add_argument("name", choices=["dsb2018", "bbbc039"])
    download.add_argument("--dir", default=None, help="cache folder (default ~/.cache/nucleilib)")
    download.add_argument("--out", default=None, help="output .npz (default CACHE/NAME.npz)")
    download.add_argument("--size", type=int, default=128, help="tile size (default 128)")


def _train_arguments(train: argparse.ArgumentParser) -> None:
    """The options of ``train``."""
    train.add_argument("--data", required=True, nargs="+", help="training .npz file(s)")
    train.add_argument("--out", required=True, help="checkpoint to write (.pt)")
    train.add_argument("--epochs", type=int, default=None, help="maximum epochs (default: from the preset)")
    train.add_argument("--lr", type=float, default=1e-3,
                       help="Adam learning rate (default 0.001, also for --init: chapter 09 measures why)")
    train.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    train.add_argument("--preset", choices=["fast", "default", "full"], default="default",
                       help="fast: minutes on a laptop CPU; full: the source project's 300-epoch run")
    train.add_argument("--max-minutes", type=float, default=None, help="stop after this many minutes")
    train.add_argument("--early-stopping", type=int, default=8, metavar="EPOCHS",
                       help="stop after this many epochs without a better validation loss; 0: never (default 8)")
    train.add_argument("--init", default=None, metavar="CHECKPOINT",
                       help="fine-tune: start from these weights (e.g. nucleilib/nuclei_unet.pt, the shipped model); "
                            "the model size and outputs are the checkpoint's")
    train.add_argument("--resume", default=None, metavar="LAST_CHECKPOINT",
                       help="continue an interrupted run from its OUT.last.pt (give the run's other options again)")
    train.add_argument("--base", type=int, default=None, help="U-Net channels of the first level (default: preset)")
    train.add_argument("--depth", type=int, default=None, help="U-Net poolings (default: preset)")
    train.add_argument("--batch-size", type=int, default=None,
                       help="images per step, over all processes under torchrun (default: preset)")
    train.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                       help="train through torch.compile (default: on the CPU for runs of 1000+ steps "
                            "when a C++ compiler is there)")


def _count_arguments(command: argparse.ArgumentParser) -> None:
    """The model and counting options that ``evaluate`` and ``count`` share (defaults: ``count.CountSettings``)."""
    command.add_argument("--model", default=None, help="checkpoint (default: the shipped model)")
    command.add_argument("--threshold", type=float, default=None, help="probability threshold in (0, 1) (default 0.5)")
    command.add_argument("--min-area", type=int, default=None, help="smallest nucleus in pixels (default 10)")
    command.add_argument("--no-split", action="store_true", help="do not split touching nuclei")
    command.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                         help="the network's arithmetic; auto (default): bfloat16 where the CPU computes it "
                              "natively (about 2x faster network), else fp32")


def _export(args: argparse.Namespace) -> int:
    from nucleilib import export

    metadata = export.export_onnx(args.out, model_path=args.model)
    print(f"wrote {args.out}: ONNX, input 'image' (N, 1, H, W) float32 normalized as {metadata['normalization']}, "
          f"H and W multiples of {metadata['size_multiple']}; output 'logits' (N, heads {metadata['heads']}, H, W)")
    return 0


def _bench_arguments(bench: argparse.ArgumentParser) -> None:
    """The options of ``bench``."""
    bench.add_argument("--json", action="store_true", help="print JSON")
    bench.add_argument("--quick", action="store_true",
                       help="tiny sizes, to check the command runs (figures meaningless)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m nucleilib``: one sub-command per task.

    Examples
    --------
    >>> build_parser().parse_args(["make-data", "--n", "4"]).n
    4
    """
    parser = argparse.ArgumentParser(prog="nucleilib",
                                     description="Segment and count cell nuclei in fluorescence images with a U-Net.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _data_arguments(commands)
    _train_arguments(commands.add_parser("train", help="train a U-Net on an .npz data set"))
    evaluate = commands.add_parser("evaluate", help="print JSON metrics of a model on annotated data")
    evaluate.add_argument("--data", required=True,
                          help=".npz with labels; a folder with images/ and labels/; a DSB 2018 or BBBC039 folder")
    evaluate.add_argument("--layout", choices=["auto", "npz", "pairs", "dsb2018", "bbbc039"], default="auto",
                          help="how to read --data (default: guessed; BBBC039 needs --layout bbbc039)")
    evaluate.add_argument("--split", choices=["all", "train", "test"], default="all",
                          help="folders only: every image, or one part of the seeded split (seed 0, 30%% test)")
    evaluate.add_argument("--method", choices=["model", "baseline"], default="model",
                          help="the U-Net, or the classical Otsu + watershed baseline")
    _count_arguments(evaluate)
    count = commands.add_parser("count", help="count nuclei in images; writes counts.csv, labels and overlays")
    count.add_argument("images", nargs="+", help="image files, folders or globs (TIFF/PNG/JPEG)")
    count.add_argument("--out", required=True, help="output folder")
    _count_arguments(count)
    count.add_argument("--channel", type=int, default=None,
                       help="channel holding the nuclei in colour images (default, RGB: the brightest; needed for 2)")
    count.add_argument("--overwrite", action="store_true",
                       help="replace the counts already in --out (default: resume them; other settings are refused)")
    export = commands.add_parser("export", help="write the model as ONNX for tools without PyTorch")
    export.add_argument("--format", choices=["onnx"], default="onnx", help="file format (default onnx)")
    export.add_argument("--out", required=True, help="output file, e.g. nuclei_unet.onnx")
    export.add_argument("--model", default=None, help="checkpoint (default: the shipped model)")
    bench = commands.add_parser("bench", help="measure this machine: matmul peak, training and inference speed")
    _bench_arguments(bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line on ``argv`` (default ``sys.argv[1:]``); the exit status is 0 on success, 1 when some
    inputs failed, 2 on a usage or input error.

    Examples
    --------
    >>> import contextlib, io
    >>> with contextlib.redirect_stderr(io.StringIO()) as err:
    ...     main(["evaluate", "--data", "missing.npz", "--method", "baseline"])
    2
    >>> err.getvalue().startswith("error: missing.npz")
    True
    """
    args = build_parser().parse_args(argv)
    handlers = {"make-data": _make_data, "download": _download, "evaluate": _evaluate, "count": _count, "bench": _bench,
                "export": _export}
    try:
        if args.command == "train":
            return _train(args, argv)
        return (_import if args.command.startswith("import-") else handlers[args.command])(args)
    except (ValueError, OSError, RuntimeError) as error:
        from nucleilib.io import describe_error
        print(f"error: {describe_error(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        again = "; run the same command again to count the rest" if args.command == "count" else ""
        print(f"interrupted{again}", file=sys.stderr)
        return 130
