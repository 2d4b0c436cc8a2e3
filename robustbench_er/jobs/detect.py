"""A detection job: the ``detect`` command and an experiment file's ``detect:`` section, one path.

:func:`plan_detection` reads a mapping of the command's keys (``dataset``, ``defenses``,
``detectors``, ``train_attacks``, ``test_attacks``, ``norm``, ``eps``, ``l2_unit``,
``samples``, ``split``, ``split_seed``, ``seed``, ``profile``, ``set``, ``data_dir``,
``device``, ``out``, ``adaptive``, ``adaptive_steps``) and checks every input before anything
trains or writes (one sentence on the first bad one); :func:`run_detection_job` trains or
loads the checkpoints, runs :func:`robustbench_er.engine.detection.run_detection` per defense and
training attack with the results store of ``out`` (so a stopped job resumes), and writes
``detection.csv``, ``detection.md`` and ``detection_roc.png``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustbench_er.core.device import resolve_device
from robustbench_er.core.errors import UserInputError
from robustbench_er.core.norms import canonical_norm
from robustbench_er.core.text import name_list, parse_attack_text, parse_eps, parse_sets
from robustbench_er.data.datasets import load_dataset
from robustbench_er.engine.detection import DetectionSetup, run_detection, threat, write_detection
from robustbench_er.engine.spec import AttackConfig, make_attack
from robustbench_er.engine.trained import get_or_train
from robustbench_er.inputs.config import check_device, check_output_folder
from robustbench_er.plugins.registry import get_attack, get_defense, get_detector
from robustbench_er.store.results import Store

DETECT_KEYS = ("dataset", "defenses", "detectors", "train_attacks", "test_attacks", "norm", "eps", "l2_unit",
               "samples", "split", "split_seed", "seed", "profile", "set", "data_dir", "device", "out",
               "adaptive", "adaptive_steps", "batch_size")


@dataclass
class DetectionPlan:
    data: Any
    defenses: list[str]
    setups: list[Any]  # DetectionSetup, one per training attack
    profile: str
    seed: int
    overrides: dict[str, Any] | None
    device: str
    out: Path
    where: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


#: how the ``detect`` command names each key
CLI_FLAGS = {"defenses": "--defense", "detectors": "--detector", "train_attacks": "--train-attack",
             "test_attacks": "--test-attack", "set": "--set"}


def _check_keys(raw: Mapping[str, Any], at: Callable[[str], str]) -> None:
    """Refuse an unknown key or a missing required one."""
    unknown = sorted(set(raw) - set(DETECT_KEYS))
    if unknown:
        raise UserInputError(f"{at(unknown[0])}: not a detection key"
                             f" (known: {', '.join(DETECT_KEYS)}).")
    for key in ("dataset", "defenses", "detectors", "train_attacks", "test_attacks"):
        if raw.get(key) in (None, "", []):
            raise UserInputError(f"{at(key)}: missing.")


def _attack_configs(raw: Mapping[str, Any], key: str, at: Callable[[str], str]) -> list[Any]:
    """The attacks a key names (``NAME`` or ``NAME(key=value,...)``, comma-separated)."""
    out = []
    for text in name_list(raw[key], at(key)):
        try:
            d = parse_attack_text(text)
        except ValueError as exc:
            raise UserInputError(f"{at(key)}: {exc}.") from exc
        out.append(AttackConfig(d["name"], d["params"], label=d.get("label")))
    return out


def _setup_options(raw: Mapping[str, Any], at: Callable[[str], str]) -> dict[str, Any]:
    """Check the norm, the numbers and the L2 unit; return them as DetectionSetup's keywords."""
    try:
        norm = canonical_norm(str(raw.get("norm") or "Linf"))
    except Exception as exc:
        raise UserInputError(f"{at('norm')}: {exc}") from None
    try:
        split = float(raw.get("split", 0.2))
        (eps,) = parse_eps(str(raw.get("eps", 0.3)))
        samples = int(raw.get("samples", 500))
        split_seed, seed = int(raw.get("split_seed", 0)), int(raw.get("seed") or 0)
        steps = int(raw.get("adaptive_steps", 40))
        batch_size = int(raw.get("batch_size") or 128)
    except (TypeError, ValueError):
        raise UserInputError(f"{at('split')}, {at('samples')}, {at('split_seed')}, {at('seed')},"
                             f" {at('adaptive_steps')} and {at('batch_size')} must be numbers and"
                             f" {at('eps')} one epsilon.") from None
    if batch_size < 1:
        raise UserInputError(f"{at('batch_size')}: must be at least 1; got {batch_size}.")
    if not 0 < split < 1:
        raise UserInputError(f"{at('split')}: must be strictly between 0 and 1;"
                             f" got {raw.get('split')}.")
    if steps < 1:
        raise UserInputError(f"{at('adaptive_steps')}: must be at least 1; got {steps}.")
    l2_unit = str(raw.get("l2_unit") or "l2")
    if l2_unit not in ("l2", "rms", "mse"):
        raise UserInputError(f"{at('l2_unit')}: l2, rms or mse; got {l2_unit!r}.")
    return {"norm": norm, "eps": eps, "samples": samples, "split": split, "split_seed": split_seed,
            "seed": seed, "adaptive_steps": steps, "l2_unit": l2_unit, "batch_size": batch_size}


