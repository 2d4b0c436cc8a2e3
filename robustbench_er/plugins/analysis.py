"""Analyses of datasets and defended models: the plugin contract, the job and the outputs.

An analysis plugin (package ``analyses/``, entry-point group ``robustbench_er.analyses``, one
file each) subclasses :class:`Analysis` and registers with ``@register_analysis("name")``:

* ``Params``: a dataclass of its parameters (checked strictly, like attack parameters);
* ``needs_model`` (False for an analysis of the dataset alone, such as intrinsic dimension)
  and ``needs_embedding`` (True when it reads ``model.embed``);
* ``run(ctx) -> AnalysisResult``: ``summary`` (named scalars, the numbers a table quotes),
  ``rows`` (long-form records, written as CSV) and ``extra`` (JSON-able arrays a plot needs);
* ``plot(result, ax_or_path)``: one PNG with axis labels and units.

Results are stored in the results store (table ``analyses``), keyed by analysis, parameters,
dataset and defense checkpoint, so a rerun reads them back instead of recomputing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from robustbench_er.core.errors import UserInputError
from robustbench_er.core.files import atomic_path
from robustbench_er.core.identity import added_field as added_field
from robustbench_er.core.identity import identity_params, with_version
from robustbench_er.core.text import check_dataclass_values
from robustbench_er.models.defended import DefendedModel
from robustbench_er.models.pgd import pgd


@dataclass
class AnalysisParams:
    """Parameters every analysis takes."""

    #: test points analysed (the first n of the dataset's fixed seeded order)
    samples: int = 500
    seed: int = 0


@dataclass
class AnalysisContext:
    """What an analysis runs on: the dataset, and the defended model unless ``needs_model`` is False."""

    data: Any  # robustbench_er.data.datasets.Dataset
    model: DefendedModel | None
    defense: str
    progress: bool = False

    def points(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n`` test points of the dataset's fixed order (images in [0, 1], labels)."""
        ids = self.data.sample_ids(min(int(n), len(self.data.y_test)))
        return self.data.x_test[ids], self.data.y_test[ids]


@dataclass
class AnalysisResult:
    summary: dict[str, float] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"summary": self.summary, "rows": self.rows, "extra": _jsonable(self.extra)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> AnalysisResult:
        return cls(dict(d["summary"]), list(d["rows"]), dict(d["extra"]))


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu().numpy()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


class Analysis:
    """Base class of analysis plugins (see the module docstring)."""

    name: ClassVar[str] = ""
    Params: ClassVar[type] = AnalysisParams
    needs_model: ClassVar[bool] = True
    needs_embedding: ClassVar[bool] = False
    #: behaviour version: bump it when a change alters results (see :mod:`robustbench_er.core.identity`)
    version: ClassVar[int] = 0

    def __init__(self, **params: Any) -> None:
        import dataclasses


        known = [f.name for f in dataclasses.fields(self.Params)]
        for key in params:
            if key not in known:
                raise UserInputError(f"Analysis {self.name!r} has no parameter {key!r} (it takes {', '.join(known)}).")
        check_dataclass_values(self.Params, params, "parameter", self.name)
        self.params = self.Params(**params)
        if self.params.samples < 2:
            raise UserInputError(f"Analysis {self.name!r}: samples must be at least 2; got {self.params.samples}.")
        self.validate()

    def validate(self) -> None:
        """Check parameter values (raise UserInputError with one sentence)."""

    def uses_model(self) -> bool:
        """Whether this analysis (with these parameters) reads a defended model; the class's
        ``needs_model`` unless a parameter decides (intrinsic dimension of inputs or of codes)."""
        return self.needs_model

    def uses_embedding(self) -> bool:
        """Whether this analysis (with these parameters) reads ``model.embed``."""
        return self.needs_embedding

    def check_model(self, model: DefendedModel | None, defense: str = "") -> None:
        if self.uses_model() and model is None:
            raise UserInputError(f"Analysis {self.name!r} needs a defense (--defense).")
        if self.uses_embedding() and model is not None and not model.has_embed:
            raise UserInputError(f"Analysis {self.name!r} reads the model's embedding, which {defense or 'this defense'!r}"
                                 " lacks (no embed() or features() on its network).")

    def run(self, ctx: AnalysisContext) -> AnalysisResult:
        raise NotImplementedError

    def plot(self, result: AnalysisResult, path: Path, title: str = "") -> None:
        raise NotImplementedError

    def identity(self) -> dict[str, Any]:
        return with_version({"analysis": self.name, "params": identity_params(self.params)}, self.version)


def validate_analysis_class(name: str, obj: Any) -> None:
    if not (isinstance(obj, type) and issubclass(obj, Analysis)):
        raise TypeError(f"Analysis {name!r} must be a subclass of robustbench_er.plugins.analysis.Analysis.")
    if obj.run is Analysis.run or obj.plot is Analysis.plot:
        raise TypeError(f"Analysis {name!r} must implement run() and plot().")


def embeddings(model: DefendedModel, x: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """``model.embed`` over ``x`` in batches, without gradients, flattened to N x features."""
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            out.append(model.embed(x[i:i + batch_size]).flatten(1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0))


def pgd_examples(model: DefendedModel, x: torch.Tensor, y: torch.Tensor, eps: float, *, steps: int = 20,
                 seed: int = 0, batch_size: int = 256) -> torch.Tensor:
    """Linf PGD examples at ``eps`` (the harness's own PGD: step 2.5 eps / steps, random start, every
    step taken, so the examples sit where the loss is highest rather than just past the boundary)."""

    if eps <= 0:
        return x.clone()
    gen = torch.Generator().manual_seed(seed)
    target = model.bpda_model()
    out = []
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        out.append(pgd(target, xb, yb, float(eps), steps=steps, norm="Linf", early_stop=False,
                       generator=gen).detach())
    return torch.cat(out)


def figure(path: Path, draw: Callable[[Any], None], size: tuple[float, float] = (5.0, 4.0)) -> None:
    """One matplotlib figure drawn by ``draw(ax)`` and written atomically as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    fig, ax = plt.subplots(figsize=size)
    draw(ax)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def result_key(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:24]
