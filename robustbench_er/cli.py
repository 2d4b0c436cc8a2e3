"""The ``robustbench-er`` command.

Exit status: 0 on success, 2 on bad input (one sentence on stderr; nothing in the store has
changed), 1 on an internal error.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from robustbench_er.core.errors import UserInputError

QUICKSTART: dict[str, Any] = {
    "dataset": "mnist5k",
    "profile": "quick",
    "samples": 200,
    "norm": "Linf",
    "eps": "0:0.4:0.025",
    "headline": 0.3,
    "defenses": ["none", "madry"],
    "attacks": ["pgd", {"name": "autoattack", "eps": [0.3]}],
}


def _print(msg: str = "", quiet: bool = False) -> None:
    if not quiet:
        print(msg, flush=True)


def _load_plugins(paths: Sequence[str] | None, quiet: bool) -> None:
    from robustbench_er.plugins.registry import load_plugin_file

    for p in paths or []:
        names = load_plugin_file(p)
        _print(f"loaded plugin {p}: {', '.join(names)}", quiet)


def parse_attack(text: str) -> Any:
    """``cw(confidence=9,steps=100)`` -> AttackConfig("cw", {"confidence": 9, "steps": 100})."""
    from robustbench_er.core.text import parse_attack_text
    from robustbench_er.engine.spec import AttackConfig

    try:
        d = parse_attack_text(text)
    except ValueError as exc:
        raise UserInputError(f"--attack: {exc}.") from exc
    return AttackConfig(d["name"], d["params"], label=d.get("label"))


def experiment_configs(raw: dict[str, Any], *, out: str | None, device: str | None, quiet: bool,
                       source: str = "the experiment") -> list[Any]:
    """Parse a whole experiment (every sweep), load its plugins, check everything; no work done."""
    from robustbench_er.inputs.config import parse_experiment

    exp = parse_experiment(raw, out=out, device=device, source=source)
    _load_plugins(exp.plugins, quiet)
    return exp.configs(progress=not quiet)


def _run_config(cfg: Any, command: str, quiet: bool) -> int:
    from robustbench_er.core.metrics import pretty_eps
    from robustbench_er.jobs.sweep import run_sweep

    def on_train(name: str, trained: Any) -> None:
        how = "reused" if trained.reused else f"trained in {trained.meta.get('train_seconds') or 0:.0f}s"
        _print(f"[{name}] checkpoint {trained.folder} ({how}); clean accuracy {trained.clean_acc:.4f}", quiet)

    several = bool(cfg.seeds) and len(cfg.seeds) > 1

    def on_cell(s: Any) -> None:
        pts = ", ".join(f"{pretty_eps(e)}: {100 * a:.1f}" for e, a in list(s.robust.items())[:: max(1, len(s.robust) // 5)])
        seed = f" / seed {s.seed}" if several else ""
        _print(f"[{s.defense} / {s.attack} / {s.norm}{seed}] n={s.n} clean {100 * s.clean_acc:.1f}% | robust % at eps {pts}"
               f" | {s.seconds:.1f}s{' (resumed)' if s.resumed else ''}", quiet)

    def on_skip(defense: str, attack: str, reason: str) -> None:
        _print(f"[{defense} / {attack}] skipped: {reason}", quiet)

    t0 = time.perf_counter()
    run_sweep(cfg, command=command, on_cell=on_cell, on_train=on_train, on_skip=on_skip)
    out = Path(cfg.out)
    _print(f"done in {time.perf_counter() - t0:.0f}s; outputs in {out.resolve()}:", quiet)
    for f in sorted(out.glob("*")):
        if f.is_file() and not f.name.endswith(("-wal", "-shm")):
            _print(f"  {f}", quiet)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from robustbench_er.plugins.registry import (
        ANALYSES,
        ATTACKS,
        DEFENSES,
        DETECTORS,
        list_analyses,
        list_attacks,
        list_datasets,
        list_defenses,
        list_detectors,
    )

    kinds = [args.kind] if args.kind else ["defenses", "attacks", "detectors", "analyses", "datasets"]
    for kind in kinds:
        names = {"defenses": list_defenses, "attacks": list_attacks, "datasets": list_datasets,
                 "detectors": list_detectors, "analyses": list_analyses}[kind](args.pattern or "*")
        print(f"{kind}:")
        for n in names:
            extra = ""
            if kind == "attacks":
                a = ATTACKS.get(n)
                extra = f"  [{a.kind}, {a.access}, {'/'.join(a.norms)}]"
            elif kind == "defenses":
                dcls = DEFENSES.get(n)
                extra = f"  [presets: {', '.join(sorted(dcls.presets))}{'; randomized' if dcls.randomized else ''}]"
            elif kind == "detectors":
                extra = "  [reads the embedding]" if DETECTORS.get(n).needs_embedding else ""
            elif kind == "analyses":
                acls = ANALYSES.get(n)
                what = "the embedding" if acls.needs_embedding else "a model" if acls.needs_model else "the dataset"
                extra = f"  [reads {what}]"
            doc = ""
            print(f"  {n}{extra}{doc}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from pydantic import TypeAdapter, ValidationError

    from robustbench_er.core.device import resolve_device
    from robustbench_er.core.text import parse_sets
    from robustbench_er.data.datasets import load_dataset
    from robustbench_er.engine.trained import get_or_train
    from robustbench_er.inputs.config import check_device, check_output_folder

    try:
        seed = TypeAdapter(int).validate_python(args.seed or 0)
    except ValidationError:
        raise UserInputError(f"--seed: must be an integer, got {args.seed!r}.") from None
    if args.profile not in (None, "quick", "paper"):
        raise UserInputError(f"--profile: must be quick or paper, got {args.profile!r}.")
    overrides = parse_sets(args.set)
    check_device(args.device or "auto", "--device")
    check_output_folder(args.out, "--out")
    data = load_dataset(args.dataset, args.data_dir, args.download)
    t = get_or_train(args.defense, data, profile=args.profile or "quick", seed=seed, out=Path(args.out),
                     overrides=overrides, device=resolve_device(args.device or "auto"), progress=not args.quiet)
    how = "reused" if t.reused else f"trained in {t.meta.get('train_seconds') or 0:.0f}s"
    print(f"{t.meta['defense']} on {t.meta['dataset']}: clean accuracy {t.clean_acc:.4f} ({how}); checkpoint {t.folder}")
    return 0


def sweep_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The ``sweep`` command's flags as the keys of an experiment (None = not given)."""
    from robustbench_er.core.text import parse_sets, split_top_level

    sets = parse_sets(args.set)
    defenses: Any = args.defense
    if sets and isinstance(args.defense, str):
        defenses = {d: dict(sets) for d in split_top_level(args.defense)}
    checkpoints = None
    if args.checkpoint:
        names = split_top_level(args.defense or "")
        if len(names) != 1:
            raise UserInputError("--checkpoint: needs exactly one --defense (the one the checkpoint holds).")
        checkpoints = {names[0]: args.checkpoint}
    return {"dataset": args.dataset, "defenses": defenses, "attacks": args.attack, "eps": args.eps,
            "norm": args.norm, "samples": args.samples, "profile": args.profile, "seed": args.seed,
            "seeds": args.seeds,
            "out": args.out, "data_dir": args.data_dir, "download": args.download or None,
            "device": args.device, "batch_size": args.batch_size, "eot": args.eot, "headline": args.headline,
            "table_eps": args.table_eps, "table_attacks": args.table_attacks, "mode": args.mode, "search": args.search, "l2_unit": args.l2_unit, "checkpoints": checkpoints,
            "escalate": args.escalate,
            "executor": ({"kind": args.executor, "address": args.ray_address} if args.executor or args.ray_address
                         else None)}


