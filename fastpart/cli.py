"""The ``fastpart`` command: argparse subcommands -> a frozen config -> one library call each."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

import fastpart
from fastpart.errors import FastpartError


def _datasets_help() -> str:
    from fastpart.datasets import DATASETS

    return "\n".join(f"  {name:<13} {info.description}" for name, info in DATASETS.items())


def add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a dataset's source files into .beton splits + manifest.json",
        description="Convert a dataset into <out>/<name>/<split>.beton (lossless raw images, label, index and "
        "extra fields) plus a manifest.json. A current conversion is reused unless --force.",
        epilog="datasets:\n" + _datasets_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dataset", help="dataset name (see the list below)")
    p.add_argument("--source", help="local copy of the official file or folder (archive or extracted)")
    p.add_argument("--download", action="store_true", help="fetch the official files and verify their checksums")
    p.add_argument("--mirror", help="with --download: fetch <MIRROR>/<official file name> instead")
    p.add_argument("--checksum", help="expected checksum of --source, as md5:<hex> or sha256:<hex>")
    p.add_argument("--out", default="data", help="output root; files go to <out>/<name>/ (default: %(default)s)")
    p.add_argument("--name", help="output folder name (default: the dataset name)")
    p.add_argument("--format", default="beton", choices=["beton", "npz"],
                   help="beton (ffcv) or npz (no ffcv needed) (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="rebuild even if a current conversion exists")
    p.add_argument("--n-train", type=int, help="generated datasets: training images (shapes: 5000)")
    p.add_argument("--n-test", type=int, help="generated datasets: test images (shapes: 1000)")
    p.add_argument("--seed", type=int, help="generated datasets: seed (shapes: 0)")
    p.add_argument("--generate-from", metavar="DATASET",
                   help="cifar10c: generate the 19 corruptions x 5 severities from the test split of the "
                   "converted DATASET (cifar10) instead of reading the official files; --n-test takes "
                   "its first N images")
    p.add_argument("--data-dir", help="with --generate-from: root holding <DATASET>/ (default: --out)")
    p.set_defaults(handler=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    from fastpart.config import ConvertConfig
    from fastpart.convert import convert, summary

    cfg = ConvertConfig(**{k: v for k, v in vars(args).items() if k not in ("handler", "verb")})
    print(summary(convert(cfg)))
    return 0


def add_train(sub: argparse._SubParsersAction) -> None:
    from fastpart.train import add_arguments

    p = sub.add_parser(
        "train",
        help="adversarial training of a model on a converted dataset",
        description="Train a robust classifier on a converted dataset; writes metrics.jsonl, "
        "config.json, env.json and checkpoints to the run folder and prints a summary.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(handler=run_train)


def run_train(args: argparse.Namespace) -> int:
    from fastpart.train import config_from_args, train

    result = train(config_from_args(args))
    if result.rank == 0:  # under torchrun every process returns; one summary
        print(result.summary())
    return 0


def add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="markdown report with figures of one run, or a comparison of several",
        description="Write <run>/report/report.md with PNG figures: the accuracy table of eval.json, the training "
        "summary and curves of metrics.jsonl, and a Figure-2 panel (image, CAM, mask, perturbation). With several "
        "runs, a comparison in <first run>/report-vs-<second run name>/. Prints the path of report.md.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folder written by `fastpart train`")
    p.add_argument("--out", metavar="DIR", help="report folder (default: <run>/report, or <run>/report-vs-<other> for several runs)")
    p.add_argument("--images", type=int, default=4, metavar="N",
                   help="test images in the Figure-2 panel, 0 for none (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto, for the panel (default: %(default)s)")
    p.add_argument("--data-dir", metavar="DIR", help="where the converted dataset lives (default: the run's --data-dir)")
    p.set_defaults(handler=run_report)


def run_report(args: argparse.Namespace) -> int:
    from fastpart.report import write_report

    print(write_report(args.runs, out=args.out, n_images=args.images, device=args.device, data_dir=args.data_dir))
    return 0


def add_eval(sub: argparse._SubParsersAction) -> None:
    from fastpart.config import DEFAULT_EVAL_ATTACKS, EvalConfig

    d = EvalConfig(run="")
    p = sub.add_parser(
        "eval",
        help="robust accuracy of a trained run: natural, PGD-20, MMA, AutoAttack, adaptive, CIFAR-10-C, checks",
        description="Evaluate a run folder (or checkpoint) on its dataset's test split; prints a table and writes "
        "eval.json and eval.csv (the paper-table row) to the run folder. Progress is saved after every batch: "
        "run the same command again to resume.",
        epilog="attacks: natural, pgd<k> (pgd20), mma, mma-ref, aa (AutoAttack standard), aa-fast (APGD-CE + APGD-T, "
        "not standard AA), aa-apgd-ce, aa-apgd-t, aa-fab-t, aa-square, adaptive[<k>], adaptive-mma, eps-curve, "
        "cifar10c, checks",
    )
    p.add_argument("run", metavar="RUN", help="run folder written by `fastpart train`, or its checkpoint.pt")
    p.add_argument("--attacks", default=",".join(DEFAULT_EVAL_ATTACKS), help="comma-separated (default: %(default)s)")
    p.add_argument("--n", type=int, help="evaluate a seeded subset of N test images (default: all)")
    p.add_argument("--seed", type=int, default=d.seed, help="subset and attack seed (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="(default: %(default)s)")
    p.add_argument("--device", default=d.device, help="cpu, cuda, cuda:N or auto (default: %(default)s)")
    p.add_argument("--precision", default=d.precision, choices=["fp32", "bf16", "fp16"],
                   help="autocast precision of the model under attack (default: %(default)s)")
    p.add_argument("--data-dir", help="where the converted dataset lives (default: the run's --data-dir)")
    p.add_argument("--out", help="folder for eval.json / eval.csv (default: the run folder)")
    p.add_argument("--eps", type=float, default=d.eps, help="L-inf budget (default: 8/255)")
    p.add_argument("--alpha", type=float, default=d.alpha, help="PGD step (default: 2/255)")
    p.add_argument("--adaptive-eps", type=float, default=d.adaptive_eps,
                   help="adaptive attacks: budget of the CAM-important pixels (default: 12/255)")
    p.add_argument("--adaptive-eps-low", type=float, default=d.adaptive_eps_low,
                   help="adaptive attacks: budget of the other pixels (default: 8/255)")
    p.add_argument("--eps-curve", type=float, nargs="+", default=list(d.eps_curve),
                   help="eps values of eps-curve and checks (default: 0 to 16/255)")
    p.add_argument("--surrogate", metavar="RUN", help="checks: another run whose PGD-20 examples are transferred")
    p.add_argument("--c-data-dir", help="cifar10c: where the converted CIFAR-10-C lives (default: --data-dir)")
    p.add_argument("--c-dataset", default=d.c_dataset, help="cifar10c: its folder name (default: %(default)s)")
    p.add_argument("--restart", action="store_true", help="ignore saved progress and start afresh")
    p.set_defaults(handler=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    from fastpart.config import EvalConfig
    from fastpart.evaluate import evaluate, table

    fields = {k: v for k, v in vars(args).items() if k in EvalConfig.__dataclass_fields__}
    fields["attacks"] = tuple(a.strip() for a in args.attacks.split(",") if a.strip())
    fields["eps_curve"] = tuple(args.eps_curve)
    print(table(evaluate(EvalConfig(**fields))))
    return 0


VERBS: list[Callable[[argparse._SubParsersAction], None]] = [add_convert, add_train, add_eval, add_report]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastpart",
        description="Fast, tested Pixel-reweighted Adversarial Training (PART) and its baselines.",
    )
    parser.add_argument("--version", action="version", version=f"fastpart {fastpart.__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for add in VERBS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except FastpartError as exc:
        print(f"fastpart {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fastpart {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
