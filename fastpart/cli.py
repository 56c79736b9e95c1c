"""The ``fastpart`` command: argparse subcommands -> a frozen config -> one library call each.

Every verb imports its stage only when it runs, so ``fastpart --version`` and ``--help`` stay fast.
"""

from __future__ import annotations

import os
import signal
import sys


def _interrupted_while_starting(signum: int, frame: object) -> None:
    """Ctrl-C while this module's imports run (before main's handler can take it): one line, status 130."""
    sys.stderr.write("fastpart: interrupted\n")
    os._exit(130)


_STARTING = signal.getsignal(signal.SIGINT) is signal.default_int_handler
try:
    if _STARTING:
        signal.signal(signal.SIGINT, _interrupted_while_starting)
except ValueError:  # imported outside the main thread, where no handler can be set
    _STARTING = False

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable, NoReturn, Sequence  # noqa: E402

import fastpart  # noqa: E402
from fastpart.options import GROUPS, budget_label, default_of, did_you_mean, options, parse_budget  # noqa: E402
from fastpart.errors import FastpartError  # noqa: E402

LATEST_RUN = "runs/latest"  # where `fastpart train` writes by default, and what eval and report read by default


def _datasets_help() -> str:
    from fastpart.data.datasets import DATASETS

    return "\n".join(f"  {name:<13} {info.description}" for name, info in DATASETS.items())


def add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        allow_abbrev=False,
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
    p.add_argument("--format", default="auto", choices=["auto", "beton", "npz"],
                   help="beton (ffcv) or npz (no ffcv needed); auto: the format of the conversion already there, "
                   "else beton where ffcv is installed, npz otherwise (default: %(default)s)")
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


class OneLineParser(argparse.ArgumentParser):
    """argparse with one-line errors (and a did-you-mean for a misspelt choice), exit status 2."""

    def error(self, message: str) -> NoReturn:
        match = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if match:
            choices = [c.strip(" '") for c in match.group(2).split(",")]
            message = message[: match.start()] + f"invalid choice {match.group(1)!r}" + \
                did_you_mean(match.group(1), choices) + f"; choose from {', '.join(choices)}"
        self.exit(2, f"{self.prog}: error: {message}\n")


def budget_type(text: str) -> float:
    try:
        return parse_budget(text)
    except FastpartError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def names_type(text: str) -> tuple[str, ...]:
    """'natural, pgd20,aa' -> ('natural', 'pgd20', 'aa')."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _shown_default(f) -> str | None:
    shown, default = f.metadata["shown"], default_of(f)
    if shown is False or default is None or f.metadata["kind"] == "flag":
        return None
    if isinstance(shown, str):
        return shown
    if f.metadata["kind"] == "budget":
        return budget_label(default)
    return str(default)


def add_options(p: argparse.ArgumentParser, config_class: type) -> None:
    """One option per field of ``config_class`` (``fastpart.config.option``), in its group, no default set:
    what the user gives is what the namespace holds (the config merges files and defaults)."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    kinds = {"int": dict(type=int), "float": dict(type=float), "budget": dict(type=budget_type, metavar="EPS"),
             "flag": dict(action="store_true"), "ints": dict(type=int, nargs="*"),
             "budgets": dict(type=budget_type, nargs="+", metavar="EPS"), "str": {},
             "names": dict(type=names_type, metavar="A,B,...")}
    for f in options(config_class):
        meta = f.metadata
        if meta["group"] not in groups:
            groups[meta["group"]] = p.add_argument_group(GROUPS[meta["group"]])
        shown = _shown_default(f)
        kw: dict[str, Any] = dict(dest=f.name, default=argparse.SUPPRESS,
                                  help=meta["help"] + (f" (default: {shown})" if shown else ""), **kinds[meta["kind"]])
        if meta["choices"]:
            kw["choices"] = meta["choices"]
        if meta["metavar"]:
            kw["metavar"] = meta["metavar"]
        groups[meta["group"]].add_argument("--" + f.name.replace("_", "-"), **kw)


def add_train(sub: argparse._SubParsersAction) -> None:
    from fastpart.config import TrainConfig

    p = sub.add_parser(
        "train",
        help="adversarial training (PART by default) of a model on a converted dataset",
        description="Train a robust classifier on a converted dataset: PART by default, with the dataset's paper "
        "settings (CIFAR-10: ResNet-18, 80 epochs, burn-in 20, masks every 10). Writes config.json, env.json, "
        "metrics.jsonl and checkpoints to the run folder and prints a summary. Settings come from the defaults, "
        "then a run's config.json (--from RUN, or --resume of --out), then --config FILE, then the options given.",
        allow_abbrev=False,
    )
    files = p.add_argument_group("settings from files")
    files.add_argument("--config", metavar="FILE", help="settings from a TOML or JSON file (keys: the option names; "
                       "a run's config.json is one); options given here override it")
    files.add_argument("--from", dest="from_run", metavar="RUN", help="start from the settings of a recorded run "
                       "(its config.json), e.g. --from runs/x --out runs/y --seed 1")
    add_options(p, TrainConfig)
    p.set_defaults(handler=run_train)