def cmd_sweep(args: argparse.Namespace) -> int:
    from robustbench_er.jobs.sweep import sweep_from_flags

    def flags_for(defense: str) -> dict[str, Any]:
        args.defense = defense
        return sweep_flags(args)

    with sweep_from_flags(flags_for, args.defense, checkpoint=args.checkpoint, model_dir=args.model_dir,
                          download=args.download, progress=not args.quiet, data_file=args.data_file) as cfg:
        if args.dry_run:
            return _dry_run([cfg])
        return _run_config(cfg, _command(), args.quiet)


def cmd_detect(args: argparse.Namespace) -> int:
    """The detection protocol of Li et al. 2021: every input checked first, then train or load,
    craft, detect."""
    from robustbench_er.jobs.detect import plan_detection, run_detection_job

    flags = {"dataset": args.dataset, "defenses": args.defense, "detectors": args.detector,
             "train_attacks": args.train_attack, "test_attacks": args.test_attack, "norm": args.norm,
             "eps": args.eps, "l2_unit": args.l2_unit, "samples": args.samples, "split": args.split,
             "split_seed": args.split_seed, "seed": args.seed, "profile": args.profile, "set": args.set,
             "data_dir": args.data_dir, "device": args.device, "out": args.out,
             "adaptive": not args.no_adaptive, "batch_size": args.batch_size}
    plan = plan_detection({k: v for k, v in flags.items() if v is not None}, cli=True)
    paths = run_detection_job(plan, _command(), progress=not args.quiet, say=lambda m: _print(m, args.quiet))
    for p in paths.values():
        _print(str(p), args.quiet)
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    """Analyses of a dataset and of defended models: every input checked first, then run."""
    from robustbench_er.jobs.analyze import plan_analysis, run_analysis_job

    flags = {"dataset": args.dataset, "defenses": args.defense, "analyses": args.analysis, "seed": args.seed,
             "profile": args.profile, "set": args.set, "data_dir": args.data_dir, "device": args.device,
             "out": args.out}
    plan = plan_analysis({k: v for k, v in flags.items() if v is not None}, cli=True)
    paths = run_analysis_job(plan, _command(), progress=not args.quiet, say=lambda m: _print(m, args.quiet))
    _print(str(paths["summary"]), args.quiet)
    return 0


