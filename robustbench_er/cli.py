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
from typing import Any

from robustbench_er.errors import UserInputError

QUICKSTART: dict[str, Any] = {
    "dataset": "mnist5k",
    "profile": "quick",
    "samples": 1000,
    "norm": "Linf",
    "eps": "0:0.4:0.025",
    "headline": 0.3,
    "defenses": ["none", "madry"],
    "attacks": ["pgd", {"name": "autoattack", "eps": [0.3]}],
}


def _print(msg: str = "", quiet: bool = False) -> None:
    if not quiet:
        print(msg, flush=True)


def _parse_sets(items: Sequence[str] | None) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise UserInputError(f"--set expects KEY=VALUE; got {item!r}.")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def _load_plugins(paths: Sequence[str] | None, quiet: bool) -> None:
    from robustbench_er.registry import load_plugin_file

    for p in paths or []:
        names = load_plugin_file(p)
        _print(f"loaded plugin {p}: {', '.join(names)}", quiet)


def _split(value: str | Sequence[str]) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def _attack_configs(items: Any) -> list[Any]:
    from robustbench_er.sweep import AttackConfig, parse_eps

    out = []
    for a in _split(items) if isinstance(items, str) else items:
        if isinstance(a, str):
            out.append(AttackConfig(a))
        elif isinstance(a, dict):
            if "name" not in a:
                raise UserInputError("Every attack entry needs a 'name'.")
            unknown = set(a) - {"name", "params", "eps", "samples", "label"}
            if unknown:
                raise UserInputError(f"Attack entry {a['name']!r} has unknown keys: {', '.join(sorted(unknown))}.")
            out.append(AttackConfig(a["name"], dict(a.get("params") or {}),
                                    parse_eps(str(a["eps"]) if not isinstance(a["eps"], list) else a["eps"])
                                    if a.get("eps") is not None else None,
                                    a.get("samples"), a.get("label")))
        else:
            raise UserInputError(f"Cannot read attack entry {a!r}.")
    return out


def config_from_dict(d: dict[str, Any], out: str | None, device: str, quiet: bool) -> Any:
    from robustbench_er.sweep import SweepConfig, parse_eps

    known = {"dataset", "profile", "samples", "norm", "eps", "headline", "defenses", "attacks", "seed", "out",
             "data_dir", "batch_size", "eot", "sweeps", "plugins", "name", "description", "mode", "search",
             "l2_unit"}
    unknown = set(d) - known
    if unknown:
        raise UserInputError(f"Unknown experiment keys: {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}.")
    for key in ("dataset", "defenses", "attacks", "eps"):
        if key not in d:
            raise UserInputError(f"The experiment needs a {key!r} entry.")
    defenses = d["defenses"]
    overrides: dict[str, dict[str, Any]] = {}
    names: list[str] = []
    if isinstance(defenses, dict):
        for k, v in defenses.items():
            names.append(k)
            overrides[k] = dict(v or {})
    else:
        for item in _split(defenses) if isinstance(defenses, str) else defenses:
            if isinstance(item, dict):
                for k, v in item.items():
                    names.append(k)
                    overrides[k] = dict(v or {})
            else:
                names.append(str(item))
    eps = d["eps"]
    return SweepConfig(
        dataset=str(d["dataset"]), defenses=names, attacks=_attack_configs(d["attacks"]),
        eps=parse_eps(eps if not isinstance(eps, (int, float)) else [eps]) if not isinstance(eps, str) else parse_eps(eps),
        norm=str(d.get("norm", "Linf")), samples=d.get("samples", 500), profile=str(d.get("profile", "quick")),
        seed=int(d.get("seed", 0)), out=Path(out or d.get("out") or "results"), data_dir=d.get("data_dir"),
        device=device, batch_size=int(d.get("batch_size", 128)), eot=int(d.get("eot", 10)),
        headline=float(parse_eps([d["headline"]] if not isinstance(d["headline"], str) else d["headline"])[0])
        if d.get("headline") is not None else None,
        defense_overrides=overrides, progress=not quiet, mode=str(d.get("mode", "cascade")),
        search=str(d.get("search", "bisect")), l2_unit=str(d.get("l2_unit", "l2")))


