"""The one module a plugin imports: the contracts, the registration decorators and the shared
machinery of the built-in plugins. The layers behind it may move; these names stay.

A defense subclasses :class:`Defense` (with an :class:`HParams` dataclass and presets) and is
registered with :func:`register_defense`; an attack subclasses :class:`FixedEpsilonAttack` or
:class:`MinimizationAttack`; a detector :class:`Detector`; an analysis :class:`Analysis`; a dataset
is a loader registered with :func:`register_dataset`. See ``docs/plugins.md``.
"""

from __future__ import annotations

from robustbench_er.core.errors import UserInputError
from robustbench_er.core.identity import added_field
from robustbench_er.core.norms import NORMS, canonical_norm, clip_to_ball, perturbation_norm
from robustbench_er.core.text import check_dataclass_values, parse_eps
from robustbench_er.data.datasets import Dataset, DatasetSpec, register_dataset
from robustbench_er.models import build_backbone
from robustbench_er.models.defended import DefendedModel, device_of
from robustbench_er.models.hparams import AdversarialHParams, HParams
from robustbench_er.models.paper_nets import PAPER_NETS
from robustbench_er.models.pgd import pgd
from robustbench_er.models.training import (
    accuracy,
    adversarial_batch,
    build_from_backbone,
    eval_mode,
    fit,
    make_optimizer,
    trades_adversarial,
    trades_loss,
    train_clean,
    training_batches,
)
from robustbench_er.plugins.adapters import run_foolbox_minimization, run_torchattacks
from robustbench_er.plugins.analysis import (
    Analysis,
    AnalysisContext,
    AnalysisParams,
    AnalysisResult,
    embeddings,
    figure,
    pgd_examples,
)
from robustbench_er.plugins.attack import (
    Attack,
    AttackParams,
    FixedEpsilonAttack,
    LibraryModel,
    MinimizationAttack,
    draw_seed,
    eps_groups,
    seeded,
)
from robustbench_er.plugins.defense import Defense
from robustbench_er.plugins.detector import Detector, batched, torch_kde_logdensity
from robustbench_er.plugins.registry import (
    get_attack,
    register_analysis,
    register_attack,
    register_defense,
    register_detector,
)

__all__ = [
    "NORMS", "PAPER_NETS", "AdversarialHParams", "Analysis", "AnalysisContext", "AnalysisParams", "AnalysisResult",
    "Attack", "AttackParams", "Dataset", "DatasetSpec", "DefendedModel", "Defense", "Detector", "FixedEpsilonAttack",
    "HParams", "LibraryModel", "MinimizationAttack", "UserInputError", "accuracy", "added_field",
    "adversarial_batch", "batched", "build_backbone", "build_from_backbone", "canonical_norm",
    "check_dataclass_values", "clip_to_ball", "device_of", "draw_seed", "embeddings", "eps_groups", "eval_mode",
    "figure", "fit", "get_attack", "make_optimizer", "parse_eps", "perturbation_norm", "pgd", "pgd_examples",
    "register_analysis", "register_attack", "register_dataset", "register_defense", "register_detector",
    "run_foolbox_minimization", "run_torchattacks", "seeded",
    "torch_kde_logdensity", "trades_adversarial", "trades_loss", "train_clean", "training_batches",
]