def _dry_run(configs: Sequence[Any], detections: Sequence[Any] = (), analyses: Sequence[Any] = ()) -> int:
    from robustbench_er.jobs.dryrun import analysis_rows, detection_rows, plan_rows, render

    frames = [detection_rows(p) for p in detections] + [analysis_rows(a) for a in analyses]
    names = [f"detect: {p.data.spec.name}, {', '.join(p.defenses)} x {', '.join(p.setups[0].detectors)},"
             f" trained on {', '.join(s.train_attack.display for s in p.setups)}, tested by"
             f" {', '.join(a.display for a in p.setups[0].test_attacks)}, out {p.out}" for p in detections]
    names += [f"analyze: {a.data.spec.name}, {', '.join(a.labels)} on {', '.join(a.defenses) or 'the dataset'},"
              f" out {a.out}" for a in analyses]
    frames += [plan_rows(cfg) for cfg in configs]
    names += [f"{cfg.dataset}, {cfg.norm}, {', '.join(a.display for a in cfg.attacks)}, {cfg.mode}, out {cfg.out}"
              for cfg in configs]
    print(render(frames, names))
    return 0


def _floats(text: str, flag: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserInputError(f"{flag}: expected numbers separated by commas; got {text!r}.") from None


def cmd_import_model(args: argparse.Namespace) -> int:
    from robustbench_er.jobs.imported import import_model

    mean: list[float] = []
    std: list[float] = []
    if args.normalize:
        if args.normalize.count("/") != 1:
            raise UserInputError(f"--normalize: expected MEAN/STD (e.g. 0.1307/0.3081); got {args.normalize!r}.")
        m, sd = args.normalize.split("/")
        mean, std = _floats(m, "--normalize"), _floats(sd, "--normalize")
        if not mean or len(mean) != len(std) or any(v <= 0 for v in std):
            raise UserInputError("--normalize: give as many means as stds, every std > 0.")
    folder, how, clean = import_model(arch=args.arch, weights=args.weights, dataset=args.dataset, name=args.name,
                                      out=args.out, mean=mean, std=std, randomized=args.randomized,
                                      differentiable=not args.not_differentiable, output=args.output,
                                      data_dir=args.data_dir)
    print(f"{args.name}: weights read with {how}; clean accuracy {clean:.4f} on {args.dataset}; checkpoint {folder}")
    print(f"evaluate it with: robustbench-er sweep --dataset {args.dataset} --checkpoint {shlex.quote(str(folder))}"
          " --attack pgd --eps 0:0.3:0.05")
    return 0


def _command() -> str:
    return "robustbench-er " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def cmd_run(args: argparse.Namespace) -> int:
    from robustbench_er.inputs.config import parse_experiment, read_experiment
    from robustbench_er.jobs.analyze import plan_analysis, run_analysis_job
    from robustbench_er.jobs.detect import plan_detection, run_detection_job

    raw = read_experiment(args.experiment)
    source = f"Experiment file {args.experiment!r}"
    # every sweep and detection job is checked before the first one trains or writes anything
    configs = experiment_configs(raw, out=args.out, device=args.device, quiet=args.quiet, source=source)
    exp = parse_experiment(raw, out=args.out, device=args.device, source=source)
    plans = [plan_detection(job, where=where) for job, where in exp.detect]
    analyses = [plan_analysis(job, where=where) for job, where in exp.analyze]
    if args.dry_run:
        return _dry_run(configs, plans, analyses)
    for cfg in configs:
        _run_config(cfg, _command(), args.quiet)
    for st in exp.studies:
        _write_study(st, configs, args.quiet)
    for a in analyses:
        _print(str(run_analysis_job(a, _command(), progress=not args.quiet,
                                    say=lambda m: _print(m, args.quiet))["summary"]), args.quiet)
    for p in plans:
        for path in run_detection_job(p, _command(), progress=not args.quiet,
                                      say=lambda m: _print(m, args.quiet)).values():
            _print(str(path), args.quiet)
    return 0


def _write_study(study: dict[str, Any], configs: Sequence[Any], quiet: bool) -> None:
    from robustbench_er.data.datasets import dataset_spec
    from robustbench_er.report.study import study_variants, write_study

    variants = set(study_variants(study))
    for cfg in configs:
        if variants & set(cfg.defenses):
            spec = dataset_spec(cfg.dataset, cfg.data_dir)
            headline = cfg.headline if cfg.headline is not None else spec.headline.get(cfg.norm)
            for p in write_study(cfg.out, study, headline, _command()).values():
                _print(str(p), quiet)


def cmd_report(args: argparse.Namespace) -> int:
    from robustbench_er.inputs.config import check_output_folder
    from robustbench_er.report.writers import write_reports
    from robustbench_er.store.results import Store

    out = Path(args.out)
    if not (out / Store.FILENAME).is_file():
        raise UserInputError(f"No results store in {str(out)!r}; run a sweep with --out {args.out} first.")
    check_output_folder(out, "--out")
    store = Store(out)
    try:
        paths = write_reports(store, out, headline=_headline_arg(args.headline), table_eps=_floats_or_none(args.table_eps))
    finally:
        store.close()
    if not paths:
        raise UserInputError(f"The store in {str(out)!r} has no finished cells yet.")
    for p in paths.values():
        print(p)
    return 0


def _floats_or_none(text: str | None) -> list[float] | None:
    from robustbench_er.core.text import parse_eps

    if not text:
        return None
    try:
        return parse_eps(text)
    except ValueError as exc:
        raise UserInputError(f"--table-eps: {exc}.") from exc


def _headline_arg(text: str | None) -> Any:
    """``0.3`` (every norm) or ``Linf=0.3,L2=2`` (per norm) -> what write_reports takes."""
    from robustbench_er.core.norms import canonical_norm
    from robustbench_er.core.text import parse_number

    if not text:
        return None

    def number(v: str) -> float:
        try:
            x = parse_number(v)
        except ValueError as exc:
            raise UserInputError(f"--headline: {exc}.") from exc
        if x < 0:
            raise UserInputError(f"--headline: must be a number >= 0, got {v!r}.")
        return x

    if "=" not in text:
        return number(text)
    out = {}
    for item in text.split(","):
        k, _, v = item.partition("=")
        try:
            norm = canonical_norm(k)
        except UserInputError as exc:
            raise UserInputError(f"--headline: unknown norm {k.strip()!r}; use Linf, L2 or L1.") from exc
        out[norm] = number(v)
    return out


def cmd_quickstart(args: argparse.Namespace) -> int:
    _print("robustbench-er quickstart, about 4 minutes on a 2-core CPU: train 'none' and 'madry' (quick"
           " profile) on the embedded mnist5k data, sweep PGD-Linf from 0 to 0.4 on 200 test points, then"
           " AutoAttack at 0.3 on every point PGD left standing.", args.quiet)
    (cfg,) = experiment_configs(dict(QUICKSTART), out=args.out, device=args.device, quiet=args.quiet)
    rc = _run_config(cfg, _command(), args.quiet)
    board = Path(args.out) / "leaderboard.md"
    if rc == 0 and board.is_file():
        table = [line for line in board.read_text().splitlines() if line.startswith("|")]
        _print("\n" + "\n".join(table), args.quiet)
    _print(f"\nOpen {Path(args.out) / 'leaderboard.html'} in a browser: the sortable tables and the curves.", args.quiet)
    return rc


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors as one sentence on stderr (exit 2) like every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"robustbench-er: error: {message[0].upper()}{message[1:].rstrip('.')}"
                     f" (see {self.prog} --help).\n")