def run_train(args: argparse.Namespace) -> int:
    cfg, given = train_config(args)
    from fastpart.training import train

    result = train(cfg)
    if result.rank == 0:  # under torchrun every process returns; one summary
        print(result.summary())
    return 0


def _read_settings(path: str) -> dict[str, Any]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = None  # type: ignore[assignment]
    file = Path(path)
    if file.suffix == ".toml" and tomllib is None:
        raise FastpartError(f"{path}: TOML settings need Python 3.11 or newer; write them as JSON")
    try:
        text = file.read_text()
    except OSError as exc:
        raise FastpartError(f"cannot read settings file {path}: {exc.strerror or exc}") from None
    try:
        values = tomllib.loads(text) if file.suffix == ".toml" else json.loads(text)
    except ValueError as exc:  # tomllib.TOMLDecodeError is a ValueError
        raise FastpartError(f"{path} is not valid {'TOML' if file.suffix == '.toml' else 'JSON'}: {exc}") from None
    if not isinstance(values, dict):
        raise FastpartError(f"{path}: expected a table of settings")
    return values


def _recorded_settings(path: str, config_class: type | None = None) -> dict[str, Any]:
    """The settings of a file (a run's config.json, --config FILE) for ``config_class`` (default TrainConfig), each
    checked against its option: one line naming the file and the setting when one is not what its option takes."""
    from fastpart.atomic import check_record, schema_of
    from fastpart.config import TrainConfig
    from fastpart.options import from_mapping

    config_class = config_class or TrainConfig
    try:
        values = from_mapping(config_class, _read_settings(path), path)
    except FastpartError as exc:
        raise FastpartError(str(exc) if path in str(exc) else f"{path}: {exc}") from None
    return check_record(values, schema_of(config_class), path)


def train_config(args: argparse.Namespace) -> tuple[Any, set[str]]:
    """The TrainConfig of a command line, without importing torch, and the options the user set (flags and a
    --config file's non-default values): defaults < --from RUN / --resume's config.json < --config < flags.
    The dataset defaults to the only one converted; impossible settings are one line."""
    from dataclasses import replace

    from fastpart.config import TrainConfig, check_train, default_dataset

    flags = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__}
    defaults = {f.name: default_of(f) for f in options(TrainConfig)}
    values: dict[str, Any] = {}
    recorded = args.from_run or (flags.get("out", defaults["out"]) if flags.get("resume") else None)
    if recorded and (args.from_run or (Path(recorded) / "config.json").is_file()):
        path = Path(recorded) / "config.json"
        if not path.is_file():
            raise FastpartError(f"--from {recorded}: no config.json there (give a run folder written by "
                                f"`fastpart train`)")
        values.update(_recorded_settings(str(path)))
        if args.from_run:
            values.pop("out", None)
            values.pop("resume", None)
    file_values = _recorded_settings(args.config) if args.config else {}
    values.update(file_values)
    values.update(flags)
    given = set(flags) | {k for k, v in file_values.items() if v != defaults.get(k)}
    cfg = TrainConfig(**values)
    if cfg.dataset is None:
        cfg = replace(cfg, dataset=default_dataset(cfg.data_dir))
    check_train(cfg, given)
    check_dataset(cfg.data_dir, cfg.dataset)
    return cfg, given


def check_dataset(data_dir: str, dataset: str) -> None:
    """One line when ``dataset`` is not converted under ``data_dir``: how to convert it, or the near names."""
    from fastpart.config import converted_datasets
    from fastpart.data.datasets import DATASETS

    if (Path(data_dir) / dataset / "manifest.json").is_file():
        return
    converted = converted_datasets(data_dir)
    hint = did_you_mean(dataset, converted) or did_you_mean(dataset, list(DATASETS))
    if dataset in DATASETS:
        hint = f": run `fastpart convert {dataset} --out {data_dir}` first"
    elif converted:
        hint += f"; converted there: {', '.join(converted)}"
    else:
        hint += f"; known datasets: {', '.join(DATASETS)}"
    raise FastpartError(f"no readable manifest in {Path(data_dir) / dataset}{hint}")


def add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        allow_abbrev=False,
        help="markdown report with figures of one run, or a comparison of several",
        description="Write <run>/report/report.md with PNG figures: the accuracy table of eval.json, the training "
        "summary and curves of metrics.jsonl, and a Figure-2 panel (image, CAM, mask, |perturbation|). With several "
        "runs, a comparison in reports/<a>-vs-<b>/ under the current folder (beside runs/, inside no run). Prints "
        "the path of report.md.",
    )
    p.add_argument("runs", nargs="*", metavar="RUN", help="run folder written by `fastpart train` (default: runs/latest, "
                   "where `fastpart train` writes by default)")
    p.add_argument("--out", metavar="DIR", help="report folder (default: <run>/report for one run; for several, "
                   "reports/<a>-vs-<b> under the current folder)")
    p.add_argument("--images", type=int, default=4, metavar="N",
                   help="test images in the Figure-2 panel, 0 for none (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto, for the panel (default: %(default)s)")
    p.add_argument("--data-dir", metavar="DIR", help="where the converted dataset lives (default: the run's --data-dir)")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no notes, no warnings: print only the path "
                   "of report.md (errors are still one line on stderr)")
    p.set_defaults(handler=run_report)


