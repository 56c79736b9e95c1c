"""The ``fastpart`` command: argparse subcommands -> a frozen config -> one library call each.

Every verb imports its stage only when it runs, so ``fastpart --version`` and ``--help`` stay fast.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

import fastpart
from fastpart.errors import FastpartError


def _datasets_help() -> str:
    from fastpart.data.datasets import DATASETS

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
    from fastpart.data.convert import convert, summary

    cfg = ConvertConfig(**{k: v for k, v in vars(args).items() if k not in ("handler", "verb")})
    print(summary(convert(cfg)))
    return 0


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    from fastpart.config import (BATCH_SCOPES, CAM_BACKENDS, CAM_METHODS, COMPILE_MODES, INTERPOLATIONS, MASK_MODES,
                                 METHODS, PRECISIONS, TARGETS, TRAINING_ATTACKS, TrainConfig)

    d = TrainConfig()
    p.add_argument("--dataset", default=d.dataset, help="converted dataset name (folder under --data-dir)")
    p.add_argument("--data-dir", default=d.data_dir, help="where `fastpart convert --out` wrote")
    p.add_argument("--out", default=d.out, help="run folder for metrics, config, masks and checkpoints")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--method", default=d.method, choices=list(METHODS),
                   help="at/trades/mart, or their pixel-reweighted versions part/part-trades/part-mart")
    p.add_argument("--model", help="fastpart or timm model name (default: the dataset's paper model)")
    p.add_argument("--epochs", type=int, help="epochs (default: the dataset's paper setting)")
    p.add_argument("--batch-size", type=int, help="batch size (default: paper setting); see --batch-scope")
    p.add_argument("--batch-scope", default=d.batch_scope, choices=BATCH_SCOPES,
                   help="under torchrun: global (--batch-size is the global batch, each of the N processes takes "
                   "batch-size / N; it must divide) or per-gpu (each process takes --batch-size). The lr is not "
                   "rescaled: set --lr for the global batch yourself")
    p.add_argument("--lr", type=float, help="SGD learning rate (default: paper setting)")
    p.add_argument("--wd", type=float, help="weight decay (default: paper setting)")
    p.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum")
    p.add_argument("--milestones", type=int, nargs="*", help="epochs where lr drops 10x (default: 75%% of epochs)")
    p.add_argument("--eps", type=float, default=d.eps, help="L-inf budget of important pixels, [0, 1] units")
    p.add_argument("--eps-low", type=float, default=d.eps_low, help="PART: budget of the other pixels")
    p.add_argument("--alpha", type=float, help="PGD step size (default: the dataset's paper setting)")
    p.add_argument("--steps", type=int, default=d.steps, help="attack steps during training (PGD steps; MMA: "
                   "APGD iterations per target)")
    p.add_argument("--ae", default=d.ae, choices=TRAINING_ATTACKS,
                   help="training adversarial examples: pgd (the objective's loss), or mma (minimum-margin attack, "
                   "top-3 targets; PART's App. H.4), both under the (mask-weighted) budget")
    p.add_argument("--burn-in", type=int, default=d.burn_in, help="PART: epochs of the plain base method first")
    p.add_argument("--mask-freq", type=int, default=d.mask_freq,
                   help="PART: recompute masks every N epochs after the burn-in (0: per batch, no cache)")
    p.add_argument("--cam", default=d.cam, choices=CAM_METHODS, help="PART: class activation map method")
    p.add_argument("--cam-backend", default=d.cam_backend, choices=CAM_BACKENDS,
                   help="PART: native batched CAM, or the pytorch-grad-cam package")
    p.add_argument("--cam-layer", help="PART: module name whose output the CAM explains (default: the model's "
                   "last conv block, e.g. layer4 of ResNet-18, block3 of WRN)")
    p.add_argument("--mask-mode", default=d.mask_mode, choices=MASK_MODES,
                   help="PART: paper (per pixel, standardised map > tau) or reference (released code, per channel)")
    p.add_argument("--mask-target", default=d.mask_target, choices=TARGETS,
                   help="PART: explain the predicted class or the true label")
    p.add_argument("--tau", type=float, default=d.tau, help="PART: threshold on the standardised CAM")
    p.add_argument("--interpolation", default=d.interpolation, choices=INTERPOLATIONS, help="PART: CAM upsampling")
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="test natural + PGD accuracy every k epochs (0: end only)")
    p.add_argument("--eval-n", type=int, help="evaluate on a seeded subset of this many test images (default: all)")
    p.add_argument("--eval-steps", type=int, default=d.eval_steps, help="PGD steps of the test-set evaluation")
    p.add_argument("--ema", type=float, metavar="DECAY",
                   help="keep an exponential moving average of the weights with this decay (e.g. 0.999; buffers are "
                   "copied, not averaged); evaluations report the live and the averaged model (default: off)")
    p.add_argument("--val-n", type=int, default=d.val_n, metavar="N",
                   help="hold out a seeded subset of N training images (never trained on, never in a mask refresh) "
                   "for natural + PGD accuracy every --val-every epochs; the best epoch is kept as best.pt")
    p.add_argument("--val-every", type=int, default=d.val_every, help="validate every k epochs (with --val-n)")
    p.add_argument("--val-steps", type=int, default=d.val_steps, help="PGD steps of the validation")
    p.add_argument("--seed", type=int, default=d.seed, help="seed for weights, order, augmentation, attacks")
    p.add_argument("--device", default=d.device, help="cpu, cuda, cuda:N or auto")
    p.add_argument("--precision", default=d.precision, choices=("auto", *PRECISIONS),
                   help="autocast precision of the model (auto: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--loader", default=d.loader, choices=["auto", "memory", "ffcv"], help="loader backend")
    p.add_argument("--workers", type=int, default=d.workers, help="ffcv decoding threads (0: all cores)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model for the attack and the update (first epoch pays the compile)")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard event files to <out>/tensorboard: every metric per epoch and the mask "
                   "panel (image, CAM, mask) at each refresh (needs: pip install 'fastpart[tensorboard]')")
    p.add_argument("--compile-attack", action="store_true",
                   help="compile the whole PGD attack (every step) as one graph (first batches pay the compile)")
    p.add_argument("--compile-mode", default=d.compile_mode, choices=COMPILE_MODES,
                   help="torch.compile mode of --compile and --compile-attack; reduce-overhead replays CUDA graphs")


def config_from_args(args: argparse.Namespace):
    from fastpart.config import TrainConfig

    return TrainConfig.from_dict({k: v for k, v in vars(args).items() if k not in ("handler", "verb")})


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="adversarial training of a model on a converted dataset",
        description="Train a robust classifier on a converted dataset; writes metrics.jsonl, "
        "config.json, env.json and checkpoints to the run folder and prints a summary.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_train_arguments(p)
    p.set_defaults(handler=run_train)


def run_train(args: argparse.Namespace) -> int:
    from fastpart.training import train

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
    from fastpart.config import DEFAULT_EVAL_ATTACKS, PRECISIONS, EvalConfig

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
    p.add_argument("run", metavar="RUN", nargs="?", default="",
                   help="run folder written by `fastpart train`, or its checkpoint.pt (omit with --checkpoint FILE)")
    p.add_argument("--checkpoint", default=d.checkpoint, metavar="last|best|FILE",
                   help="the run's last checkpoint, its best validation epoch (best.pt, trained with --val-n), or a "
                   "plain state dict fastpart did not write, e.g. a RobustBench zoo file (then --model, --dataset) "
                   "(default: %(default)s)")
    p.add_argument("--weights", default=d.weights, choices=["live", "ema"],
                   help="the trained weights, or their moving average (trained with --ema) (default: %(default)s)")
    p.add_argument("--model", help="with --checkpoint FILE: the registered architecture of the state dict")
    p.add_argument("--dataset", help="with --checkpoint FILE: the converted dataset to evaluate on (under --data-dir)")
    p.add_argument("--normalize", metavar="MEAN,STD",
                   help="with --checkpoint FILE: the model's input normalisation, MEAN,STD or M1,M2,M3,S1,S2,S3 or "
                   "'dataset' (the dataset's statistics); default: none, the model takes [0, 1] images")
    p.add_argument("--attacks", default=",".join(DEFAULT_EVAL_ATTACKS), help="comma-separated (default: %(default)s)")
    p.add_argument("--n", type=int, help="evaluate a seeded subset of N test images (default: all)")
    p.add_argument("--aa-n", type=int, metavar="N",
                   help="run the aa attacks on a seeded subset of N of the evaluated images (default: all of them)")
    p.add_argument("--seed", type=int, default=d.seed, help="subset and attack seed (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="(default: %(default)s)")
    p.add_argument("--device", default=d.device, help="cpu, cuda, cuda:N or auto (default: %(default)s)")
    p.add_argument("--precision", default=d.precision, choices=PRECISIONS,
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


def add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write a run's weights and model_info as RobustBench loads them",
        description="Write <DIR>/<dataset>/Linf/<name>.pt (a state_dict) and <DIR>/model_info/<dataset>/Linf/"
        "<name>.json (RobustBench's schema, numbers from the run's eval.json: natural and aa). Prints the paths.",
    )
    p.add_argument("run", metavar="RUN", help="run folder written by `fastpart train` and evaluated by `fastpart eval`")
    p.add_argument("--robustbench", metavar="DIR", required=True, help="RobustBench model folder to write into")
    p.add_argument("--name", help="model name (default: fastpart_<method>_<model>_<dataset>)")
    p.add_argument("--checkpoint", default="last", choices=["last", "best"], help="(default: %(default)s)")
    p.add_argument("--weights", default="live", choices=["live", "ema"], help="(default: %(default)s)")
    p.add_argument("--aa", default="aa", choices=["aa", "aa-fast"],
                   help="the eval.json result behind autoattack_acc: aa (AutoAttack standard), or aa-fast, labelled as "
                   "not standard in the footnote (default: %(default)s)")
    p.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> int:
    from fastpart.interop import export_robustbench

    written = export_robustbench(args.run, args.robustbench, args.name, args.checkpoint, args.weights, args.aa)
    print("\n".join(str(p) for p in written.values()))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from fastpart.config import EvalConfig
    from fastpart.evaluation import evaluate, table

    fields = {k: v for k, v in vars(args).items() if k in EvalConfig.__dataclass_fields__}
    fields["attacks"] = tuple(a.strip() for a in args.attacks.split(",") if a.strip())
    fields["eps_curve"] = tuple(args.eps_curve)
    print(table(evaluate(EvalConfig(**fields))))
    return 0


VERBS: list[Callable[[argparse._SubParsersAction], None]] = [add_convert, add_train, add_eval, add_report, add_export]


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
