"""Getting a trained defended model: :func:`get_or_train` reuses the checkpoint of a training
spec when one exists, trains it otherwise (one process per checkpoint, under a lease in
``<out>/checkpoints/leases.sqlite``), or loads a checkpoint folder the user named. It returns a
:class:`Trained`, whose identity and clean accuracy are measured on the loaded weights.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from robustbench_er.core.errors import UserInputError
from robustbench_er.data.datasets import Dataset, DatasetSpec
from robustbench_er.models.checkpoints import (
    canonical_json,
    checkpoint_spec,
    load_checkpoint,
    model_identity,
    read_meta,
    save_checkpoint,
    spec_hash,
)
from robustbench_er.models.defended import DefendedModel, check_model_output
from robustbench_er.models.training import accuracy
from robustbench_er.plugins.registry import get_defense
from robustbench_er.store.results import LEASE_TTL, KeepAlive, LeaseTable, connect, lease_owner

if TYPE_CHECKING:
    from robustbench_er.plugins.defense import Defense

log = logging.getLogger(__name__)

def checkpoint_mismatch(meta: dict[str, Any], cls: type[Defense], data: Dataset) -> str | None:
    """Why a checkpoint folder's metadata does not fit the defense and data it is asked for
    (None when it fits): the one check, for the schema's early look and for the loader."""
    if meta.get("defense") != cls.name:
        return f"holds defense {meta.get('defense')!r}, not {cls.name!r}"
    if meta.get("dataset") != data.spec.models_on:
        return f"was trained on {meta.get('dataset')!r}; it cannot be evaluated on {data.spec.name!r}"
    return None


def _load_given(cls: type[Defense], data: Dataset, folder: Path, device: torch.device | str,
                measure: bool = True) -> Trained:
    """Load a checkpoint folder the user named (``--checkpoint``), built from its own metadata.

    Its identity and clean accuracy are measured on the loaded weights; the metadata's ``id``
    and ``clean_acc`` (which may be missing, or belong to another model) are not used.
    """
    meta = read_meta(folder)
    problem = checkpoint_mismatch(meta, cls, data)
    if problem:
        raise UserInputError(f"Checkpoint {str(folder)!r} {problem}.")
    try:
        hp = cls.HParams(**meta.get("hparams", {}))
    except TypeError as exc:
        raise UserInputError(f"Checkpoint {str(folder)!r} has hyper-parameters {cls.name!r} does not know ({exc}).") from exc
    defense = cls()
    model = defense.wrap(defense.build(data.spec, hp), data.spec, hp)
    meta = load_checkpoint(folder, model)
    model.to(device).eval()
    check_model_output(model, data.x_test[:4].to(device))  # before anything else runs on it
    return Trained(model, meta, folder, True, model_identity(cls.name, model, hp),
                   accuracy(model, data.x_test, data.y_test) if measure else float("nan"))


@dataclass
class Trained:
    """A trained or loaded model with its checkpoint.

    ``identity`` (:func:`model_identity`) and ``clean_acc`` (test-set accuracy) are measured
    on the model itself; ``meta`` is the checkpoint's metadata as written, for provenance.
    """

    model: DefendedModel
    meta: dict[str, Any]
    folder: Path
    reused: bool
    identity: str
    clean_acc: float


def build_model(defense_name: str, spec: DatasetSpec, hp: Any) -> DefendedModel:

    d = get_defense(defense_name)()
    return d.wrap(d.build(spec, hp), spec, hp)


#: seconds between two looks at a checkpoint another process is training
TRAIN_POLL = 1.0


def checkpoint_folder(defense_name: str, data: Dataset, *, profile: str = "quick", seed: int = 0,
                      out: Path = Path("results"), overrides: dict[str, Any] | None = None) -> Path:
    """Where the checkpoint of this training spec lives (whether or not it exists yet)."""

    cls = get_defense(defense_name)
    hp = cls.hparams(data.spec.models_on, profile, overrides)
    cid = spec_hash(checkpoint_spec(cls.name, data.spec.models_on, profile, hp, seed, cls.version))
    return Path(out) / "checkpoints" / f"{cls.name}-{data.spec.models_on}-{cid}"