def run_report(args: argparse.Namespace) -> int:
    import warnings

    from fastpart.report import write_report

    runs = args.runs or [LATEST_RUN]
    with warnings.catch_warnings():
        if args.quiet:
            warnings.simplefilter("ignore")
        path = write_report(runs, out=args.out, n_images=args.images, device=args.device, data_dir=args.data_dir,
                            progress=not args.quiet)
    if len(runs) > 1 and args.out is None and not args.quiet:
        print(f"fastpart report: the comparison of {len(runs)} runs is in {path.parent}/ (the default for several "
              "runs; --out DIR to choose)", file=sys.stderr)
    print(path)
    return 0


def add_eval(sub: argparse._SubParsersAction) -> None:
    from fastpart.config import EvalConfig

    p = sub.add_parser(
        "eval",
        allow_abbrev=False,
        help="robust accuracy of a trained run: natural, PGD-20, MMA, AutoAttack, adaptive, CIFAR-10-C, checks",
        description="Evaluate a run folder (or checkpoint) on its dataset's test split; prints a table and writes "
        "eval.json and eval.csv (the paper-table row) to the run folder. Progress is saved after every batch: "
        "run the same command again to resume. Settings come from the defaults, then --config FILE, then the "
        "options given.",
        epilog="attacks: natural, pgd<k> (pgd20), mma, mma-ref, aa (AutoAttack standard), aa-fast (APGD-CE + APGD-T, "
        "not standard AA), aa-apgd-ce, aa-apgd-t, aa-fab-t, aa-square, adaptive[<k>], adaptive-mma, eps-curve, "
        "cifar10c, checks",
    )
    p.add_argument("run", metavar="RUN", nargs="?", default="",
                   help="run folder written by `fastpart train`, or its checkpoint.pt (default: runs/latest, where "
                   "`fastpart train` writes by default; omit with --checkpoint FILE)")
    files = p.add_argument_group("settings from files")
    files.add_argument("--config", metavar="FILE", help="settings from a TOML or JSON file (keys: the option names, "
                       "e.g. attacks = [\"natural\", \"pgd20\"], eps = \"8/255\"); options given here override it")
    add_options(p, EvalConfig)
    p.set_defaults(handler=run_eval)


def add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        allow_abbrev=False,
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


def eval_config(args: argparse.Namespace) -> Any:
    """The EvalConfig of a command line, without importing torch: defaults < --config FILE < flags; RUN defaults
    to runs/latest unless --checkpoint names a file."""
    from fastpart.config import EvalConfig, check_eval

    values = _recorded_settings(args.config, EvalConfig) if args.config else {}
    values.update({k: v for k, v in vars(args).items() if k in EvalConfig.__dataclass_fields__})
    if not values["run"] and values.get("checkpoint", "last") in ("last", "best"):
        values["run"] = LATEST_RUN
    cfg = EvalConfig(**values)
    check_eval(cfg)
    return cfg


def run_eval(args: argparse.Namespace) -> int:
    cfg = eval_config(args)
    from fastpart.evaluation import evaluate, table

    print(table(evaluate(cfg)))
    return 0


VERBS: list[Callable[[argparse._SubParsersAction], None]] = [add_convert, add_train, add_eval, add_report, add_export]


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="fastpart",
        description="Fast, tested Pixel-reweighted Adversarial Training (PART) and its baselines.",
    )
    parser.add_argument("--version", action="version", version=f"fastpart {fastpart.__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for add in VERBS:
        add(sub)
    return parser


def _out_of_memory(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or (
        isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text))


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command: exit status 0; every failure one line on stderr and status 2; Ctrl-C one line and 130."""
    args = argparse.Namespace(verb=None)
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "handler", None):
            parser.print_help()
            return 2
        return args.handler(args)
    except FastpartError as exc:
        message = str(exc)
    except KeyboardInterrupt:
        print(f"fastpart{' ' + args.verb if args.verb else ''}: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # a file fastpart reads or writes, where no stage said more
        where = f": {exc.filename}" if exc.filename else ""
        message = f"{(exc.strerror or str(exc) or type(exc).__name__).lower()}{where}"
    except (MemoryError, RuntimeError) as exc:
        if not _out_of_memory(exc):
            raise
        message = "out of memory: lower --batch-size (or --eval-n, --n), or free the memory other processes hold"
    print(f"fastpart{' ' + args.verb if args.verb else ''}: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


if _STARTING:  # from here on main's handler takes Ctrl-C
    signal.signal(signal.SIGINT, signal.default_int_handler)

if __name__ == "__main__":
    sys.exit(main())
