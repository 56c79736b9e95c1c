"""fastpart and the tools of the field: models fastpart did not train in, RobustBench files out.

``load_weights(path, model, dataset, ...)`` restores a plain state dict written by other code (RobustBench
zoo files and most research checkpoints: a bare dict of tensors, or one under ``state_dict``/``model``/
``net``, with or without the ``module.`` prefix of DataParallel; the unused ``sub_block1`` of RobustBench's
WideResNet dropped) into a registered architecture, for
``fastpart eval --checkpoint FILE --model NAME --dataset D``. Weights that do not fit are one line naming
the missing and unexpected keys. ``--normalize`` gives the model's input normalisation when the file's
model expects normalised inputs (fastpart's models take [0, 1] images and normalise inside).

``export_robustbench(run, out)`` writes a run's weights as RobustBench loads them
(``<out>/<dataset>/Linf/<name>.pt`` with a ``state_dict``) and its ``model_info`` entry
(``<out>/model_info/<dataset>/Linf/<name>.json``, RobustBench's schema) with the numbers of eval.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fastpart.atomic import write_atomic, write_json_atomic
from fastpart.config import TrainConfig
from fastpart.errors import FastpartError
from fastpart.models import MODELS, Normalized
from fastpart.data.splitfiles import dataset_manifest
from fastpart.records import is_number, read_eval
from fastpart.runfolder import EVAL, LoadedRun, build_model, load_run, read_checkpoint

__all__ = ["export_robustbench", "load_weights", "parse_normalize", "plain_state_dict"]

STATE_KEYS = ("state_dict", "model", "net", "model_state_dict")
NORMALIZE_KEYS = ("normalize.mean", "normalize.std")
UNUSED_PREFIXES = ("sub_block1.",)


def plain_state_dict(payload: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint as a state dict: unwrapped from a known key, ``module.`` prefixes removed."""
    state = payload
    for key in STATE_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FastpartError(f"{path} holds no state dict (a dict of tensors, bare or under one of "
                            f"{', '.join(STATE_KEYS)})")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def parse_normalize(text: str | None, manifest: dict[str, Any]) -> tuple[list[float], list[float]] | None:
    """``MEAN,STD`` (one value for every channel), ``M1,M2,M3,S1,S2,S3``, or ``dataset`` (the converted
    dataset's per-channel statistics) -> (mean, std); None -> None."""
    if text is None:
        return None
    if text == "dataset":
        return list(manifest["mean"]), list(manifest["std"])
    try:
        values = [float(v) for v in text.replace("/", ",").split(",") if v.strip()]
    except ValueError:
        values = []
    if len(values) == 2:
        return [values[0]] * 3, [values[1]] * 3
    if len(values) == 6 and all(v > 0 for v in values[3:]):
        return values[:3], values[3:]
    raise FastpartError(f"--normalize {text!r}: give MEAN,STD, or three means then three stds (M1,M2,M3,S1,S2,S3), "
                        f"or 'dataset'")


def load_weights(path: str | Path, model: str, dataset: str, data_dir: str, device: str | torch.device = "cpu",
                 normalize: str | None = None) -> LoadedRun:
    """A plain state dict in ``path`` loaded strictly into architecture ``model``, for evaluation on
    ``dataset`` (converted in ``data_dir``)."""
    path = Path(path)
    if not path.is_file():
        raise FastpartError(f"no checkpoint file at {path}")
    manifest = dataset_manifest(data_dir, dataset)
    loaded: list[str] = []  # the sha256 of the bytes loaded
    state = plain_state_dict(read_checkpoint(path, required=(), loaded=loaded), path)
    # RobustBench's WideResNet builds a copy of block1 it never runs (sub_block1) that many zoo files hold
    state = {k: v for k, v in state.items() if not k.startswith(UNUSED_PREFIXES)}
    stats = parse_normalize(normalize, manifest)
    kwargs: dict[str, Any] = {}
    own = model in MODELS  # fastpart's models normalise themselves; a timm or torchvision model is wrapped
    if stats is not None and own:
        kwargs = {"mean": stats[0], "std": stats[1]}
        state = {**state, **{k: torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1)
                             for k, v in zip(NORMALIZE_KEYS, stats) if k not in state}}
    cfg = TrainConfig(dataset=dataset, data_dir=data_dir, model=model, method="external", out=str(path.parent),
                      precision="fp32")
    net = build_model(model, manifest["num_classes"], device, state, str(path), **kwargs)
    if stats is not None and not own:
        net = Normalized(net, *stats).to(next(net.parameters()).device).eval()
    return LoadedRun(net, cfg, path, path.parent, 0, manifest, loaded[0])


AA_RESULTS = {"aa": "AutoAttack standard", "aa-fast": "APGD-CE + APGD-T only, not standard AutoAttack"}


def export_robustbench(run: str | Path, out: str | Path, name: str | None = None, checkpoint: str = "last",
                       weights: str = "live", aa: str = "aa") -> dict[str, Path]:
    """Write a run's weights and model_info for RobustBench; returns the paths written. ``aa``: the eval.json
    result that fills ``autoattack_acc`` (``aa``, AutoAttack standard; ``aa-fast`` is labelled as such)."""
    if aa not in AA_RESULTS:
        raise FastpartError(f"unknown AutoAttack result {aa!r}; choose from {', '.join(AA_RESULTS)}")
    loaded = load_run(run, "cpu", checkpoint=checkpoint, weights=weights)
    evaluation_path = loaded.run_dir / EVAL
    if not evaluation_path.is_file():
        raise FastpartError(f"no {evaluation_path}: run `fastpart eval {loaded.run_dir}` first "
                            f"(the model_info needs its clean and AutoAttack accuracy)")
    evaluation = read_eval(evaluation_path)
    results = evaluation["results"]
    if not all(is_number(results.get(k, {}).get("accuracy")) for k in (aa, "natural")):
        raise FastpartError(f"{evaluation_path} has no natural and {aa} ({AA_RESULTS[aa]}) results: "
                            f"run `fastpart eval {loaded.run_dir} --attacks natural,{aa}`")
    cfg: TrainConfig = loaded.config
    name = name or f"fastpart_{cfg.method}_{cfg.model}_{cfg.dataset}".replace("-", "_")
    out = Path(out)
    weights_file = out / cfg.dataset / "Linf" / f"{name}.pt"
    info_file = out / "model_info" / cfg.dataset / "Linf" / f"{name}.json"
    state = {k: v.detach().cpu().contiguous() for k, v in loaded.model.state_dict().items()}
    write_atomic(weights_file, lambda file: torch.save({"state_dict": state}, file))
    n = evaluation.get("n")
    info = {
        "link": "", "name": f"fastpart {cfg.method} ({cfg.model})", "authors": "", "additional_data": False,
        "number_forward_passes": 1, "dataset": cfg.dataset, "venue": "",
        "architecture": cfg.model + (f" with {cfg.activation}" if cfg.activation != "relu" else ""),
        "eps": f"{evaluation.get('eps', cfg.eps) * 255:g}/255", "clean_acc": f"{100 * results['natural']['accuracy']:.2f}",
        "reported": f"{100 * results[aa]['accuracy']:.2f}", "autoattack_acc": f"{100 * results[aa]['accuracy']:.2f}",
        "footnote": f"fastpart eval on n={n} test images ({evaluation.get('precision', '?')}), epoch {loaded.epoch}; "
                    f"robust accuracy: {AA_RESULTS[aa]}",
        "threat_model": "Linf",
    }
    write_json_atomic(info_file, info)
    return {"weights": weights_file, "model_info": info_file}

