"""The ``enff`` command: ``run``, ``score``, ``plot``, ``cases``, ``learn``, ``sweep`` and ``compare``.

Exit status: 0 success, 2 invalid input (case, options, files; also a run file that another run is
writing or that is inconsistent), 3 the run diverged, 4 some runs of a sweep diverged or failed, 5 the
run file could not be written (disk full, deleted or replaced), 130 / 143 the run was stopped by SIGINT /
SIGTERM. After 5, 130 and 143 the message names the file, what it holds and the ``--resume`` command.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from enff.cli_sweep import COMMANDS as SWEEP_COMMANDS
from enff.cli_sweep import add_commands as add_sweep_commands
from enff.progress import add_progress_arguments

__all__ = ["main", "build_parser"]

EXIT_INPUT, EXIT_DIVERGED = 2, 3


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one sub-parser per command."""
    parser = argparse.ArgumentParser(prog="enff", description="Ensemble data-assimilation experiments.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run (or resume) a cycling experiment from a case file")
    run.add_argument("case", nargs="?", help="case TOML file or shipped case name (optional with --resume)")
    run.add_argument("--filter", dest="filter_name", help="filter to use instead of the case's [filter]")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                     help="override a case value (TOML syntax; repeatable)")
    run.add_argument("--out", type=Path, help="output netCDF file (default out/<case>_<filter>.nc)")
    run.add_argument("--resume", action="store_true", help="continue the run stored in --out")
    run.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    run.add_argument("--burn-in", type=int, default=None,
                     help="cycles left out of the printed scores (default: the first tenth, cycles // 10)")
    add_progress_arguments(run)

    score = sub.add_parser("score", help="time-averaged scores of a run file")
    score.add_argument("file", type=Path)
    score.add_argument("--burn-in", type=int, default=None,
                       help="cycles to discard at the start (default: the first tenth, cycles // 10)")
    score.add_argument("--json", action="store_true", help="print one JSON object")

    plot = sub.add_parser("plot", help="PNG figures of a run file")
    plot.add_argument("file", type=Path)
    plot.add_argument("--outdir", type=Path, default=None, help="folder for the PNGs (default: beside the file)")
    plot.add_argument("--burn-in", type=int, default=None,
                      help="cycles shaded as burn-in (default: the first tenth, cycles // 10, as enff score)")
    plot.add_argument("--window", type=int, default=None, metavar="CYCLES",
                      help="cycles at the end of the run in the Hovmoller diagram and time series (default: the "
                           "last 300; the whole run when shorter)")

    sub.add_parser("cases", help="list the shipped cases")

    learn = sub.add_parser("learn", help="train a learned analysis (filter 'learned') from twin-experiment run files, "
                                         "or a field analysis from a case's simulated cycles (--case)")
    learn.add_argument("files", type=Path, nargs="*", help="run files with truth (any filter's runs)")
    learn.add_argument("--case", help="instead of run files: train a field analysis on cycles of this case (its "
                                      "[filter] between analyses) simulated without files, any 1-D or 2-D periodic field")
    learn.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6, 7, 8],
                       help="run seeds (truths) simulated for --case; keep others for scoring")
    learn.add_argument("--cycles", type=int, default=1000, help="cycles simulated per seed for --case")
    learn.add_argument("--out", type=Path, required=True, help="posterior file to write")
    learn.add_argument("--burn-in", type=int, default=None,
                       help="cycles left out at the start of each file or simulated run (default: the first tenth, "
                            "cycles // 10)")
    learn.add_argument("--max-epochs", type=int, default=500, help="upper bound on training epochs")
    learn.add_argument("--seed", type=int, default=0, help="seed of the weights, split and batches")
    learn.add_argument("--solver-steps", type=int, default=10,
                       help="RK4 steps of the field analysis's sampling flow, stored in the posterior (--case)")
    add_progress_arguments(learn)
    add_sweep_commands(sub)
    return parser


def _fail(message: str, status: int = EXIT_INPUT) -> int:
    print(f"enff: error: {message}", file=sys.stderr)
    return status


def _cmd_run(args: argparse.Namespace) -> int:
    from enff.casefile import CaseError, load_case, parse_case
    from enff.cycle import Divergence, RunStopped, run_case
    from enff.preflight import check_burn_in, check_output, input_files, read_run_attributes
    from enff.summary import format_table, lost_track_warning, resolve_burn_in, summarize

    if args.resume and (args.filter_name or args.overrides):
        return _fail("--resume continues the case stored in the run file as it is; --filter and --set cannot "
                     "change it (start a new run with another --out to change the case)")
    try:
        if args.case is None:
            if not (args.resume and args.out):
                return _fail("run needs a CASE (or --resume with --out FILE)")
            case = parse_case(read_run_attributes(args.out)["case"], f"{args.out} (stored case)")
        else:
            case = load_case(args.case, overrides=args.overrides, filter_name=args.filter_name)
        out = args.out
        if out is None:
            out = Path("out") / f"{Path(case.where).stem}_{case.filter.name}.nc"
        check_output(out, input_files(case), replace=args.resume or args.overwrite)
        check_burn_in(args.burn_in, case.run.cycles)
    except (CaseError, ValueError) as err:
        return _fail(str(err))
    try:
        summary = run_case(case, out, resume=args.resume, overwrite=args.overwrite,
                           progress=args.progress)
    except Divergence as err:
        print(f"enff: {err}; the {err.cycle - 1} good cycles before it are in {out}", file=sys.stderr)
        return EXIT_DIVERGED
    except RunStopped as err:
        print(f"enff: {err}", file=sys.stderr)
        return err.status
    except (FileExistsError, FileNotFoundError, ValueError) as err:
        return _fail(str(err))
    burn_in = resolve_burn_in(args.burn_in, summary.cycles_done)
    print(f"wrote {summary.path} ({summary.cycles_done} cycles); scores after a burn-in of {burn_in} cycles:")
    print(format_table(summarize(summary.path, burn_in=burn_in)))
    _warn(lost_track_warning(summary.path))
    return 0


