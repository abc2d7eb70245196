"""The ``compsearch`` command line.

Commands::

    compsearch check SPEC [--out DIR] [--strategies a,b] [--trials N] [--seeds K]
                          [--workers N] [--backend optuna|ray|nni] [--storage URL]
    compsearch run SPEC [--out DIR] [--strategies a,b] [--trials N] [--seeds K] [--quiet]
                        [--workers N] [--backend optuna|ray|nni] [--address ADDR] [--storage URL]
    compsearch gates SPEC [--out DIR] [--seeds K] [--strengths a,b] [--online] [--quiet] [--storage URL]
    compsearch report DIR [--no-test] [--storage URL]
    compsearch show DIR [--storage URL]
    compsearch merge SRC DST [--strategies a,b]
    compsearch rename RUN OLD=NEW[,OLD=NEW]
    compsearch export DIR (--trial STUDY:NUMBER | --pareto | --best CONSTRAINT) [--out DIR]
                          [--exporter dynamo|torchscript] [--batch N] [--threads N] [--no-latency] [--no-verify]
    compsearch spaces MODEL_OR_SPEC [--space NAME] [--input-shape C,H,W] [--num-classes N]
    compsearch list

Exit codes: 0 success; 2 bad input (a :class:`~compsearch.errors.CompsearchError`,
``ValueError`` or ``TypeError``: the message is printed, no traceback; for the latter two
also where they were raised, and the traceback with ``COMPSEARCH_TRACEBACK=1``); 1 internal error
(traceback printed); 130 interrupted by Ctrl-C (re-run the same command to resume).
``run`` performs every check of ``check`` before any work. Messages, run.json and logs
never show a storage password (``--storage`` or ``COMPSEARCH_STORAGE`` gives it again).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import re
import sys
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from compsearch.errors import CompsearchError, ConfigError

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


def _seeds(text: str) -> int | list[int]:
    """``"3"`` -> 3 (seeds 0..2); ``"0,7"`` -> [0, 7]."""
    try:
        parts = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds {text!r}: give a count (3) or a comma-separated list (0,7)") from None
    if not parts:
        raise argparse.ArgumentTypeError(f"--seeds {text!r} is empty")
    return parts[0] if "," not in text else parts


def _strengths(text: str) -> list[float]:
    """``"0.1,1"`` -> [0.1, 1.0]."""
    try:
        return [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--strengths {text!r}: give comma-separated numbers (0.1,0.5,2)") from None


def _names(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def _run_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("spec", help="study spec (.toml)")
    command.add_argument("--out", help="run folder (default: runs/<spec name>)")
    command.add_argument("--strategies", type=_names, help="comma-separated strategies (default: the spec's)")
    command.add_argument("--trials", type=int, help="full evaluations per strategy and seed")
    command.add_argument("--seeds", type=_seeds, help="seed count (3) or list (0,7)")
    command.add_argument("--workers", type=int, default=1, help="worker processes (or concurrent Ray/NNI trials)")
    command.add_argument("--backend", choices=("optuna", "ray", "nni"), default="optuna")
    command.add_argument("--address", help="Ray cluster address (e.g. auto)")
    command.add_argument("--storage", help="an Optuna storage outside the run folder: a database URL, sqlite:///path "
                                           "or journal:///path (default: in the run folder; env COMPSEARCH_STORAGE)")


def _export_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("dir", help="a finished run folder")
    which = command.add_mutually_exclusive_group(required=True)
    which.add_argument("--trial", metavar="STUDY:NUMBER", help="one trial, e.g. random-s0:3 (see compsearch show)")
    which.add_argument("--pareto", action="store_true", help="every feasible Pareto point of every study")
    which.add_argument("--best", metavar="CONSTRAINT", help="the feasible trial of highest validation quality within "
                       "bounds: 'size_kb<=20', 'accuracy>=0.9,size_kb<=8' or 'max_size_kb=20' (the spec's keys)")
    command.add_argument("--out", help="parent folder of the trial folders (default: DIR/export)")
    command.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo",
                         help="ONNX exporter (torchscript: faster, deprecated by torch)")
    command.add_argument("--batch", type=int, help="latency batch size besides 1 (default: the spec's [latency] batch)")
    command.add_argument("--threads", type=int, help="latency threads (default: the spec's [latency] threads)")
    command.add_argument("--no-latency", action="store_true", help="do not measure latency")
    command.add_argument("--no-verify", action="store_true", help="export even when the re-derived model's validation "
                         "quality differs from the recorded one (metrics.json says so)")
    command.add_argument("--storage", help="the storage URL when the run's needs a password (or COMPSEARCH_STORAGE)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="compsearch", description="Compare compression-policy search strategies.")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="validate a study spec and its run without running anything")
    _run_arguments(check)
    run = sub.add_parser("run", help="run (or resume) a study spec")
    _run_arguments(run)
    run.add_argument("--quiet", action="store_true", help="print nothing but errors")
    gates = sub.add_parser("gates", help="run the gates method (channel gates trained with the network, one point "
                                         "per penalty strength) into a run folder, beside the strategies")
    gates.add_argument("spec", help="study spec (.toml)")
    gates.add_argument("--out", help="run folder (default: runs/<spec name>)")
    gates.add_argument("--seeds", type=_seeds, help="seed count (3) or list (0,7)")
    gates.add_argument("--strengths", type=_strengths, help="comma-separated penalty strengths (default: the spec's [gates])")
    gates.add_argument("--online", action="store_true", default=None,
                       help="also train an agent from scratch with gates per strength (agent specs)")
    gates.add_argument("--quiet", action="store_true", help="print nothing but errors")
    gates.add_argument("--storage", help="an Optuna storage outside the run folder (as for run)")
    report = sub.add_parser("report", help="write report.html, PNGs and summaries of a run folder")
    report.add_argument("dir")
    report.add_argument("--no-test", action="store_true", help="do not evaluate Pareto points on the test split")
    report.add_argument("--storage", help="the storage URL when the run's needs a password (or COMPSEARCH_STORAGE)")
    show = sub.add_parser("show", help="print the Pareto table of a run folder")
    show.add_argument("dir")
    show.add_argument("--storage", help="the storage URL when the run's needs a password (or COMPSEARCH_STORAGE)")
    merge = sub.add_parser("merge", help="copy the studies of run folder SRC (e.g. seeds run on another machine) "
                                         "into run folder DST of the same spec and base model")
    merge.add_argument("src", help="the run folder to bring in (read only)")
    merge.add_argument("dst", help="the run folder to merge into")
    merge.add_argument("--strategies", type=_names, help="comma-separated strategies to merge (default: every study)")
    rename = sub.add_parser("rename", help="rename a strategy's studies in a run folder (e.g. after a default "
                                           "changed: hirl=hirl-full)")
    rename.add_argument("dir", help="the run folder")
    rename.add_argument("renames", help="OLD=NEW, several comma-separated (applied together)")
    export = sub.add_parser("export", help="write trials of a finished run as deployable models (pruned, packed, "
                                           "ONNX, measured)")
    _export_arguments(export)
    spaces = sub.add_parser("spaces", help="table of a model's compressible units and blocks")
    spaces.add_argument("target", help="a model name (built-in or timm) or a study spec (.toml)")
    spaces.add_argument("--space", help="space name (default: the spec's, else joint)")
    spaces.add_argument("--input-shape", help="sample shape C,H,W for a model name (default: model's own)")
    spaces.add_argument("--num-classes", type=int, default=10)
    listing = sub.add_parser("list", help="registered spaces, strategies, criteria, datasets and models")
    for command in (show, spaces, listing):
        command.add_argument("--format", choices=FORMATS, default="table",
                             help="table (full width, also in a pipe), json, or csv (one table: see the README)")
    run.add_argument("--no-test", action="store_true",
                     help="do not evaluate the final Pareto points on the test split (report does it later)")
    for name, command in sub.choices.items():
        if name in PLUGIN_COMMANDS:
            command.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                                 help="import MODULE first: it registers your models, datasets, spaces, ... "
                                      "(repeatable; see compsearch.plugins)")
    parser.add_argument("--version", action="version", version=f"compsearch {_version()}")
    return parser


#: Commands that build models, data or spaces, and so import plugins (``--plugin``, entry points).
PLUGIN_COMMANDS = ("check", "run", "gates", "report", "spaces", "list", "export")
FORMATS = ("table", "json", "csv")


def _version() -> str:
    import compsearch

    return compsearch.__version__


def _load_plugins(args: argparse.Namespace) -> None:
    """Import ``--plugin`` modules (searched on ``sys.path``, then in the spec's folder and the
    current folder) and the installed entry points before a building command."""
    if args.command in PLUGIN_COMMANDS:
        from compsearch.plugins import import_plugins, load_entry_points

        load_entry_points()
        spec = getattr(args, "spec", None) or getattr(args, "target", None)
        spec_dir = Path(spec).expanduser().parent if spec and str(spec).endswith(".toml") else None
        import_plugins(getattr(args, "plugin", []), where="--plugin", spec_dir=spec_dir)


# ---- commands -----------------------------------------------------------------------


def _checked(args: argparse.Namespace) -> tuple[Any, Path]:
    """The effective spec (command-line overrides applied) and the run folder, validated."""
    from compsearch.studies.hosts import get_host
    from compsearch.studies.runner import effective_spec
    from compsearch.studies.spec import load_spec
    from compsearch.studies.validate import check_run

    spec = load_spec(args.spec)
    out = Path(args.out) if args.out else Path("runs") / spec.name
    try:
        host = get_host(args.backend, workers=args.workers, address=args.address)
    except ConfigError as e:  # name the flag: "--workers=0 must be ..."
        raise ConfigError(re.sub(r"^(workers|address|backend)=", r"--\1=", str(e))) from None
    spec = effective_spec(spec, strategies=args.strategies, trials=args.trials, seeds=args.seeds, plugins=args.plugin)
    return check_run(spec, out, storage=args.storage, host=host), out


def cmd_check(args: argparse.Namespace, console: Console) -> int:
    spec, out = _checked(args)
    jobs = len(spec.strategies) * len(spec.seeds)
    console.print(f"{args.spec}: valid. {jobs} studies ({len(spec.strategies)} strategies x {len(spec.seeds)} seeds) "
                  f"x {spec.trials} trials -> {out}", highlight=False)
    return EXIT_OK


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    from compsearch.studies.report import summary_rows
    from compsearch.studies.runner import run_study
    from compsearch.studies.summary import summarize

    spec, out = _checked(args)
    if not args.quiet:
        console.print(f"[bold]compsearch run[/bold] {spec.name} -> {out}")
    run = run_study(spec, out, quiet=args.quiet, workers=args.workers, backend=args.backend, address=args.address,
                    storage=args.storage, test=not args.no_test)
    if not args.quiet:
        console.print(_table("Hypervolume (validation)", *summary_rows(summarize(out, storage=run.storage_url))))
        console.print(f"results in {out}; report: compsearch report {out}")
    return EXIT_OK


def cmd_gates(args: argparse.Namespace, console: Console) -> int:
    from compsearch.studies.gates import run_gates
    from compsearch.studies.spec import load_spec

    spec = load_spec(args.spec)
    out = Path(args.out) if args.out else Path("runs") / spec.name
    run_gates(spec, out, seeds=args.seeds, strengths=args.strengths, online=args.online, quiet=args.quiet,
              storage=args.storage)
    if not args.quiet:
        console.print(f"gates points in {out}; report: compsearch report {out}")
    return EXIT_OK


def cmd_report(args: argparse.Namespace, console: Console) -> int:
    from compsearch.studies.report import build_report

    summary = build_report(args.dir, test=not args.no_test, storage=args.storage)
    console.print(f"report: {summary['files']['report.html']}")
    return EXIT_OK


def cmd_show(args: argparse.Namespace, console: Console) -> int:
    from compsearch.studies.report import pareto_rows, summary_rows
    from compsearch.studies.summary import add_test_accuracy, summarize

    summary = summarize(args.dir, storage=args.storage)
    add_test_accuracy(summary, args.dir, compute=False)
    emit(console, args.format, [("hypervolume", f"{summary['name']}: hypervolume", *summary_rows(summary)),
                                ("pareto", "Pareto points (selected on validation; test split measured once at the end "
                                           "of the run)", *pareto_rows(summary, policy=False))], csv_table="pareto")
    return EXIT_OK


def cmd_rename(args: argparse.Namespace, console: Console) -> int:
    from compsearch.studies.rename import parse_renames, rename_strategies

    moved = rename_strategies(args.dir, parse_renames(args.renames))
    console.print(f"renamed {len(moved)} studies in {escape(args.dir)}" + (": " if moved else ""), highlight=False)
    for old, new in moved.items():
        console.print(f"  {escape(old)} -> {escape(new)}", highlight=False)
    return EXIT_OK


def cmd_merge(args: argparse.Namespace, console: Console) -> int:
    from compsearch.studies.merge import merge_run

    try:
        result = merge_run(args.src, args.dst, strategies=args.strategies)
    except ConfigError as e:  # name the flag: "--strategies=['x']: ..."
        raise ConfigError(re.sub(r"^strategies=", "--strategies=", str(e))) from None
    console.print(f"merged {escape(args.src)} into {escape(args.dst)}", highlight=False)
    for line in result.lines():
        console.print(f"  {escape(line)}", highlight=False)
    console.print(f"report: compsearch report {escape(args.dst)}", highlight=False)
    return EXIT_OK


def cmd_export(args: argparse.Namespace, console: Console) -> int:
    from compsearch.studies.export import export_run

    for flag in ("batch", "threads"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ConfigError(f"--{flag}={value} must be an integer >= 1")
    results = export_run(args.dir, trial=args.trial, pareto=args.pareto, best=args.best, out=args.out,
                         plugins=args.plugin, storage=args.storage, verify=not args.no_verify, exporter=args.exporter,
                         latency=not args.no_latency, batch=args.batch, threads=args.threads)
    q = results[0]["quality"] if results else "accuracy"
    rows = [[r["trial"], _num(r[f"val_{q}"]), _num(r[f"test_{q}"]), _num(r["size_kb"]), str(r["weights_bytes"]),
             f"{len(r['removed_units'])}/{len(r['masked_units'])}", _num(r.get("latency_ms")), r.get("latency_key", "-")]
            for r in results]
    console.print(_table(f"exported to {Path(args.out) if args.out else Path(args.dir) / 'export'}",
                         ["trial", f"val {q}", f"test {q}", "size_kb", "weights.pt bytes", "removed/masked units",
                          "latency ms", "runtime/batch"], rows))
    return EXIT_OK


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}"


def cmd_list(args: argparse.Namespace, console: Console) -> int:
    from compsearch.evaluators.datasets import list_datasets
    from compsearch.evaluators.masks import list_criteria
    from compsearch.evaluators.models import list_models
    from compsearch.evaluators.tasks import list_tasks
    from compsearch.metrics import metric_names
    from compsearch.plugins import loaded_plugins
    from compsearch.search.registry import list_strategies
    from compsearch.spaces import list_spaces

    plugins = loaded_plugins()
    kinds = (("spaces", list_spaces()), ("strategies", list_strategies()), ("criteria", list_criteria()),
             ("datasets", list_datasets()), ("models", [*list_models(), "(any timm model name)"]),
             ("tasks", list_tasks()), ("metrics", metric_names()),
             ("plugins", [*plugins["modules"], *(f"{k} ({v['dist']})" for k, v in plugins["entry_points"].items())]))
    if args.format == "table":
        table = Table(title="registered names", show_lines=True)
        table.add_column("kind", style="bold")
        table.add_column("names")
        for kind, names in kinds:
            table.add_row(kind, ", ".join(names) or "-")
        console.print(table)
    elif args.format == "json":
        print(json.dumps(dict(kinds), indent=2))
    else:
        emit(console, "csv", [("names", "", ["kind", "name"], [[k, n] for k, names in kinds for n in names])])
    return EXIT_OK


def cmd_spaces(args: argparse.Namespace, console: Console) -> int:
    from compsearch.spaces import check_blocks, discover, get_space, group_blocks

    model, example, space_name, space_kwargs, blocks = _model_for_spaces(args)
    found = discover(model, example, blocks=blocks)
    units = found.units
    space = get_space(space_name, units, model=model, example_input=example, **space_kwargs)
    searched = {u.name for u in space.units} if hasattr(space, "units") else {u.name for u in units}
    table = (f"units of {args.target} ({len(units)}; sample {tuple(example.shape[1:])})",
                   ["unit", "kind", "use", "block", "weight shape", "params", "MACs", "searched"],
                   [[u.name, u.kind, u.use, u.block, "x".join(map(str, u.weight_shape)), f"{u.params:,}", f"{u.macs:,}",
                     "yes" if u.name in searched else ("no (first)" if u.is_first else "no (head)" if u.is_head else "no")]
                    for u in units])
    blocks = group_blocks(units)
    checks = check_blocks(model, example, units)  # which blocks the depth space may remove, and why not
    block_table = (f"blocks ({len(blocks)})", ["block", "units", "params", "MACs", "removable"],
                   [[b, str(len(us)), f"{sum(u.params for u in us):,}", f"{sum(u.macs for u in us):,}", _removable(checks.get(b))]
                    for b, us in blocks.items()])
    emit(console, args.format, [("units", *table), ("blocks", *block_table)])  # csv: the units table
    if args.format != "table":
        return EXIT_OK
    _print_discovery(found, console)
    console.print(f"space {space_name!r}: {len(space.dimensions())} dimensions over {len(searched)} searched units")
    return EXIT_OK


def _removable(check: Any) -> str:
    """``identity``, ``shortcut <path>`` or ``no: <reason>`` for a block check of the depth space."""
    if check is None or check.block is None:
        return f"no: {check.reason}" if check is not None else "no"
    return "identity" if check.block.shortcut is None else f"shortcut {check.block.shortcut}"


def _print_discovery(found: Any, console: Console) -> None:
    """The stem and head choices with their reasons, the coverage and what stays uncompressed."""
    console.print(f"stem: {found.stem_reason}")
    console.print(f"head: {found.head_reason}")
    console.print(f"coverage: {found.coverage:.1%} of {found.total_params:,} parameters are unit weights; the rest "
                  f"(biases, norms, embeddings, ...) stays at 32 bits in size_bits")
    if found.uncovered:
        top = ", ".join(f"{n} ({c:,})" for n, c in list(found.uncovered.items())[:5])
        more = f" and {len(found.uncovered) - 5} more" if len(found.uncovered) > 5 else ""
        console.print(f"not compressed (no Conv/Linear computation uses them as a weight): {top}{more}")
    for line in found.unattributed[:5]:
        console.print(f"not compressible: {line}")


def _model_for_spaces(args: argparse.Namespace) -> tuple[Any, Any, str, dict[str, Any], dict[str, str] | None]:
    """(model, example input ``2 x sample``, space name, space kwargs, block override) for
    ``compsearch spaces``; a spec's ``[space.blocks]`` regroups the units as its runs do."""
    import torch

    if args.target.endswith(".toml") or Path(args.target).is_file():
        from compsearch.evaluators.datasets import load_dataset
        from compsearch.studies.run import build_model as _build_model
        from compsearch.studies.spec import load_spec

        spec = load_spec(args.target)
        if spec.agent is not None:
            from compsearch.studies.agent_run import check_agent

            return (*check_agent(spec), args.space or spec.space.name, spec.space.space_kwargs(), spec.space.block_override())
        data = load_dataset(spec.data.name, seed=spec.data.seed, **spec.data.options)
        return (_build_model(spec, data), data.x_train[:2], args.space or spec.space.name, spec.space.space_kwargs(),
                spec.space.block_override())
    model = _spaces_model(args)
    return model, torch.zeros(2, *_sample_shape(args, model)), args.space or "joint", {}, None