def _common_args(sp: argparse.ArgumentParser, default: dict[str, Any],
                 out_default: str | None = None) -> None:
    """Add the flags every working command takes (--out, --device, --plugin, --quiet, -v)."""
    from robustbench_er.inputs.config import DEVICE_HELP

    sp.add_argument("--out", default=out_default,
                    help=f"results folder (default: {out_default or default['out']})")
    sp.add_argument("--device", default=None, help=f"{DEVICE_HELP} (default: auto)")
    sp.add_argument("--plugin", action="append", help="load a plugin file (repeatable)")
    sp.add_argument("--quiet", action="store_true", help="no progress bars or summaries")
    sp.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")


# flags default to None ("not given"); the defaults live in robustbench_er.inputs.config.SweepSpec
def _data_args(sp: argparse.ArgumentParser, default: dict[str, Any]) -> None:
    """Add the dataset, profile, seed and --set flags of the commands that train."""
    sp.add_argument("--dataset", required=True)
    sp.add_argument("--data-dir", default=None,
                    help="folder with a local dataset (MNIST, CIFAR, ...)")
    sp.add_argument("--download", action="store_true",
                    help="let torchvision download a missing folder dataset")
    sp.add_argument("--profile", default=None,
                    help=f"quick or paper (default: {default['profile']})")
    sp.add_argument("--seed", default=None,
                    help=f"training and attack seed (default: {default['seed']})")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override a defense hyper-parameter")