def _check_threats(trains: list[Any], tests: list[Any], setup: DetectionSetup, dim: int,
                   at: Callable[[str], str]) -> None:
    """Check every attack's parameters, norm and bound."""
    for key, group in (("train_attacks", trains), ("test_attacks", tests)):
        for a in group:
            get_attack(a.name)
            try:
                c, a_norm, _, _ = threat(a, setup, dim)
                make_attack(c, a_norm, False, 1)
            except UserInputError as exc:
                raise UserInputError(f"{at(key)}: {exc}") from None


def _check_embeddings(defenses: list[str], detectors: list[str], data: Any, profile: str,
                      at: Callable[[str], str]) -> None:
    """Refuse a detector that needs an embedding a defense's model lacks, before training."""
    for d in defenses:
        cls = get_defense(d)
        net = cls().build(data.spec, cls.hparams(data.spec.models_on, profile))
        has_embedding = hasattr(net, "embed") or hasattr(net, "features")
        for name in detectors:
            if get_detector(name).needs_embedding and not has_embedding:
                raise UserInputError(f"{at('detectors')}: {name} reads the model's embedding,"
                                     f" which {d!r} lacks.")


def _overrides(sets: Any) -> dict[str, Any] | None:
    """The ``set`` key (KEY=VALUE text, a list of them, or a mapping) as overrides, or None."""
    return (dict(parse_sets([sets] if isinstance(sets, str) else sets))
            if isinstance(sets, (str, list))
            else dict(sets) if isinstance(sets, Mapping) else None)


def plan_detection(raw: Mapping[str, Any], where: str = "", cli: bool = False) -> DetectionPlan:
    """Check a detection job's keys; messages name a key as ``<where><key>`` (``detect[0].eps``)
    or, with ``cli``, as the command's flag (``--test-attack``)."""

    def at(key: str) -> str:
        return CLI_FLAGS.get(key, "--" + key.replace("_", "-")) if cli else f"{where}{key}"

    _check_keys(raw, at)
    defenses = name_list(raw["defenses"], at("defenses"))
    detectors = name_list(raw["detectors"], at("detectors"))
    trains = _attack_configs(raw, "train_attacks", at)
    tests = _attack_configs(raw, "test_attacks", at)
    for d in defenses:
        get_defense(d)
    for d in detectors:
        get_detector(d)
    options = _setup_options(raw, at)
    profile = str(raw.get("profile") or "quick")
    if profile not in ("quick", "paper"):
        raise UserInputError(f"{at('profile')}: quick or paper; got {profile!r}.")
    device = str(raw.get("device") or "auto")
    check_device(device, at("device"))
    out = raw.get("out") or "results/detection"
    data = load_dataset(str(raw["dataset"]), raw.get("data_dir"), False)
    samples = options["samples"]
    if not 10 <= samples <= len(data.y_test):
        raise UserInputError(f"{at('samples')}: must be between 10 and {len(data.y_test)};"
                             f" got {samples}.")
    adaptive = bool(raw.get("adaptive", True))
    setups = [DetectionSetup(detectors, t, tests, adaptive=adaptive, **options) for t in trains]
    _check_threats(trains, tests, setups[0], int(data.x_test[0].numel()), at)
    _check_embeddings(defenses, detectors, data, profile, at)
    overrides = _overrides(raw.get("set"))
    for d in defenses:
        get_defense(d).hparams(data.spec.models_on, profile, overrides)
    check_output_folder(out, at("out"))
    return DetectionPlan(data, defenses, setups, profile, options["seed"], overrides, device,
                         Path(out), where)


def run_detection_job(plan: DetectionPlan, command: str, progress: bool = True,
                      say: Callable[[str], None] = print) -> dict[str, Path]:
    """Train or load each defense, run every detection cell not in the store yet, write the outputs."""

    rows = []
    store = Store(plan.out)
    try:
        for d in plan.defenses:
            t = get_or_train(d, plan.data, profile=plan.profile, seed=plan.seed, out=plan.out,
                             overrides=plan.overrides, device=resolve_device(plan.device), progress=progress)
            crafted: dict[str, Any] = {}  # set II's examples, shared by the training attacks
            for setup in plan.setups:  # same-attack and cross-attack: one detector training per training attack
                new = run_detection(d, t, plan.data, setup, progress=progress, store=store, crafted=crafted)
                rows += new
                say(f"[{d}] detectors trained on {setup.train_attack.display}: {len(new)} rows")
    finally:
        store.close()
    return write_detection(rows, plan.out, command)
