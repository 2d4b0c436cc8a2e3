"""RobustBench's model zoo, offline: ``--defense robustbench:<ModelName> --model-dir DIR``.

The ``robustbench`` package (an optional extra: ``pip install 'robustbench-er[zoo]'``; it pulls
in timm, gdown, geotorch and torchdiffeq) defines the zoo's architectures. We build the
architecture from its ``model_dicts`` entry and read the weights ourselves from the file laid out
as RobustBench lays it out, ``DIR/<dataset>/<threat model>/<ModelName>.pt``, with
``torch.load(weights_only=True)`` (never a full unpickle), so nothing is downloaded unless the
user passes ``--download`` (which calls RobustBench's own ``load_model`` to fetch the file).
The result is an imported-model checkpoint (:mod:`robustbench_er.jobs.imported`): its identity is
the hash of the loaded weights; RobustBench's models take images in [0, 1] and normalise
inside, so the wrapper normalises nothing.

Two compatibility shims, both local to :func:`robustbench_module`: ``robustbench`` 1.1.1 imports
``autoattack`` (the name of AutoAttack's git package; its PyPI build is ``pyautoattack``) and
``pkg_resources`` (setuptools < 81, pinned by the extra).
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from robustbench_er.core.errors import UserInputError
from robustbench_er.data.datasets import SPECS
from robustbench_er.models.checkpoints import read_meta
from robustbench_er.plugins.given import given_model, read_state_dict, save_given

PREFIX = "robustbench:"
#: our dataset names -> RobustBench's (the zoo covers these)
DATASETS = {"cifar10": "cifar10", "cifar100": "cifar100", "imagenet": "imagenet"}
#: our norms -> RobustBench's threat models
THREATS = {"Linf": "Linf", "L2": "L2"}


def is_zoo(name: str) -> bool:
    return isinstance(name, str) and name.strip().lower().startswith(PREFIX)


def robustbench_module() -> ModuleType:
    """Import ``robustbench`` (with the shims above) or say how to install it."""
    try:
        import pyautoattack

        sys.modules.setdefault("autoattack", pyautoattack)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import robustbench
            import robustbench.model_zoo
    except ImportError as exc:
        raise UserInputError(f"RobustBench's model zoo needs the robustbench package ({exc}); install it with"
                             " pip install 'robustbench-er[zoo]'.") from None
    return robustbench


def zoo_entry(model: str, dataset: str, norm: str) -> dict[str, Any]:
    rb = robustbench_module()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    if dataset not in DATASETS:
        raise UserInputError(f"RobustBench's zoo covers {', '.join(DATASETS)}; not {dataset!r}.")
    if norm not in THREATS:
        raise UserInputError(f"RobustBench's zoo has Linf and L2 models; not {norm!r}.")
    models = model_dicts[BenchmarkDataset(DATASETS[dataset])][ThreatModel(THREATS[norm])]
    if model not in models:
        import difflib

        close = difflib.get_close_matches(model, list(models), n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UserInputError(f"RobustBench {rb.__name__} has no {dataset}/{norm} model {model!r}.{hint}")
    return dict(models[model])


def zoo_architecture(model: str, dataset: str, norm: str) -> nn.Module:
    net = zoo_entry(model, dataset, norm)["model"]()
    if not isinstance(net, nn.Module):
        raise UserInputError(f"RobustBench's {model!r} did not build a torch.nn.Module.")
    return net


def weights_path(model_dir: str | Path, model: str, dataset: str, norm: str) -> Path:
    return Path(model_dir) / DATASETS.get(dataset, dataset) / THREATS.get(norm, norm) / f"{model}.pt"


def zoo_checkpoint(spec_name: str, dataset: str, norm: str, *, model_dir: str | Path | None, out: str | Path,
                   download: bool = False) -> Path:
    """Write (or find) the harness checkpoint of a zoo model; return its folder."""

    model = spec_name.strip()[len(PREFIX):]
    if model_dir is None:
        raise UserInputError(f"--defense {spec_name!r} needs --model-dir DIR (RobustBench's layout:"
                             " DIR/<dataset>/<threat model>/<ModelName>.pt).")
    net = zoo_architecture(model, dataset, norm)
    path = weights_path(model_dir, model, dataset, norm)
    if not path.is_file():
        if not download:
            raise UserInputError(f"RobustBench weights for {model!r} not found at {str(path)!r}; put the file there"
                                 " or pass --download to fetch it.")
        robustbench_module()
        from robustbench.utils import load_model

        load_model(model_name=model, model_dir=str(model_dir), dataset=DATASETS[dataset], threat_model=THREATS[norm])
    state, how = read_state_dict(path)
    try:
        net.load_state_dict(state)
    except RuntimeError:
        try:  # some zoo files keep the weights of a wrapped model under 'model.'
            net.load_state_dict({f"model.{k}": v for k, v in state.items()})
            how += ", 'model.' prefix added"
        except RuntimeError as exc:
            raise UserInputError(f"The weights at {str(path)!r} do not fit RobustBench's {model!r}:"
                                 f" {str(exc).splitlines()[0]}") from None
    given = given_model(spec_name, SPECS[dataset], net)
    folder = Path(out) / "checkpoints" / f"robustbench-{model.lower()}-{dataset}-{given.identity}"
    if (folder / "meta.json").is_file() and read_meta(folder).get("id") == given.identity:
        return folder
    save_given(given, folder, architecture=f"{PREFIX}{dataset}/{norm}/{model}", imported_from=str(path.resolve()),
               weights_read_with=how)
    return folder