def _add_list_parser(sub: Any) -> None:
    """The ``list`` command."""
    sp = sub.add_parser("list", help="list registered defenses, attacks, datasets")
    sp.add_argument("kind", nargs="?",
                    choices=["defenses", "attacks", "detectors", "analyses", "datasets"])
    sp.add_argument("pattern", nargs="?", default="*", help="wildcard pattern, e.g. 'er*'")
    sp.add_argument("--plugin", action="append")
    sp.add_argument("--quiet", action="store_true")
    sp.add_argument("-v", "--verbose", action="store_true")
    sp.set_defaults(func=cmd_list)


def _add_train_parser(sub: Any, default: dict[str, Any]) -> None:
    """The ``train`` command."""
    sp = sub.add_parser("train", help="train (or reuse) a defense checkpoint")
    _data_args(sp, default)
    sp.add_argument("--defense", required=True)
    _common_args(sp, default, out_default=default["out"])
    sp.set_defaults(func=cmd_train)


def _add_sweep_parser(sub: Any, default: dict[str, Any]) -> None:
    """The ``sweep`` command."""
    from robustbench_er.core.metrics import L2_UNITS
    from robustbench_er.engine.spec import MODES, SEARCHES

    sp = sub.add_parser("sweep", help="run an epsilon sweep")
    _data_args(sp, default)
    sp.add_argument("--defense", default=None,
                    help="NAME[,NAME...] (optional with --checkpoint of an imported model)")
    sp.add_argument("--attack", required=True, help="NAME[,NAME...]; parameters as"
                    " NAME(key=value,...), e.g. 'cw(confidence=9)'")
    sp.add_argument("--checkpoint", default=None, help="evaluate this checkpoint folder"
                    " (safetensors + meta.json) instead of training")
    sp.add_argument("--data-file", default=None, help="your own test points: a .safetensors or"
                    " .npz file with x (N x C x H x W in [0, 1]) and y, evaluated in place of"
                    " the dataset's test split (default --samples: all of them)")
    sp.add_argument("--norm", default=None, help=f"Linf, L2 or L1 (default: {default['norm']})")
    sp.add_argument("--eps", required=True,
                    help="START:STOP:STEP (inclusive) or a,b,c; 8/255 allowed")
    sp.add_argument("--samples", default=None,
                    help=f"evaluation points, or 'all' (default: {default['samples']})")
    sp.add_argument("--batch-size", default=None,
                    help="attack batch size, or auto (default: auto: 128 on a CPU, the largest"
                    " that fits on a GPU, probed once per model and cached)")
    sp.add_argument("--eot", default=None, help="passes for EOT and majority votes on randomized"
                    f" defenses (default: {default['eot']})")
    sp.add_argument("--seeds", default=None, help="several seeds, e.g. 0,1,2: train and sweep each"
                    " (instead of --seed); the leaderboards keep a row per seed and add mean ± std"
                    " rows")
    sp.add_argument("--headline", default=None,
                    help="headline epsilon of the leaderboard (a point of the grid)")
    sp.add_argument("--table-eps", default=None, help="epsilons of a per-eps table in"
                    " leaderboard.md, defenses as rows (e.g. 0,0.1,0.2,0.3,0.4; grid points)")
    sp.add_argument("--table-attacks", default=None, help="attack labels that get a per-eps table"
                    " of their own beside the worst case (e.g. pgd: PGD alone)")
    sp.add_argument("--mode", default=None, help=f"{' or '.join(MODES)}: several attacks as a"
                    " cascade on the survivors, or each on every point"
                    f" (default: {default['mode']})")
    sp.add_argument("--search", default=None, help=f"{' or '.join(SEARCHES)}: how fixed-epsilon"
                    f" attacks walk the grid (default: {default['search']})")
    sp.add_argument("--escalate", action=argparse.BooleanOptionalAction, default=None,
                    help="after the checks, run each flag's remedy (Square and RayS for masked gradients,"
                         " more EOT passes for randomness, ...) as further cascade stages on the points"
                         " still standing; the worst case includes them (default: on; docs/flags.md)")
    sp.add_argument("--l2-unit", default=None, help=f"{', '.join(L2_UNITS[:-1])} or {L2_UNITS[-1]}:"
                    " unit of L2 epsilons; rms = L2 / sqrt(number of pixels), mse = L2^2 / number"
                    " of pixels (the reading of Li et al. 2021's C&W bounds)"
                    f" (default: {default['l2_unit']})")
    sp.add_argument("--executor", default=None, help="local (default) or ray: training jobs and"
                    " attack batches as Ray tasks (pip install 'robustbench-er[ray]')")
    sp.add_argument("--ray-address", default=None, help="join this Ray cluster"
                    " (auto, ray://host:10001); default: start a local Ray")
    sp.add_argument("--model-dir", default=None, help="RobustBench weights for --defense"
                    " robustbench:NAME, laid out as DIR/<dataset>/<threat model>/<NAME>.pt")
    sp.add_argument("--dry-run", action="store_true",
                    help="print the plan, what is cached and the cost; touch nothing")
    _common_args(sp, default)
    sp.set_defaults(func=cmd_sweep)


