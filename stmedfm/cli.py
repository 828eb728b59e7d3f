"""``stmedfm``: the command line of the study.

Commands: ``data`` (registry and local status), ``download`` (official files, MD5-checked), ``params``
(Table 4), ``synthetic`` (test files of official shapes), ``config`` (a parameter file as the study reads it; ``--get
study`` is how the Makefile learns a study's name), ``study`` (run or resume a parameter file, locally or on a Dask
cluster), ``bench`` (our pipeline vs a MedMNIST-style one), ``tables`` (paper tables from a result store),
``figures`` (paper figures), ``export`` (a trained model as a folder to share), ``variants`` (variant studies;
``beyond``, its former name, still works), ``report`` (the paper's claims tested over seeds, and the generated
blocks of markdown files), ``seal`` (record or check the sha256 of every table of a store, ``digests.json``), ``fair``
(the claims per budget, at equal in-task steps and on held-out tasks, with TOST; issue 28).
``stmedfm`` alone prints this
help, ``--version`` the version; ``python -m stmedfm`` is the same program. Errors a user can act on are printed as one paragraph without a
traceback, with exit status 2.

Each command imports what it runs inside its ``cmd_*`` function, the one place in the package that does so on
purpose: ``stmedfm config PARAMS --get study``, which the Makefile calls before every study, and ``stmedfm --help``
then start in a fraction of a second instead of loading torch and matplotlib first.
"""

from __future__ import annotations

import argparse
import errno
import signal
import sys
import threading
import warnings

import pandas as pd

from stmedfm import __version__
from stmedfm.core.errors import StmedfmError


def _frame_out(frame: pd.DataFrame, fmt: str) -> str:
    from stmedfm.analysis.tables import markdown

    if fmt == "csv":
        return frame.to_csv(index=False)
    if fmt == "markdown":
        return markdown(frame)
    return frame.to_string(index=False)


def cmd_data(args) -> None:
    from stmedfm import data
    from stmedfm.core import paths

    frame = data.status_table(data_dir=args.data_dir, size=args.size)
    if args.format == "table":
        print(f"data directories searched, in order: {', '.join(map(str, paths.data_dirs(args.data_dir)))}")
    print(_frame_out(frame, args.format), end="" if args.format != "table" else "\n")


def cmd_download(args) -> None:
    from stmedfm.data import download

    for flag in args.flags:
        path = download.download(flag, size=args.size, data_dir=args.data_dir, mirror=args.mirror,
                                 retries=args.retries, deadline=args.timeout)
        print(f"{flag}: verified {path}")


def cmd_params(args) -> None:
    from stmedfm.core.config import PAPER_TASKS
    from stmedfm.model.peft import parameter_table

    tasks = args.tasks.split(",") if args.tasks else list(PAPER_TASKS)
    from stmedfm.core import strategies

    chosen = args.strategies.split(",") if args.strategies else list(strategies.names())
    frame = parameter_table(tasks=tasks, strategies=chosen, width=args.width)
    print(_frame_out(frame, args.format), end="" if args.format != "table" else "\n")


def cmd_synthetic(args) -> None:
    from stmedfm.data.synthetic import write_synthetic

    written = write_synthetic(args.directory, args.flags, n=args.n, size=args.size, seed=args.seed, scale=args.scale)
    for flag, path in written.items():
        print(f"{flag}: {path} (synthetic: for tests only, never for results)")


def _config(args):
    from stmedfm.core.config import StudyConfig, parse_overrides

    overrides = parse_overrides(args.param)
    if args.seeds is not None:
        overrides["seeds"] = args.seeds
    if args.workers is not None:
        overrides["workers"] = args.workers
    if getattr(args, "scheduler", None) is not None:
        overrides["scheduler"] = args.scheduler
    if args.data_dir is not None:
        overrides["data_dir"] = args.data_dir
    return StudyConfig.load(args.params, overrides)