def _warn(message: str | None) -> None:
    if message:
        print(message, file=sys.stderr)


def _cmd_score(args: argparse.Namespace) -> int:
    from enff.runfile import RunFileError, open_run
    from enff.summary import format_table, lost_track_warning, resolve_burn_in, summarize

    if not args.file.is_file():
        return _fail(f"{args.file}: no such file")
    try:
        ds = open_run(args.file)
        burn_in = resolve_burn_in(args.burn_in, ds.sizes.get("time", 0))
        result = summarize(ds, burn_in=burn_in)
    except RunFileError as err:
        return _fail(str(err))
    except (ValueError, KeyError, OSError) as err:
        return _fail(f"{args.file}: {err}")
    if args.json:
        print(json.dumps({k: (None if isinstance(v, float) and v != v else v) for k, v in result.items()}))
    else:
        print(f"{args.file}: scores after a burn-in of {burn_in} cycles:")
        print(format_table(result))
    _warn(lost_track_warning(args.file, ds))
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from enff.plots import WINDOW, plot_run
    from enff.runfile import RunFileError

    if not args.file.is_file():
        return _fail(f"{args.file}: no such file")
    try:
        paths = plot_run(args.file, args.outdir, burn_in=args.burn_in,
                         window=WINDOW if args.window is None else args.window)
    except RunFileError as err:
        return _fail(str(err))
    except (ValueError, KeyError, OSError) as err:
        return _fail(f"{args.file}: {err}")
    for path in paths:
        print(f"wrote {path}")
    return 0


def _cmd_cases(args: argparse.Namespace) -> int:
    from enff.casefile import shipped_cases

    for name, path in sorted(shipped_cases().items()):
        print(f"{name:<22} {path}")
    return 0


def _cmd_learn(args: argparse.Namespace) -> int:
    from enff.amortized import TrainingConfig
    from enff.amortized.analysis import analysis_training_set, fit_learned_analysis
    from enff.preflight import check_burn_in, check_output, existing_inputs

    if bool(args.files) == bool(args.case):
        return _fail("learn needs run files or --case CASE (one of the two)")
    if args.case:
        return _learn_field(args)
    missing = [str(f) for f in args.files if not f.is_file()]
    if missing:
        return _fail(f"no such run file: {', '.join(missing)}")
    try:
        check_output(args.out, existing_inputs(args.files, "a run file"), replace=True)
        check_burn_in(args.burn_in, None)
    except ValueError as err:
        return _fail(str(err))
    try:
        theta, context = analysis_training_set(args.files, burn_in=args.burn_in)
        training = TrainingConfig(max_epochs=args.max_epochs, progress=args.progress)
        posterior = fit_learned_analysis(theta, context, training, seed=args.seed)
    except (ValueError, KeyError, OSError) as err:
        return _fail(str(err))
    return _save_posterior(args.out, posterior, f"state of {posterior.theta_dim} values, context of "
                           f"{posterior.x_dim}, {theta.shape[0]} pairs", "CASE")


def _save_posterior(out: Path, posterior: Any, what: str, case: str) -> int:
    """Write a trained posterior to ``out`` and say what it holds, its training and how to use it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    posterior.save(out)
    losses = posterior.history.validation_loss
    print(f"wrote {out}: {what}, {len(losses)} epochs, best validation loss {min(losses):.4g}; use it with: "
          f"enff run {case} --filter learned --set filter.posterior='\"{out}\"'")
    return 0


def _learn_field(args: argparse.Namespace) -> int:
    """``enff learn --case``: a field posterior trained on the case's simulated cycles."""
    from enff.amortized import SolverConfig, TrainingConfig
    from enff.amortized.field_analysis import FieldFMPE
    from enff.amortized.field_data import simulated_training_set
    from enff.casefile import CaseError, load_case
    from enff.cycle import Divergence
    from enff.preflight import check_burn_in, check_output
    from enff.summary import resolve_burn_in

    try:
        case = load_case(args.case)
        check_output(args.out, {}, replace=True)
        check_burn_in(args.burn_in, args.cycles)
        data = simulated_training_set(case, args.seeds, args.cycles, burn_in=resolve_burn_in(args.burn_in, args.cycles))
        training = TrainingConfig(max_epochs=args.max_epochs, progress=args.progress)
        posterior = FieldFMPE(training=training, solver=SolverConfig(n_steps=args.solver_steps),
                              seed=args.seed).fit(data)
    except (CaseError, ValueError, Divergence) as err:
        return _fail(str(err))
    return _save_posterior(args.out, posterior, f"field analysis for a {posterior.layout.describe()} (any grid "
                           f"size), {data.size} analyses of seeds {args.seeds}", args.case)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``enff`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    handler = {"run": _cmd_run, "score": _cmd_score, "plot": _cmd_plot, "cases": _cmd_cases,
               "learn": _cmd_learn, **SWEEP_COMMANDS}[args.command]
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