def _add_import_model_parser(sub: Any, default: dict[str, Any]) -> None:
    """The ``import-model`` command."""
    sp = sub.add_parser("import-model", help="turn a model trained elsewhere into a checkpoint")
    sp.add_argument("--dataset", required=True)
    sp.add_argument("--data-dir", default=None,
                    help="folder with a local dataset (MNIST, CIFAR, ...)")
    sp.add_argument("--arch", required=True, help="the network: package.module:callable or"
                    " file.py:callable (called with no arguments)")
    sp.add_argument("--weights", required=True, help="safetensors, or a state dict saved with"
                    " torch.save (read with weights_only=True; never unpickled in full)")
    sp.add_argument("--name", required=True, help="the model's name in leaderboards")
    sp.add_argument("--normalize", default=None,
                    help="MEAN/STD the network expects, per channel: 0.1307/0.3081")
    sp.add_argument("--output", default="logits", choices=["logits", "probs"],
                    help="what the network returns")
    sp.add_argument("--randomized", action="store_true",
                    help="a stochastic forward (EOT, majority votes)")
    sp.add_argument("--not-differentiable", action="store_true",
                    help="keep gradient attacks off it")
    _common_args(sp, default, out_default=default["out"])
    sp.set_defaults(func=cmd_import_model)