def cmd_config(args) -> None:
    from stmedfm.core.config import StudyConfig, is_variant_file, parse_overrides, read_params_file

    if args.params is not None and is_variant_file(read_params_file(args.params)):
        from stmedfm.analysis import variants

        overrides = {k: v for k, v in parse_overrides(args.param).items() if k != "study"}
        study = variants.load(args.params, overrides)
        if args.get not in (None, "study"):
            raise StmedfmError(f"{args.params} is a variant-study file: only --get study applies to it.")
        print(study.name if args.get else "\n".join([f"study: {study.name}", "variants:",
                                                      *(f"  - {v}" for v in study.configs)]))
        return
    cfg = StudyConfig.load(args.params, parse_overrides(args.param))
    if args.get is None:
        print(cfg.to_yaml(), end="")
        return
    if args.get not in StudyConfig.keys():
        from stmedfm.core import registry

        raise StmedfmError(f"Unknown parameter '{args.get}'.{registry.closest(args.get, StudyConfig.keys())}")
    value = getattr(cfg, args.get)
    print(value if isinstance(value, (str, int, float)) else yaml_dump(value))


def yaml_dump(value) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip()


def cmd_study(args) -> None:
    from stmedfm.core.scheduler import check_scheduler, resolve_scheduler

    cfg = _config(args)
    if isinstance(resolve_scheduler(cfg.scheduler), str):  # a bad address: one line, before torch is even loaded
        check_scheduler(resolve_scheduler(cfg.scheduler))

    from stmedfm.run import launch

    store = launch.run(cfg, args.params, out=args.out, reuse=args.reuse or (), progress=not args.quiet)
    print(f"study '{cfg.study}': results in {store.root}")


def cmd_bench(args) -> None:
    from stmedfm.run.bench import SIZES, run_bench, run_precision_bench, run_profile, run_scaling_bench, run_size_bench

    if args.methods:
        from stmedfm.run.bench_methods import run_methods_bench

        run_methods_bench(args.methods, task=args.task, rounds=args.rounds, out=args.out, data_dir=args.data_dir)
        return
    if args.project:
        from stmedfm.run import scaling

        table = scaling.projection(args.project, pretrain_seconds=args.pretrain_seconds)
        print(_frame_out(table.round(3), "markdown"), end="")
        print(f"stops scaling past {scaling.saturation(args.project, pretrain_seconds=args.pretrain_seconds)} workers "
              f"(within 5 % of its critical path, {table['critical_path_s'].iloc[0]:.1f} s)")
        return
    if args.scaling:
        from stmedfm.analysis import variants
        from stmedfm.core import paths

        over = {"workers": 2, **({"data_dir": args.data_dir} if args.data_dir else {})}
        vstudy = variants.load(str(paths.params_dir() / "beyond_smoke.yaml"), over)
        run_scaling_bench(vstudy, args.scaling_params, data_dir=args.data_dir, rounds=args.rounds, out=args.out)
        return
    if args.precision or args.sizes:
        if args.precision:
            run_precision_bench(quick=args.quick, out=args.out, workers=args.workers, synthetic_dir=args.synthetic_dir,
                                rounds=args.rounds, parity=tuple(args.parity) if args.parity else None)
        if args.sizes:
            sizes = SIZES if args.sizes == "all" else tuple(int(v) for v in args.sizes.split(","))
            run_size_bench(sizes, scale=args.scale, out=args.out, workers=args.workers or 2,
                           synthetic_dir=args.synthetic_dir)
        return
    if args.profile:
        run_profile(quick=args.quick, out=args.out, top=args.top, synthetic_dir=args.synthetic_dir)
        return
    run_bench(quick=args.quick, out=args.out, workers=args.workers, synthetic_dir=args.synthetic_dir,
              real_data_dir=args.data_dir)