def _run_config(cfg: Any, command: str, quiet: bool) -> int:
    from robustbench_er.metrics import pretty_eps
    from robustbench_er.sweep import run_sweep

    def on_train(name: str, trained: Any) -> None:
        how = "reused" if trained.reused else f"trained in {trained.meta.get('train_seconds') or 0:.0f}s"
        _print(f"[{name}] checkpoint {trained.folder} ({how}); clean accuracy {trained.clean_acc:.4f}", quiet)

    def on_cell(s: Any) -> None:
        pts = ", ".join(f"{pretty_eps(e)}: {100 * a:.1f}" for e, a in list(s.robust.items())[:: max(1, len(s.robust) // 5)])
        _print(f"[{s.defense} / {s.attack} / {s.norm}] n={s.n} clean {100 * s.clean_acc:.1f}% | robust % at eps {pts}"
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
    from robustbench_er.registry import (
        ATTACKS,
        DEFENSES,
        list_attacks,
        list_datasets,
        list_defenses,
    )

    kinds = [args.kind] if args.kind else ["defenses", "attacks", "datasets"]
    for kind in kinds:
        names = {"defenses": list_defenses, "attacks": list_attacks, "datasets": list_datasets}[kind](args.pattern or "*")
        print(f"{kind}:")
        for n in names:
            extra = ""
            if kind == "attacks":
                a = ATTACKS.get(n)
                extra = f"  [{a.kind}, {a.access}, {'/'.join(a.norms)}]"
            elif kind == "defenses":
                dcls = DEFENSES.get(n)
                extra = f"  [presets: {', '.join(sorted(dcls.presets))}{'; randomized' if dcls.randomized else ''}]"
            doc = ""
            print(f"  {n}{extra}{doc}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from robustbench_er.data import load_dataset
    from robustbench_er.defense import get_or_train
    from robustbench_er.device import resolve_device

    data = load_dataset(args.dataset, args.data_dir, args.download)
    t = get_or_train(args.defense, data, profile=args.profile, seed=args.seed, out=Path(args.out),
                     overrides=_parse_sets(args.set), device=resolve_device(args.device), progress=not args.quiet)
    how = "reused" if t.reused else f"trained in {t.meta.get('train_seconds') or 0:.0f}s"
    print(f"{t.meta['defense']} on {t.meta['dataset']}: clean accuracy {t.clean_acc:.4f} ({how}); checkpoint {t.folder}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from robustbench_er.sweep import SweepConfig, parse_eps

    overrides = _parse_sets(args.set)
    defenses = _split(args.defense)
    checkpoints: dict[str, str] = {}
    if args.checkpoint:
        if len(defenses) != 1:
            raise UserInputError("--checkpoint needs exactly one --defense (the one the checkpoint holds).")
        checkpoints[defenses[0]] = args.checkpoint
    cfg = SweepConfig(dataset=args.dataset, defenses=defenses,
                      attacks=[parse_attack(a) for a in _split_attacks(args.attack)], eps=parse_eps(args.eps),
                      norm=args.norm, samples=args.samples, profile=args.profile, seed=args.seed,
                      out=Path(args.out), data_dir=args.data_dir, download=args.download, device=args.device,
                      batch_size=args.batch_size, eot=args.eot,
                      headline=parse_eps(args.headline)[0] if args.headline else None,
                      defense_overrides={d: overrides for d in defenses} if overrides else {},
                      checkpoints=checkpoints, progress=not args.quiet, mode=args.mode, search=args.search,
                      l2_unit=args.l2_unit)
    return _run_config(cfg, _command(), args.quiet)


def _split_attacks(text: str) -> list[str]:
    """Split ``pgd,cw(confidence=9,steps=100)`` on the commas outside parentheses."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def parse_attack(text: str) -> Any:
    """``cw(confidence=9,steps=100)`` -> AttackConfig("cw", {"confidence": 9, "steps": 100})."""
    import re

    import yaml

    from robustbench_er.sweep import AttackConfig

    m = re.fullmatch(r"\s*([\w.-]+)\s*(?:\((.*)\))?\s*", text)
    if not m:
        raise UserInputError(f"Cannot read the attack {text!r}; use NAME or NAME(key=value,...).")
    params: dict[str, Any] = {}
    for item in _split_attacks(m.group(2) or ""):
        if "=" not in item:
            raise UserInputError(f"Attack parameter {item!r} in {text!r} must be key=value.")
        k, v = item.split("=", 1)
        params[k.strip()] = yaml.safe_load(v)
    return AttackConfig(m.group(1), params, label=text.strip() if params else None)


def _command() -> str:
    return "robustbench-er " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _read_yaml(path: str) -> dict[str, Any]:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise UserInputError(f"Experiment file {path!r} does not exist.")
    try:
        d = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise UserInputError(f"Experiment file {path!r} is not valid YAML ({str(exc).splitlines()[0]}).") from exc
    if not isinstance(d, dict):
        raise UserInputError(f"Experiment file {path!r} must be a mapping of keys to values.")
    return d


def cmd_run(args: argparse.Namespace) -> int:
    d = _read_yaml(args.experiment)
    _load_plugins(d.get("plugins"), args.quiet)
    sweeps = d.pop("sweeps", None)
    configs = []
    for extra in sweeps or [{}]:
        configs.append(config_from_dict({**d, **extra}, args.out, args.device, args.quiet))
    for cfg in configs:
        _run_config(cfg, _command(), args.quiet)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from robustbench_er.report import write_reports
    from robustbench_er.store import Store

    out = Path(args.out)
    if not (out / Store.FILENAME).is_file():
        raise UserInputError(f"No results store in {str(out)!r}; run a sweep with --out {args.out} first.")
    store = Store(out)
    try:
        paths = write_reports(store, out, headline=_headline_arg(args.headline))
    finally:
        store.close()
    if not paths:
        raise UserInputError(f"The store in {str(out)!r} has no finished cells yet.")
    for p in paths.values():
        print(p)
    return 0


def _headline_arg(text: str | None) -> Any:
    """``0.3`` (every norm) or ``Linf=0.3,L2=2`` (per norm) -> what write_reports takes."""
    from robustbench_er.attack import canonical_norm
    from robustbench_er.sweep import parse_eps

    if not text:
        return None
    if "=" not in text:
        return parse_eps(text)[0]
    out = {}
    for item in text.split(","):
        k, _, v = item.partition("=")
        out[canonical_norm(k)] = parse_eps(v)[0]
    return out


def cmd_quickstart(args: argparse.Namespace) -> int:
    _print("robustbench-er quickstart: train 'none' and 'madry' (quick profile) on the embedded mnist5k data,"
           " sweep PGD-Linf from 0 to 0.4 on 1,000 test points, then AutoAttack at 0.3 on every point PGD left standing.", args.quiet)
    cfg = config_from_dict(dict(QUICKSTART), args.out, args.device, args.quiet)
    rc = _run_config(cfg, _command(), args.quiet)
    _print(f"Open {Path(args.out) / 'leaderboard.md'} and {Path(args.out) / 'curves_mnist5k_Linf.png'}.", args.quiet)
    return rc


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="robustbench-er", description="Adversarial-robustness benchmarks for PyTorch.")
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp: argparse.ArgumentParser, out_default: str = "results") -> None:
        sp.add_argument("--out", default=out_default, help="results folder (default: %(default)s)")
        sp.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
        sp.add_argument("--plugin", action="append", help="load a plugin file (repeatable)")
        sp.add_argument("--quiet", action="store_true", help="no progress bars or summaries")
        sp.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")

    sp = sub.add_parser("list", help="list registered defenses, attacks, datasets")
    sp.add_argument("kind", nargs="?", choices=["defenses", "attacks", "datasets"])
    sp.add_argument("pattern", nargs="?", default="*", help="wildcard pattern, e.g. 'er*'")
    sp.add_argument("--plugin", action="append")
    sp.add_argument("--quiet", action="store_true")
    sp.add_argument("-v", "--verbose", action="store_true")
    sp.set_defaults(func=cmd_list)

    def data_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--dataset", required=True)
        sp.add_argument("--data-dir", default=None, help="folder with a local dataset (MNIST, CIFAR, ...)")
        sp.add_argument("--download", action="store_true", help="let torchvision download a missing folder dataset")
        sp.add_argument("--profile", default="quick", choices=["quick", "paper"])
        sp.add_argument("--seed", type=int, default=0)
        sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a defense hyper-parameter")

    sp = sub.add_parser("train", help="train (or reuse) a defense checkpoint")
    data_args(sp)
    sp.add_argument("--defense", required=True)
    common(sp)
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("sweep", help="run an epsilon sweep")
    data_args(sp)
    sp.add_argument("--defense", required=True, help="NAME[,NAME...]")
    sp.add_argument("--attack", required=True, help="NAME[,NAME...]; parameters as NAME(key=value,...), e.g. 'cw(confidence=9)'")
    sp.add_argument("--checkpoint", default=None, help="evaluate this checkpoint folder (safetensors + meta.json) instead of training")
    sp.add_argument("--norm", default="Linf")
    sp.add_argument("--eps", required=True, help="START:STOP:STEP (inclusive) or a,b,c; 8/255 allowed")
    sp.add_argument("--samples", type=int, default=500)
    sp.add_argument("--batch-size", type=int, default=128, help="attack batch size (default: %(default)s)")
    sp.add_argument("--eot", type=int, default=10, help="passes for EOT and majority votes on randomized defenses")
    sp.add_argument("--mode", default="cascade", choices=["cascade", "independent"],
                    help="cascade (default): each attack only on the points earlier ones left standing; "
                         "independent: every attack on every point")
    sp.add_argument("--search", default="bisect", choices=["bisect", "ascending"],
                    help="how fixed-epsilon attacks walk the grid: per-sample bisection (default) or ascending")
    sp.add_argument("--l2-unit", default="l2", choices=["l2", "rms"],
                    help="unit of L2 epsilons: plain L2 (default) or RMS = L2 / sqrt(pixels)")
    sp.add_argument("--headline", default=None, help="headline epsilon of the leaderboard")
    common(sp)
    sp.set_defaults(func=cmd_sweep)

    sp = sub.add_parser("run", help="run everything an experiment file names")
    sp.add_argument("experiment")
    common(sp, out_default=None)  # type: ignore[arg-type]
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("report", help="rewrite the reports from a results store")
    sp.add_argument("--out", default="results")
    sp.add_argument("--headline", default=None, help="headline eps: 0.3 for every norm, or Linf=0.3,L2=2")
    sp.add_argument("--quiet", action="store_true")
    sp.add_argument("-v", "--verbose", action="store_true")
    sp.add_argument("--plugin", action="append")
    sp.set_defaults(func=cmd_report)

    sp = sub.add_parser("quickstart", help="the end-to-end demo on the embedded MNIST data")
    common(sp, out_default="results/quickstart")
    sp.set_defaults(func=cmd_quickstart)
    return p


def _version() -> str:
    from robustbench_er import __version__

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