def _add_detect_parser(sub: Any, default: dict[str, Any]) -> None:
    """The ``detect`` command."""
    sp = sub.add_parser("detect",
                        help="detect adversarial examples (protocol and metrics of Li et al. 2021)")
    _data_args(sp, default)
    sp.add_argument("--defense", required=True, help="NAME[,NAME...]")
    sp.add_argument("--detector", required=True, help="er1, er2, kd, lid (comma-separated)")
    sp.add_argument("--train-attack", required=True, help="attacks whose examples train the"
                    " detectors, one training each (comma-separated)")
    sp.add_argument("--test-attack", required=True, help="attacks evaluated on set II"
                    " (comma-separated); an attack in another norm names its own:"
                    " cw(norm=L2,eps=0.007,confidence=9)")
    sp.add_argument("--norm", default=None, help="Linf (default), L2 or L1")
    sp.add_argument("--eps", default="0.3", help="the attacks' epsilon (a bound for C&W)")
    sp.add_argument("--samples", default="500",
                    help="test points before the split (clean-correct ones are used)")
    sp.add_argument("--split", default="0.2",
                    help="share of the points in set I (detector training)")
    sp.add_argument("--split-seed", default="0")
    sp.add_argument("--l2-unit", default=None, help="l2, rms or mse: unit of L2 bounds such as"
                    " cw(eps=0.007); rms = L2 / sqrt(pixels), mse = L2^2 / pixels (the C&W bounds"
                    " of Li et al. 2021)")
    sp.add_argument("--no-adaptive", action="store_true",
                    help="skip the adaptive PGD against each detector")
    sp.add_argument("--batch-size", type=int, default=None, help="points per attack call when"
                    " crafting (default 128; not part of a result's identity)")
    _common_args(sp, default, out_default="results/detection")
    sp.set_defaults(func=cmd_detect)


def _add_analyze_parser(sub: Any, default: dict[str, Any]) -> None:
    """The ``analyze`` command."""
    sp = sub.add_parser("analyze", help="analyses: intrinsic dimension, t-SNE, loss surfaces,"
                        " sensitivity, ...")
    _data_args(sp, default)
    sp.add_argument("--defense", default=None,
                    help="NAME[,NAME...] (none for analyses of the dataset alone)")
    sp.add_argument("--analysis", required=True, help="NAME or NAME(key=value,...),"
                    " comma-separated; see `robustbench-er list analyses`")
    _common_args(sp, default, out_default="results/analyses")
    sp.set_defaults(func=cmd_analyze)


def _add_run_parser(sub: Any, default: dict[str, Any]) -> None:
    """The ``run`` command."""
    sp = sub.add_parser("run", help="run everything an experiment file names")
    sp.add_argument("experiment")
    sp.add_argument("--dry-run", action="store_true",
                    help="print the plan, what is cached and the cost; touch nothing")
    _common_args(sp, default)
    sp.set_defaults(func=cmd_run)


def _add_report_parser(sub: Any) -> None:
    """The ``report`` command."""
    sp = sub.add_parser("report", help="rewrite the reports from a results store")
    sp.add_argument("--out", default="results")
    sp.add_argument("--headline", default=None,
                    help="headline eps: 0.3 for every norm, or Linf=0.3,L2=2")
    sp.add_argument("--table-eps", default=None,
                    help="epsilons of the per-eps table (default: the last sweep's)")
    sp.add_argument("--quiet", action="store_true")
    sp.add_argument("-v", "--verbose", action="store_true")
    sp.add_argument("--plugin", action="append")
    sp.set_defaults(func=cmd_report)