def cmd_variants(args) -> None:
    from stmedfm.analysis import variants
    from stmedfm.core.config import parse_overrides

    overrides = parse_overrides(args.param)
    if args.data_dir is not None:
        overrides["data_dir"] = args.data_dir
    study = variants.load(args.params, overrides, out=args.out)
    if args.reanalyse:
        tables = variants.reanalyse(study)
    else:
        from stmedfm.run import runvariants  # the running half imports torch; --reanalyse reads only

        tables = runvariants.run(study, workers=args.workers, progress=not args.quiet)
    variants.write_figures(study, tables)
    for line in variants.findings(study, tables):
        print(f"- {line}")
    print(f"variant study '{study.name}': tables in {study.root}, figures in {study.figures_dir}")


def cmd_tables(args) -> None:
    from stmedfm.analysis.tables import write_tables

    written = write_tables(args.results)
    for path in written:
        print(path)


def cmd_report(args) -> None:
    from stmedfm.analysis import findings

    from pathlib import Path

    missing = [p for p in args.markdown or [] if not Path(p).is_file()]
    if missing:
        raise StmedfmError(f"--markdown names {', '.join(map(repr, missing))}, which is not a file (run from the "
                           f"project root, e.g. --markdown README.md).")
    out = findings.write_findings(args.results)
    print(f"{args.results}: claims.csv ({len(out['claims'])} claim x metric rows), paper_single_run.csv "
          f"({len(out['paper_single_run'])} paper cells)")
    for path in args.markdown or []:
        text = Path(path).read_text()
        new = findings.update_markdown(text)
        if new != text:
            from stmedfm.core.io import atomic_write_text

            atomic_write_text(path, new)
        print(f"{path}: generated blocks {'rewritten' if new != text else 'already up to date'}")


def cmd_seal(args) -> None:
    from stmedfm.core import seal

    failed = False
    for folder in args.folders:
        if args.check:
            found = seal.problems(folder)
            failed |= bool(found)
            print("\n".join(found) if found else f"{folder}: every table matches its digest")
        else:
            print(f"{folder}: sealed {len(seal.seal(folder))} files into {seal.DIGESTS}")
    if failed:
        raise StmedfmError("some tables do not match their digests (listed above); restore them or rebuild them.")


def cmd_export(args) -> None:
    from stmedfm.run.export import export

    out = export(args.results, args.out, task=args.task, strategy=args.strategy, seed=args.seed,
                 pretrained=args.pretrained)
    print(f"exported to {out}: load it with stmedfm.run.inference.load_model({str(out)!r})")


def cmd_figures(args) -> None:
    from stmedfm.analysis.plots import write_result_figures

    try:  # Figure 1 is drawn from the model, so it needs torch; every other figure reads the store only
        from stmedfm.analysis.plots.architecture import write_figure1
    except ModuleNotFoundError as exc:
        if exc.name != "torch":
            raise
        print("Figure 1 (drawn from the model) needs torch, which is not installed: skipped.", file=sys.stderr)
        written = []
    else:
        written = write_figure1(args.results, args.out)
    for path in [*written, *write_result_figures(args.results, args.out)]:
        print(path)