def get_or_train(defense_name: str, data: Dataset, *, profile: str = "quick", seed: int = 0,
                 out: Path = Path("results"), overrides: dict[str, Any] | None = None,
                 device: torch.device | str = "cpu", progress: bool = True,
                 checkpoint_dir: Path | None = None, measure: bool = True) -> Trained:
    """Return the trained defense for this spec, reusing its checkpoint if one exists.

    ``measure=False`` skips measuring the clean accuracy of a loaded checkpoint (``clean_acc`` is
    then NaN), for callers that only need the model and its identity (``--dry-run``).

    A checkpoint is trained once even when several processes ask for it at the same time: a
    process trains only while it holds the lease on the checkpoint's folder name, kept in
    ``<out>/checkpoints/leases.sqlite`` with the same lease rules as the cells of a sweep
    (:class:`robustbench_er.store.results.LeaseTable`: claimed in one transaction, renewed by a
    background thread while training runs, released when the checkpoint is written). The
    others poll until the checkpoint appears, then load it; if the trainer crashes its lease
    expires and the next process to look trains instead. The lease lives beside the
    checkpoints rather than in the results store, which need not exist when training starts.
    """

    cls = get_defense(defense_name)
    if checkpoint_dir is not None:
        return _load_given(cls, data, Path(checkpoint_dir), device, measure)
    hp = cls.hparams(data.spec.models_on, profile, overrides)
    spec = checkpoint_spec(cls.name, data.spec.models_on, profile, hp, seed, cls.version)
    cid = spec_hash(spec)
    folder = checkpoint_folder(defense_name, data, profile=profile, seed=seed, out=out, overrides=overrides)
    if (folder / "meta.json").is_file():
        return _load_cached(cls, data, hp, spec, seed, folder, device, measure)
    if not cls.trainable:
        raise UserInputError(f"Defense {cls.name!r} cannot be trained; give it a checkpoint.")
    folder.parent.mkdir(parents=True, exist_ok=True)
    lease_db = folder.parent / "leases.sqlite"
    owner = lease_owner()
    conn = connect(lease_db)
    try:
        leases = LeaseTable(conn)
        while not leases.claim(folder.name, owner, LEASE_TTL):
            log.info("another process is training %s; waiting", folder.name)
            time.sleep(TRAIN_POLL)
            if (folder / "meta.json").is_file():
                return _load_cached(cls, data, hp, spec, seed, folder, device)
        with KeepAlive(lease_db, folder.name, owner, LEASE_TTL):
            # the previous holder may have finished between our last look and the claim
            if (folder / "meta.json").is_file():
                return _load_cached(cls, data, hp, spec, seed, folder, device)
            return _train(cls, data, hp, spec, cid, profile, seed, folder, device, progress)
    finally:
        conn.close()


def _load_cached(cls: type[Defense], data: Dataset, hp: Any, spec: dict[str, Any], seed: int, folder: Path,
                 device: torch.device | str, measure: bool = True) -> Trained:
    """Load the harness's own checkpoint for ``spec``; its clean accuracy is measured again."""
    defense = cls()
    torch.manual_seed(seed)
    model = defense.wrap(defense.build(data.spec, hp), data.spec, hp)
    meta = load_checkpoint(folder, model)
    if meta.get("spec") != json.loads(canonical_json(spec)):
        raise UserInputError(f"Checkpoint {str(folder)!r} was made for another spec than the one asked for.")
    if meta.get("dataset") != data.spec.models_on:
        raise UserInputError(
            f"Checkpoint {str(folder)!r} was trained on {meta.get('dataset')!r}, not {data.spec.name!r}."
        )
    model.to(device).eval()
    check_model_output(model, data.x_test[:4].to(device))  # before anything else runs on it
    return Trained(model, meta, folder, True, model_identity(cls.name, model, hp),
                   accuracy(model, data.x_test, data.y_test) if measure else float("nan"))


def _train(cls: type[Defense], data: Dataset, hp: Any, spec: dict[str, Any], cid: str, profile: str, seed: int,
           folder: Path, device: torch.device | str, progress: bool) -> Trained:
    """Train the defense for ``spec`` and save its checkpoint into ``folder``."""
    defense = cls()
    torch.manual_seed(seed)
    model = defense.wrap(defense.build(data.spec, hp), data.spec, hp)
    model.to(device)
    torch.manual_seed(seed)
    report = defense.train(model, data, hp, seed, progress)
    model.eval()
    check_model_output(model, data.x_test[:4].to(device))
    clean = accuracy(model, data.x_test, data.y_test)
    meta = {"defense": cls.name, "dataset": data.spec.models_on, "profile": profile, "seed": seed,
            "hparams": dataclasses.asdict(hp), "spec": json.loads(canonical_json(spec)), "id": cid,
            "clean_acc": clean, "train_seconds": report.get("train_seconds"),
            "history": report.get("history", []), "randomized": cls.randomized,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    save_checkpoint(folder, model, meta)
    log.info("trained %s on %s: clean accuracy %.4f", cls.name, data.spec.name, clean)
    return Trained(model, meta, folder, False, model_identity(cls.name, model, hp), clean)
