"""Detection of adversarial examples: the protocol and metrics of Li et al. 2021 for the
detector plugins (contract: :class:`robustbench_er.plugins.detector.Detector`).

Protocol (Li et al. 2021, section 4.5):

* The evaluation points (a fixed seeded subset of the test split, clean-correct only) are split
  by ``split_seed`` into set I (``split``, 20%: detector training) and set II (the rest).
* Adversarial examples are crafted on each set by the named attack at ``eps``, against the
  defended model, and verified as in sweeps. Training positives are set I's successful
  examples; negatives are set I's natural images and noisy images (Gaussian noise scaled to
  the L2 size of each point's perturbation, clipped to [0, 1]).
* On set II, with N adversarial examples (every attacked point, successful or not: the paper
  counts the undetected ones the classifier still gets right) and M non-adversarial examples
  (natural and noisy): ``ACC-ADV = n_adv / N``, ``ACC-NADV = m_nadv / M``,
  ``ACC-CLA = n_cla / (N - n_adv)`` and ``ACC-COM = (n_adv + n_cla) / N``, exactly as
  Li et al. 2021 define them; plus ROC-AUC and the true-positive rate at 5% false positives
  between the successful examples and the non-adversarial ones (scikit-learn), as the KD and
  LID papers and later work report.

Detection is scored at the logistic regression's 0.5 threshold. Every attack may carry its own
threat model (``cw(norm=L2, eps=0.007)``, with ``l2_unit="mse"`` reading L2 bounds as a mean
squared distortion per pixel, as the C&W bounds of Li et al. 2021 read); rows are detection cells in the results store, so a run resumes where it stopped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from robustbench_er.core.errors import UserInputError
from robustbench_er.core.files import atomic_path, write_text_atomic
from robustbench_er.core.metrics import to_norm, unit_scale
from robustbench_er.core.norms import NORM_ATOL, NORM_RTOL, canonical_norm, perturbation_norm
from robustbench_er.engine.spec import AttackConfig, make_attack
from robustbench_er.models.defended import DefendedModel
from robustbench_er.plugins.attack import verify
from robustbench_er.plugins.detector import Detector
from robustbench_er.plugins.registry import get_attack, get_detector


def adaptive_pgd(model: DefendedModel, detector: Detector, x: torch.Tensor, y: torch.Tensor, eps: float, *,
                 steps: int = 40, weight: float = 1.0, seed: int = 0) -> torch.Tensor:
    """PGD (Linf, random start, step 2.5 eps / steps) against the classifier and the detector
    together (Carlini & Wagner 2017's point: a detector is as good as its worst-case attack).
    Per point, each step ascends the classifier's cross-entropy while the point is still
    classified right and, once it is misclassified, descends ``weight`` times the detector's
    logit (the switch keeps the attack from trading misclassification for stealth). Ours."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    xa = (x + (torch.rand(x.shape, generator=g) * 2 - 1).to(x.device) * eps).clamp(0, 1)
    step = 2.5 * eps / steps
    for _ in range(steps):
        xa = xa.detach().requires_grad_(True)
        logits = model.predict(xa)
        wrong = (logits.argmax(1) != y).float()
        ce = F.cross_entropy(logits, y, reduction="none")
        loss = ((1 - wrong) * ce - wrong * weight * detector.torch_logit(model, xa)).sum()
        (grad,) = torch.autograd.grad(loss, xa)
        xa = torch.min(torch.max(xa.detach() + step * grad.sign(), x - eps), x + eps).clamp(0, 1)
    return xa.detach()


@dataclass
class Counts:
    """Set II's counts in the notation of Li et al. 2021."""

    N: int  # adversarial examples (every attacked point)
    n_adv: int  # of them, detected
    n_cla: int  # of the undetected ones, classified correctly
    M: int  # non-adversarial examples (natural and noisy)
    m_nadv: int  # of them, found non-adversarial


def acc_metrics(c: Counts) -> dict[str, float]:
    """ACC-ADV, ACC-NADV, ACC-CLA and ACC-COM as Li et al. 2021 define them (fractions; NaN on
    0/0)."""
    def div(a: int, b: int) -> float:
        return a / b if b else math.nan

    return {"acc_adv": div(c.n_adv, c.N), "acc_nadv": div(c.m_nadv, c.M), "acc_cla": div(c.n_cla, c.N - c.n_adv),
            "acc_com": div(c.n_adv + c.n_cla, c.N)}


def roc_metrics(pos: np.ndarray, neg: np.ndarray) -> dict[str, float]:
    """ROC-AUC and the true-positive rate at 5% false positives (scikit-learn's ROC curve)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    if len(pos) == 0 or len(neg) == 0:
        return {"roc_auc": math.nan, "tpr_at_5fpr": math.nan}
    y = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    s = np.concatenate([pos, neg])
    fpr, tpr, _ = roc_curve(y, s)
    return {"roc_auc": float(roc_auc_score(y, s)), "tpr_at_5fpr": float(np.interp(0.05, fpr, tpr))}


def split_sets(ids: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Set I (``fraction`` of ``ids``) and set II, by a seeded permutation."""
    if not 0 < fraction < 1:
        raise UserInputError(f"split must be strictly between 0 and 1; got {fraction}.")
    perm = np.random.default_rng(seed).permutation(len(ids))
    k = max(1, int(round(fraction * len(ids))))
    return np.sort(ids[perm[:k]]), np.sort(ids[perm[k:]])


def noisy_like(x: torch.Tensor, x_adv: torch.Tensor, seed: int) -> torch.Tensor:
    """Gaussian noise with the L2 size of each point's perturbation, clipped to [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(x.shape, generator=g).to(x.device)
    size = (x_adv - x).flatten(1).norm(dim=1).clamp_min(1e-12)
    noise = noise * (size / noise.flatten(1).norm(dim=1)).view(-1, *([1] * (x.ndim - 1)))
    return (x + noise).clamp(0, 1)


# ---- the protocol ------------------------------------------------------------------------------

def craft(attack: Any, model: DefendedModel, x: torch.Tensor, y: torch.Tensor, eps: float, seed: int,
          batch_size: int, eot: int) -> tuple[torch.Tensor, np.ndarray]:
    """Adversarial examples of ``attack`` at ``eps`` (a bound for a minimization attack) and
    which of them are verified successful (in the ball, in [0, 1], misclassified)."""

    advs, oks = [], []
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        e = torch.full((len(xb),), float(eps))
        if attack.kind == "fixed":
            xa = attack.run(attack.target(model), xb, yb, e, generator=gen)
        else:
            xa = attack.run(attack.target(model), xb, yb, generator=gen)
        ok, _ = verify(model, xb, xa, yb, attack.norm, e, eot)
        # an example outside the bound is replaced by the natural image (not an adversarial example)
        inside = _inside(xa, xb, attack.norm, e)
        xa = torch.where(inside.view(-1, *([1] * (xb.ndim - 1))), xa.detach(), xb)
        advs.append(xa)
        oks.append(ok.cpu().numpy() & inside.cpu().numpy())
    return torch.cat(advs), np.concatenate(oks)


def _inside(xa: torch.Tensor, x: torch.Tensor, norm: str, eps: torch.Tensor) -> torch.Tensor:
    """The ball test of :func:`robustbench_er.plugins.attack.verify` (same norm and tolerances)."""

    return perturbation_norm(xa - x, norm) <= eps.to(xa.device) * (1 + NORM_RTOL) + NORM_ATOL


@dataclass
class DetectionSetup:
    detectors: list[str]
    train_attack: Any  # AttackConfig
    test_attacks: list[Any]
    #: the norm and eps of every attack that does not name its own (``cw(norm=L2, eps=0.2)``)
    norm: str = "Linf"
    eps: float = 0.3
    samples: int = 500
    split: float = 0.2
    split_seed: int = 0
    seed: int = 0
    #: points per attack call when crafting (how the work is cut, not part of a cell's identity,
    #: as a sweep's batch size is not; larger batches run a library attack faster on a CPU)
    batch_size: int = 128
    eot: int = 1
    #: also run adaptive PGD (classifier loss and detector logit together) on set II per detector
    adaptive: bool = True
    adaptive_steps: int = 40
    #: unit of L2 bounds: ``l2``; ``rms`` = L2 / sqrt(pixels); ``mse`` = L2^2 / pixels, the mean
    #: squared distortion, the reading of the C&W bounds of Li et al. 2021
    #: under which its kappa-9 examples exist
    l2_unit: str = "l2"


def threat(cfg: Any, setup: DetectionSetup, dim: int) -> tuple[Any, str, float, float]:
    """``cfg`` without the detection-level keys, its norm, its eps as given, and its eps in the
    attack's own units (``norm=`` and ``eps=`` in an attack's parameters override the run's)."""

    params = dict(cfg.params)
    norm = params.pop("norm", None)
    eps = params.pop("eps", None)
    cls = get_attack(cfg.name)
    if norm is None:
        norm = setup.norm if setup.norm in cls.norms else (cls.norms[0] if len(cls.norms) == 1 else setup.norm)
    try:
        norm = canonical_norm(str(norm))
    except Exception as exc:
        raise UserInputError(f"attack {cfg.display!r}: {exc}") from None
    if eps is None:
        if norm != setup.norm:
            raise UserInputError(f"attack {cfg.display!r} runs in {norm}, not the run's {setup.norm}; give its"
                                 f" bound, e.g. {cfg.name}(eps=...).")
        eps = setup.eps
    try:
        given = float(eps)
    except (TypeError, ValueError):
        raise UserInputError(f"attack {cfg.display!r}: eps must be a number; got {eps!r}.") from None
    if not given >= 0:
        raise UserInputError(f"attack {cfg.display!r}: eps must be >= 0; got {eps!r}.")
    l2 = to_norm(given, setup.l2_unit, unit_scale(norm, setup.l2_unit, dim)) if norm == "L2" else given
    return AttackConfig(cfg.name, params, label=cfg.label), norm, given, l2


def cell_key(identity: dict[str, Any]) -> str:
    """The store key of a detection cell (a hash of its identity)."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:24]


def detection_cells(defense: str, trained: Any, data: Any, setup: DetectionSetup
                    ) -> tuple[dict[str, Any], list[tuple[str, Any, str, float, float, int]],
                               dict[tuple[str, str], dict[str, Any]]]:
    """The detection cells of one defense and training attack: the identity every cell shares,
    the test attacks (label, attack config, norm, given bound, bound in the norm, position), and
    (detector, test label) -> the cell's identity (its store key is :func:`cell_key` of it).
    Pure: reads the setup and the checkpoint's identity, runs nothing."""
    dim = int(np.prod(data.x_test.shape[1:]))
    eot = setup.eot if bool(getattr(trained.model, "randomized", False)) else 1
    t_cfg, t_norm, _, t_eps = threat(setup.train_attack, setup, dim)
    base = {"dataset": data.spec.name, "defense": defense, "checkpoint": getattr(trained, "identity", ""),
            "train": [t_cfg.name, t_cfg.params, t_norm, t_eps], "samples": setup.samples, "split": setup.split,
            "split_seed": setup.split_seed, "seed": setup.seed, "eot": eot}
    tests = []
    for i, cfg in enumerate(setup.test_attacks):
        c, norm, given, eps = threat(cfg, setup, dim)
        tests.append((cfg.display, c, norm, given, eps, i))

    def ident(det: str, test: Any) -> dict[str, Any]:
        return {**base, "detector": det, "test": test}

    wanted: dict[tuple[str, str], dict[str, Any]] = {}
    for dname in setup.detectors:
        for label, c, norm, _, eps, _ in tests:
            wanted[(dname, label)] = ident(dname, [c.name, c.params, norm, eps])
        if setup.adaptive and t_norm == "Linf":
            wanted[(dname, f"adaptive pgd vs {dname}")] = ident(dname, ["adaptive-pgd", setup.adaptive_steps,
                                                                         "Linf", t_eps])
    return base, tests, wanted


def _stored_detections(store: Any, wanted: dict[tuple[str, str], dict[str, Any]]) -> dict[tuple[str, str], Any]:
    """The wanted detection cells the store already holds (none without a store)."""
    done: dict[tuple[str, str], Any] = {}
    if store is not None:
        for k, idt in wanted.items():
            got = store.detection_row(cell_key(idt))
            if got is not None:
                done[k] = got
    return done


def _add_adaptive(sets: dict[str, Any], a_label: str, model: DefendedModel, det: Detector, x2: torch.Tensor,
                  y2: torch.Tensor, t_eps: float, t_given: float, setup: DetectionSetup) -> None:
    """Add set II's adaptive PGD examples against ``det`` to ``sets`` (unless the model cannot run it)."""
    try:
        adv_a = torch.cat([adaptive_pgd(model, det, x2[i:i + setup.batch_size], y2[i:i + setup.batch_size],
                                        t_eps, steps=setup.adaptive_steps, seed=setup.seed + 17 + i)
                           for i in range(0, len(x2), setup.batch_size)])
        ok_a = (model.predict_label(adv_a).cpu() != y2).numpy()
        sets[a_label] = (adv_a, ok_a, "Linf", t_given)
    except NotImplementedError:
        pass


def _score_set(model: DefendedModel, det: Detector, defense: str, setup: DetectionSetup, label: str,
               adv2: torch.Tensor, ok2: np.ndarray, norm: str, given: float, x2: torch.Tensor, y2: torch.Tensor,
               sizes: tuple[int, int]) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """One test attack's row for a fitted detector, with the scores of its examples and of the negatives."""
    neg2 = torch.cat([x2, noisy_like(x2, adv2, setup.seed + 13)])
    s_adv, s_neg = det.score(model, adv2), det.score(model, neg2)
    detected = s_adv >= 0.5
    right = (model.predict_label(adv2).cpu() == y2).numpy()
    c = Counts(N=len(adv2), n_adv=int(detected.sum()), n_cla=int((~detected & right).sum()),
               M=len(neg2), m_nadv=int((s_neg < 0.5).sum()))
    row = {"defense": defense, "detector": det.name, "train_attack": setup.train_attack.display,
           "test_attack": label, "norm": norm, "eps": given, "split_seed": setup.split_seed,
           "set1": sizes[0], "set2": sizes[1], "successful": int(ok2.sum()),
           "N": c.N, "n_adv": c.n_adv, "n_cla": c.n_cla, "M": c.M, "m_nadv": c.m_nadv,
           **acc_metrics(c), **roc_metrics(s_adv[ok2], s_neg)}
    return row, s_adv, s_neg


def _rows_of(wanted: dict[tuple[str, str], dict[str, Any]], done: dict[tuple[str, str], Any]) -> list[dict[str, Any]]:
    """The rows of the wanted cells that are done, in the order of ``wanted``, with their scores."""
    rows: list[dict[str, Any]] = []
    for k in wanted:
        if k in done:
            row, (pos, neg) = done[k]
            rows.append({**row, "_scores": (np.asarray(pos, dtype=float), np.asarray(neg, dtype=float))})
    return rows


def run_detection(defense: str, trained: Any, data: Any, setup: DetectionSetup,
                  progress: bool = False, store: Any = None,
                  crafted: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The protocol of Li et al. 2021 for every detector and test attack; one row each.

    With a ``store``, each row is a detection cell keyed by (dataset, defense checkpoint,
    detector, training attack, test attack with norm and eps, samples, split and seeds): rows
    already there are read back, and only the missing ones are crafted and scored. ``crafted``
    (a dict the caller keeps) holds set II's examples per test attack, so the runs of one
    defense with several training attacks craft each test attack once.
    """

    model: DefendedModel = trained.model.eval()
    ids = data.sample_ids(setup.samples)
    x, y = data.x_test[ids], data.y_test[ids]
    randomized = bool(model.randomized)
    base, tests, wanted = detection_cells(defense, trained, data, setup)
    eot = base["eot"]
    t_cfg, t_norm, t_given, t_eps = threat(setup.train_attack, setup, int(np.prod(data.x_test.shape[1:])))
    adaptive = setup.adaptive and t_norm == "Linf"
    done = _stored_detections(store, wanted)
    missing_dets = [d for d in setup.detectors if any(k[0] == d and k not in done for k in wanted)]

    if missing_dets:
        correct = (model.predict_label(x).cpu() == y).numpy()
        x, y = x[correct], y[correct]
        set1, set2 = split_sets(np.arange(len(y)), setup.split, setup.split_seed)

        def examples(cfg: Any, norm: str, eps: float, which: np.ndarray, salt: int) -> tuple[torch.Tensor, np.ndarray]:
            attack = make_attack(cfg, norm, randomized, eot)
            attack.check_model(model)
            return craft(attack, model, x[which], y[which], eps, setup.seed * 7919 + salt, setup.batch_size, eot)

        adv1, ok1 = examples(t_cfg, t_norm, t_eps, set1, 1)
        x1, x2, y2 = x[set1], x[set2], y[set2]
        neg1 = torch.cat([x1, noisy_like(x1, adv1, setup.seed + 11)])
        test_sets = {}
        for label, c, norm, given, eps, i in tests:
            if any((d, label) not in done for d in missing_dets):
                ck = cell_key({**base, "train": None, "test": [c.name, c.params, norm, eps, i]})
                if crafted is None or ck not in crafted:
                    adv2, ok2 = examples(c, norm, eps, set2, 100 + i)
                    if crafted is not None:
                        crafted[ck] = (adv2, ok2)
                adv2, ok2 = crafted[ck] if crafted is not None else (adv2, ok2)
                test_sets[label] = (adv2, ok2, norm, given)
        for dname in missing_dets:
            det = get_detector(dname)(dataset=data.spec.name)
            det.check_model(model)
            det.fit_reference(model, data.x_train, data.y_train)
            det.fit(model, adv1[ok1], neg1)
            sets = {k: v for k, v in test_sets.items() if (dname, k) not in done}
            a_label = f"adaptive pgd vs {det.name}"
            if adaptive and (dname, a_label) not in done:
                _add_adaptive(sets, a_label, model, det, x2, y2, t_eps, t_given, setup)
            for label, (adv2, ok2, norm, given) in sets.items():
                row, s_adv, s_neg = _score_set(model, det, defense, setup, label, adv2, ok2, norm, given, x2, y2,
                                               (len(set1), len(set2)))
                if store is not None and (dname, label) in wanted:
                    idt = wanted[(dname, label)]
                    store.put_detection_row(cell_key(idt), idt, row, (s_adv[ok2], s_neg))
                done[(dname, label)] = (row, (s_adv[ok2], s_neg))
    return _rows_of(wanted, done)


def write_detection(rows: list[dict[str, Any]], out: Any, command: str) -> dict[str, Any]:
    """``detection.csv`` (long form), ``detection.md`` (the layout of Li et al. 2021: detectors
    as columns, attacks as rows, NADV and COM per cell) and ``detection_roc.png``."""
    from pathlib import Path

    import pandas as pd


    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows])
    with atomic_path(out / "detection.csv") as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")
    lines = ["# Detection", "", f"Made by `{command}`.", "",
             "ACC-NADV / ACC-COM in % on set II (definitions of Li et al. 2021, Table 4); ROC-AUC"
             " and TPR at 5% FPR in `detection.csv`. Detectors trained on set I with the training attack's examples.", ""]
    for (defense, train), part in df.groupby(["defense", "train_attack"], sort=False):
        dets = list(dict.fromkeys(part["detector"]))
        lines += [f"## {defense}, detectors trained on {train}", "",
                  "| test attack | " + " | ".join(f"{d} NADV | {d} COM" for d in dets) + " |",
                  "|---|" + "---|---|" * len(dets)]
        for test, g in part.groupby("test_attack", sort=False):
            by = {r["detector"]: r for _, r in g.iterrows()}
            cells = []
            for d in dets:
                r = by.get(d)
                cells += ["–", "–"] if r is None else [f"{100 * r['acc_nadv']:.2f}", f"{100 * r['acc_com']:.2f}"]
            lines.append(f"| {test} | " + " | ".join(cells) + " |")
        lines.append("")
    write_text_atomic(out / "detection.md", "\n".join(lines))
    _roc_png(rows, out / "detection_roc.png")
    return {"csv": out / "detection.csv", "markdown": out / "detection.md", "roc": out / "detection_roc.png"}


def _roc_png(rows: list[dict[str, Any]], path: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve


    keys = list(dict.fromkeys((r["defense"], r["train_attack"], r["test_attack"]) for r in rows))
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for r in rows:
            if (r["defense"], r["train_attack"], r["test_attack"]) != key:
                continue
            pos, neg = r["_scores"]
            if len(pos) and len(neg):
                fpr, tpr, _ = roc_curve(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg])
                ax.plot(fpr, tpr, label=f"{r['detector']} (AUC {r['roc_auc']:.2f})")
        ax.plot([0, 1], [0, 1], ls=":", c="grey")
        ax.set_title(f"{key[0]}: {key[1]} -> {key[2]}", fontsize=9)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