def _spaces_model(args: argparse.Namespace) -> Any:
    """The model of ``compsearch spaces NAME``; with ``--input-shape C,H,W`` a timm model that
    takes ``img_size`` (transformers with fixed position tables) is built for ``H x W``."""
    from compsearch.evaluators.models import build_model, list_models

    kwargs: dict[str, Any] = {"num_classes": args.num_classes, "in_chans": _in_chans(args)}
    shape = _parse_shape(args.input_shape) if args.input_shape else ()
    if len(shape) == 3 and args.target not in list_models():
        try:
            return build_model(args.target, img_size=shape[1] if shape[1] == shape[2] else shape[1:], **kwargs)
        except TypeError:  # a model without img_size (most CNNs): built as it is
            pass
    return build_model(args.target, **kwargs)


def _in_chans(args: argparse.Namespace) -> int:
    if args.input_shape:
        return _parse_shape(args.input_shape)[0]
    from compsearch.evaluators.models import list_models

    return 1 if args.target in list_models() else 3


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(p) for p in text.split(","))
    except ValueError:
        raise ConfigError(f"--input-shape {text!r} must be comma-separated integers, e.g. 3,32,32") from None
    if not shape or any(s < 1 for s in shape):
        raise ConfigError(f"--input-shape {text!r} must hold positive integers, e.g. 3,32,32")
    return shape