def cmd_fair(args) -> None:
    from stmedfm.analysis import fair

    for path in [*fair.write_tables(args.results), *fair.write_figures(args.results, args.out)]:
        print(path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stmedfm", description="stmedfm: the command line of the STMedFM study "
                                     "(`stmedfm COMMAND --help` for each command).")
    parser.add_argument("--version", action="version", version=f"stmedfm {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _data_commands(sub)
    _run_commands(sub)
    _result_commands(sub)
    return parser


DATA_DIR_HELP = ("the folder holding {flag}.npz, the only place looked (without it: $STMEDFM_DATA, then "
                 "~/.medmnist)")
SIZE_HELP = "image size in pixels: 28 (MedMNIST) or a MedMNIST+ size (64, 128, 224; 3D: 64) (default 28)"
FORMAT_HELP = "output format (default: table)"


def _data_commands(sub) -> None:
    """data, download, params, synthetic: the files and the model, before any study."""
    p = sub.add_parser("data", help="list MedMNIST flags with their local status (missing / verified / bad checksum)")
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.add_argument("--size", type=int, default=28, help=SIZE_HELP)
    p.add_argument("--format", choices=["table", "csv", "markdown"], default="table", help=FORMAT_HELP)
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("download", help="download official MedMNIST files (MD5-verified, atomic)")
    p.add_argument("flags", nargs="+", help="MedMNIST flags, e.g. bloodmnist organamnist")
    p.add_argument("--size", type=int, default=28, help=SIZE_HELP)
    p.add_argument("--data-dir", help="target directory (default: $STMEDFM_DATA, else ~/.medmnist)")
    p.add_argument("--mirror", help="base URL of an institutional mirror (default: $STMEDFM_MIRROR, else Zenodo)")
    p.add_argument("--retries", type=int, default=3, help="further attempts after a failed one (default 3)")
    p.add_argument("--timeout", type=float, default=3600.0, metavar="SECONDS",
                   help="overall time limit per file, retries included (default 3600)")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("params", help="Table 4: total and trainable parameters per task and strategy")
    p.add_argument("--tasks", help="comma-separated flags (default: the paper's four)")
    p.add_argument("--strategies", help="comma-separated strategies (default: every registered one)")
    p.add_argument("--width", type=int, default=64, help="encoder width (default: the paper's 64)")
    p.add_argument("--format", choices=["table", "csv", "markdown"], default="table", help=FORMAT_HELP)
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("synthetic", help="write synthetic files of official shapes (tests only, never results)")
    p.add_argument("directory", help="where to write the files (and their MANIFEST.json)")
    p.add_argument("flags", nargs="+", help="MedMNIST flags to imitate")
    p.add_argument("--n", type=int, default=None, help="samples per split")
    p.add_argument("--scale", type=float, default=None, help="fraction of the official split sizes")
    p.add_argument("--size", type=int, default=28, help=SIZE_HELP)
    p.add_argument("--seed", type=int, default=0, help="random seed of the pixels and labels (default 0)")
    p.set_defaults(func=cmd_synthetic)


def _run_commands(sub) -> None:
    """config, study, bench, variants: what runs."""
    p = sub.add_parser("config", help="print a parameter file as the study reads it (validated, with overrides)")
    p.add_argument("params", nargs="?", help="YAML parameter file (default: the paper's protocol)")
    p.add_argument("-p", "--param", action="append", metavar="KEY=VALUE", help="override a parameter (repeatable)")
    p.add_argument("--get", metavar="KEY", help="print only this parameter, e.g. --get study (the study's name)")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("study", help="run or resume a study from a parameter file")
    p.add_argument("params", nargs="?", help="YAML parameter file (default: the paper's protocol)")
    p.add_argument("--out", help="result directory (default: results/<study>, <study> = the file's 'study:' key)")
    p.add_argument("--seeds", help="a count (5) or a list (0,1,2)")
    p.add_argument("--workers", type=int, help="worker processes, one torch thread each (default: CPU cores)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="run on a Dask cluster, e.g. tcp://10.0.0.5:8786 (default: the file's scheduler: key, else "
                        "$DASK_SCHEDULER_ADDRESS, else a local process pool; 'local' forces the pool); needs "
                        "stmedfm[dask]; docs/cluster.md")
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.add_argument("-p", "--param", action="append", metavar="KEY=VALUE", help="override a parameter (repeatable)")
    p.add_argument("--reuse", action="append", metavar="STORE",
                   help="take runs and checkpoints of the same id from this result store instead of computing them "
                        "(repeatable), e.g. --reuse results/mystudy (a store with its runs/ and checkpoints/: the "
                        "committed results/ keep tables only)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no line per run")
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("bench", help="our pipeline vs a MedMNIST-style one: throughput, protocol wall time, memory")
    p.add_argument("--quick", action="store_true", help="tiny files and budgets, well under a minute (CI)")
    p.add_argument("--out", help="CSV to write (default: results/bench.csv, or results/profile.csv)")
    p.add_argument("--profile", action="store_true",
                   help="instead: where the time goes (torch.profiler over paper.yaml, 1 seed, one process)")
    p.add_argument("--top", type=int, default=15, help="operators listed by --profile (default 15)")
    p.add_argument("--workers", type=int, help="worker processes of our study runs (default: CPU cores)")
    p.add_argument("--synthetic-dir", help="where official-size synthetic files are kept (default: the cache)")
    p.add_argument("--data-dir", help="the real files for params/offline.yaml (default: $STMEDFM_DATA, ...)")
    p.add_argument("--precision", action="store_true",
                   help="instead: fp32 vs bf16 side by side (throughput, paper.yaml 1 seed), merged into the CSV")
    p.add_argument("--rounds", type=int, default=2,
                   help="interleaved rounds of --precision (fp32/bf16) and --scaling (1/2 workers) (default 2)")
    p.add_argument("--parity", nargs=2, metavar=("FP32_DIR", "BF16_DIR"),
                   help="with --precision: summarise the paired parity of two study stores (fp32, bf16)")
    p.add_argument("--sizes", nargs="?", const="all", metavar="28,64,128,224",
                   help="instead: peak RSS and seconds per run of a reduced study at each image size, merged in")
    p.add_argument("--scaling", action="store_true",
                   help="instead: wall time of a study (params/smoke.yaml, 2 seeds) on 1 and 2 Dask workers, "
                        "interleaved (--rounds), and its projection to more workers (stmedfm.run.scaling)")
    p.add_argument("--scaling-params", metavar="PARAMS", help="--scaling: the study to time (default params/smoke.yaml)")
    p.add_argument("--project", metavar="STORE",
                   help="instead: the projected wall time of a finished study vs workers, from its runs' seconds")
    p.add_argument("--pretrain-seconds", type=float, metavar="S",
                   help="--project: seconds per pretraining job whose checkpoint does not record them")
    p.add_argument("--scale", type=float, default=1.0,
                   help="--sizes: fraction of the official split sizes (1.0: full files, ~16 GB at 224 px)")
    p.add_argument("--methods", metavar="PARAMS",
                   help="instead: seconds and peak memory of one training run of each strategy of PARAMS, each in "
                        "its own process (stmedfm.run.bench_methods; default --out results/<study>/bench_methods.csv)")
    p.add_argument("--task", help="--methods: the task trained (default: the file's first few-shot task)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("variants", aliases=["beyond"],
                       help="run or resume a variant study (variants of a study; params/beyond.yaml)")
    p.add_argument("params", help="variant-study parameter file, e.g. params/beyond.yaml")
    p.add_argument("--out", help="result directory (default: results/<study>)")
    p.add_argument("--workers", type=int, help="worker processes, one torch thread each (default: CPU cores)")
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.add_argument("-p", "--param", action="append", metavar="KEY=VALUE",
                   help="override a StudyConfig field in every variant (repeatable)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no line per run")
    p.add_argument("--reanalyse", action="store_true",
                   help="recompute comparisons, tables and figures from the study's metrics.csv (no run computed)")
    p.set_defaults(func=cmd_variants)


def _result_commands(sub) -> None:
    """tables, report, figures: what is read from a result store."""
    p = sub.add_parser("tables", help="write the paper's tables (CSV + markdown) from a result store")
    p.add_argument("results", help="result directory, e.g. results/offline")
    p.set_defaults(func=cmd_tables)

    p = sub.add_parser("report", help="test the paper's claims paired over seeds (claims.csv, paper_single_run.csv) "
                                      "and rewrite the generated blocks of markdown files")
    p.add_argument("results", help="result directory, e.g. results/offline")
    p.add_argument("--markdown", action="append", metavar="FILE",
                   help="a markdown file whose generated <!-- stmedfm:KIND ... --> blocks (reference, variants, flips, "
                        "methods) to regenerate from the committed tables (repeatable)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("seal", help="record (or --check) the sha256 of every table of a result store in digests.json")
    p.add_argument("folders", nargs="+", help="result stores or variant-study folders, e.g. results/offline")
    p.add_argument("--check", action="store_true", help="only verify: list every table that differs from its digest")
    p.set_defaults(func=cmd_seal)

    p = sub.add_parser("figures", help="draw the paper's figures (PNG + SVG) from a result store")
    p.add_argument("results", help="result directory, e.g. results/offline")
    p.add_argument("--out", help="figure directory (default: figures/<study>)")
    p.set_defaults(func=cmd_figures)

    p = sub.add_parser("export", help="write one trained model of a result store as a folder to share "
                                      "(model.safetensors, config.json, model card README.md; docs/models.md)")
    p.add_argument("results", help="result directory with its runs and checkpoints, e.g. results/mystudy")
    p.add_argument("out", help="folder to write, e.g. models/stmedfm-offline-bloodmnist-adapter-seed0")
    p.add_argument("--task", help="the downstream task (default: the study's first)")
    p.add_argument("--strategy", help="the adaptation strategy (default: the study's first)")
    p.add_argument("--seed", type=int, help="the seed (default: the study's first)")
    p.add_argument("--pretrained", action="store_true",
                   help="instead: the multi-task pretrained backbone of --seed, with every pretraining head")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("fair", help="the claims at every step budget, at equal in-task steps and on held-out tasks, "
                                    "with TOST (fair_budget.csv, fair_contrasts.csv) and their figures")
    p.add_argument("results", help="result directory, e.g. results/fair")
    p.add_argument("--out", help="figure directory (default: figures/<study>)")
    p.set_defaults(func=cmd_fair)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM stops a study as Ctrl-C does: workers killed, finished runs kept


def _warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"stmedfm: warning: {message}", file=sys.stderr)


def _os_error(exc: OSError) -> str:
    """One line for an operating-system error. Writes are atomic (:mod:`stmedfm.core.io`), so a failed write changed
    nothing: the line says so, and that the same command resumes."""
    from stmedfm.core.io import WriteFailed

    what = exc.strerror or type(exc).__name__
    if isinstance(exc, WriteFailed) or exc.errno in (errno.EFBIG, errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        return (f"cannot write '{exc.filename}' ({what}); nothing was half-written, the store is intact, and the same "
                f"command resumes once the file can be written (free space, raise `ulimit -f`, or pass a writable "
                f"--out).")
    return f"{what}: '{exc.filename}'" if exc.filename else f"{type(exc).__name__}: {exc}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # a bare `stmedfm`: what it can do, not a usage error
        parser.print_help()
        return 0
    previous = signal.signal(signal.SIGTERM, _interrupt) if threading.current_thread() is threading.main_thread() \
        else None
    shown, warnings.showwarning = warnings.showwarning, _warning
    try:
        for option in ("out", "data_dir"):  # '' would silently mean the default folder
            if getattr(args, option, None) is not None and not str(getattr(args, option)).strip():
                raise StmedfmError(f"--{option.replace('_', '-')} needs a folder, got an empty path.")
        if getattr(args, "seeds", None) is not None:
            from stmedfm.core.config import parse_overrides

            args.seeds = parse_overrides([f"seeds={args.seeds if ',' not in args.seeds else f'[{args.seeds}]'}"])["seeds"]
        args.func(args)
    except StmedfmError as exc:
        print(f"stmedfm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stmedfm: interrupted; rerun the same command to resume.", file=sys.stderr)
        return 130
    except OSError as exc:  # at the boundary: a disk full, a file too large, a folder not writable
        print(f"stmedfm: error: {_os_error(exc)}", file=sys.stderr)
        return 2
    finally:
        warnings.showwarning = shown
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