def cmd_compare(args: argparse.Namespace) -> int:
    from robustbench_er.jobs.compare import run_compare

    result = run_compare(args.inputs, args.out, args.pair or (), alpha=args.alpha, by=args.by,
                         attack_pairs=args.pair_attack or ())
    if not args.quiet:
        for p in result.paths.values():
            print(p)
    if args.fail_if_worse and result.worse:
        for sentence in result.worse:
            print(f"worse: {sentence}")
        return 1
    return 0


def _add_compare_parser(sub: Any) -> None:
    """The ``compare`` command."""
    sp = sub.add_parser("compare", help="compare runs: results folders or leaderboard JSON files,"
                        " the first as the baseline")
    sp.add_argument("inputs", nargs="+", metavar="INPUT", help="a results folder (with store.sqlite), a"
                    " leaderboard.json, or a RobustBench model_info JSON file; at least two")
    sp.add_argument("--out", required=True, help="folder for compare.md, compare.csv, compare.html and the plots")
    sp.add_argument("--pair", action="append", metavar="A:NAME=B:NAME", help="match model NAME of input A"
                    " with model NAME of input B (inputs by 1-based position or path); repeatable")
    sp.add_argument("--pair-attack", action="append", metavar="A:ATTACK=B:ATTACK", help="compare attack"
                    " ATTACK of the first input with attack ATTACK of input B, and only the attacks so paired"
                    " (the same folder twice compares two attacks of one run, e.g. '1:pgd=2:pgd transferred"
                    " from none'); repeatable")
    sp.add_argument("--fail-if-worse", action="store_true", help="exit 1 when the last input is"
                    " significantly worse than the first at some matched point")
    sp.add_argument("--alpha", type=float, default=0.05, help="significance level of --fail-if-worse"
                    " (one-sided; default 0.05)")
    sp.add_argument("--by", type=float, default=0.0, metavar="POINTS", help="--fail-if-worse only where"
                    " the last input is significantly worse by more than POINTS percentage points (its"
                    " one-sided upper confidence bound below -POINTS; default 0: any significant drop)")
    sp.add_argument("--quiet", action="store_true")
    sp.add_argument("-v", "--verbose", action="store_true")
    sp.add_argument("--plugin", action="append")
    sp.set_defaults(func=cmd_compare)


def _add_quickstart_parser(sub: Any, default: dict[str, Any]) -> None:
    """The ``quickstart`` command."""
    sp = sub.add_parser("quickstart", help="the end-to-end demo on the embedded MNIST data")
    _common_args(sp, default, out_default="results/quickstart")
    sp.set_defaults(func=cmd_quickstart)


def build_parser() -> argparse.ArgumentParser:
    from robustbench_er.inputs.config import SweepSpec

    default = {k: f.default for k, f in SweepSpec.model_fields.items()}
    p = _Parser(prog="robustbench-er", description="Adversarial-robustness benchmarks for PyTorch.")
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="cmd", required=True)
    _add_list_parser(sub)
    _add_train_parser(sub, default)
    _add_sweep_parser(sub, default)
    _add_import_model_parser(sub, default)
    _add_detect_parser(sub, default)
    _add_analyze_parser(sub, default)
    _add_run_parser(sub, default)
    _add_report_parser(sub)
    _add_compare_parser(sub)
    _add_quickstart_parser(sub, default)
    return p


def _version() -> str:
    from robustbench_er.core.version import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: 2 on bad usage, 0 on --help
        return int(exc.code or 0)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        _load_plugins(getattr(args, "plugin", None), getattr(args, "quiet", False))
        return int(args.func(args))
    except UserInputError as exc:
        print(f"robustbench-er: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("robustbench-er: interrupted; rerun the same command to resume.", file=sys.stderr)
        return 130
    except Exception as exc:  # internal error
        logging.getLogger("robustbench_er").exception("internal error")
        print(f"robustbench-er: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