def _sample_shape(args: argparse.Namespace, model: Any) -> tuple[int, ...]:
    if args.input_shape:
        return _parse_shape(args.input_shape)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if "input_size" in cfg:
        return tuple(cfg["input_size"])
    return (1, 8, 8)


def _table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> Table:
    table = Table(title=title)
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table


COMMANDS = {"check": cmd_check, "run": cmd_run, "gates": cmd_gates, "report": cmd_report, "show": cmd_show, "list": cmd_list,
            "spaces": cmd_spaces, "export": cmd_export, "merge": cmd_merge, "rename": cmd_rename}


def _quiet_third_party() -> None:
    """Silence two import-time notices of dependencies that say nothing to a CLI user:
    linear_operator's ``torch.jit.script`` deprecation and torch's "No CUDA runtime" line
    (printed when botorch probes for a C++ extension on a CPU-only machine)."""
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


_CREDENTIAL = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]+:)[^@\s]+@")


def _redact(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@`` URL replaced by ``***``."""
    return _CREDENTIAL.sub(r"\1***@", text)


def _console() -> Console:
    """Standard output: in a pipe or file (no terminal, no ``COLUMNS``) tables keep their full
    width instead of rich's 80 columns."""
    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return Console()
    return Console(width=100_000, soft_wrap=True)


def emit(console: Console, fmt: str, tables: Sequence[tuple[str, str, Sequence[str], Sequence[Sequence[str]]]],
         csv_table: str | None = None) -> None:
    """Print ``tables`` (``(key, title, header, rows)``): as rich tables, as one JSON object
    ``{key: [{column: value}, ...]}``, or the table ``csv_table`` (default: the first) as CSV."""
    if fmt == "table":
        for _, title, header, rows in tables:
            console.print(_table(title, header, rows))
    elif fmt == "json":
        data = {key: [dict(zip(header, row, strict=True)) for row in rows] for key, _, header, rows in tables}
        print(json.dumps(data, indent=2))
    else:
        chosen = next((t for t in tables if t[0] == csv_table), tables[0])
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(chosen[2])
        writer.writerows(chosen[3])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``compsearch`` script; returns the exit code."""
    args = build_parser().parse_args(argv)
    _quiet_third_party()
    console, errors = _console(), Console(stderr=True)
    try:
        _load_plugins(args)
        return COMMANDS[args.command](args, console)
    except KeyboardInterrupt:
        errors.print("interrupted; the trial in flight is recorded as failed. Re-run the same command to resume.")
        return EXIT_INTERRUPTED
    except (CompsearchError, ValueError, TypeError) as e:
        errors.print(f"[red]error:[/red] {escape(_redact(str(e)))}", highlight=False)
        if not isinstance(e, CompsearchError):  # may come from a dependency: say where
            where = traceback.extract_tb(e.__traceback__)[-1]
            errors.print(f"(raised at {where.filename}:{where.lineno}; set COMPSEARCH_TRACEBACK=1 for the traceback)",
                         highlight=False, markup=False)
            if os.environ.get("COMPSEARCH_TRACEBACK"):
                print(_redact(traceback.format_exc()), file=sys.stderr, end="")
        return EXIT_BAD_INPUT
    except Exception:
        errors.print("[red]internal error[/red] (please report it):", markup=True)
        print(_redact(traceback.format_exc()), file=sys.stderr, end="")
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
