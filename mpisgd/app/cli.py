"""The ``mpisgd`` command line: ``train`` (under mpiexec), ``report`` and ``topology``.

Errors in the configuration exit with status 2 on every rank and print one
line, ``mpisgd: error: <message>``, once: rank 0 prints an error every rank
raised alike (:attr:`~mpisgd.errors.ConfigError.echo`), naming the rank where
it was another rank's. An exception during training prints the failing
rank's traceback, notes its reason beside the run record
(:func:`~mpisgd.app.sidecars.note_failure`) and aborts the whole MPI job.
"""
from __future__ import annotations

import argparse
import os
import dataclasses
import sys
import warnings

from ..errors import ConfigError, message


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        err = ConfigError(f"{message} (see {self.prog} --help)")
        err.echo = _launched_rank() not in (None, 0)   # every rank parses the same command line
        raise err


def _launched_rank() -> int | None:
    """This process's rank as the launcher says (MPI is not started yet), or ``None``: under
    a launcher every rank parses the same command line, and rank 0 prints its mistakes."""
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID"):
        value = os.environ.get(var, "").strip()
        if value.isdigit():
            return int(value)
    return None


def _train_parser(sub) -> None:
    from .. import algorithms
    from .config import TrainConfig
    p = sub.add_parser("train", help="train under mpiexec (every rank runs it)",
                       description="Train one replica per MPI rank: "
                                   "mpiexec -n 4 python -m mpisgd train --algo local --tau 8")
    p.add_argument("--config", help="YAML file with the same keys as the flags")
    kinds = {"steps": int, "epochs": float, "momentum": float, "log_every": int,
             "eval_samples": int, "threads": int,
             "out": str, "tensorboard": str, "checkpoint_every": int, "checkpoint_dir": str, "resume": str}
    for f in dataclasses.fields(TrainConfig):
        if f.name == "options":
            continue
        flag = "--" + f.name.replace("_", "-")
        help_ = TrainConfig.HELP[f.name] + ("" if f.default is None else f" (default {f.default})")
        if f.type == "bool":
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_)
        else:
            kind = kinds.get(f.name) or type(f.default)
            p.add_argument(flag, type=kind, default=None, help=help_,
                           metavar=f.name.upper())
    group = p.add_argument_group("algorithm options (each applies to the algorithms named)")
    for opt in algorithms.all_options().values():
        group.add_argument(opt.flag, dest=opt.name, default=None, metavar=opt.name.upper(),
                           help=algorithms.option_help(opt.name).replace("%", "%%"))
    group.add_argument("--groups", dest="group_size", choices=["node"], default=None,
                       help="--groups node: one group per node (as --group-size node)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=_train)


def _report_parser(sub) -> None:
    p = sub.add_parser("report", help="curves and a table from HDF5 run records, over seeds",
                       description="python -m mpisgd report RUN.h5|DIR [...] --out FIG.png: "
                                   "runs that differ only in the seed are one curve, their "
                                   "mean with a band (docs/user-guide.md)")
    p.add_argument("records", nargs="+", metavar="RUN.h5|DIR",
                   help="run records, or folders (a study's DIR) searched for *.h5")
    p.add_argument("--out", help="PNG (or PDF, SVG) figure to write")
    p.add_argument("--target", type=float, default=0.1,
                   help="test error whose first crossing the table reports, drawn as a "
                        "dashed line (default 0.1)")
    p.add_argument("--panels", default="train_loss,test_error",
                   help="figure rows: train_loss, test_loss, test_error, consensus_distance, "
                        "perplexity (language models) (comma-separated; default "
                        "train_loss,test_error)")
    p.add_argument("--x", default="time,steps,bytes",
                   help="figure columns: time, steps, bytes (default all three)")
    p.add_argument("--band", choices=("minmax", "std", "none"), default="minmax",
                   help="the band around a group's mean: lowest to highest run (default), "
                        "+- one standard deviation, or none")
    p.set_defaults(func=_report)


def _sweep_parser(sub) -> None:
    from .sweep import SCHEDULERS
    p = sub.add_parser("sweep", help="a grid of configurations as job arrays (or run here)",
                       description="mpisgd sweep GRID.yaml --out DIR --scheduler slurm: one array "
                                   "task per configuration; again to skip what completed and "
                                   "resume what was interrupted (docs/studies.md)")
    p.add_argument("grid", metavar="GRID.yaml")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="the study's folder: manifest, configs, runs/, checkpoints/, logs/, jobs/")
    p.add_argument("--scheduler", choices=SCHEDULERS, default="slurm",
                   help="slurm, pbs or lsf (a job array per rank count and time limit), or "
                        "local (one after another here, with this MPI's mpiexec; default slurm)")
    p.add_argument("--parallel", type=int, metavar="N",
                   help="at most N array tasks at once (Slurm %%N, LSF %%N)")
    p.add_argument("--submit-arg", action="append", default=[], metavar="ARG",
                   help="an argument for sbatch/qsub/bsub, e.g. --submit-arg=--partition=gpu "
                        "(repeatable)")
    p.add_argument("--dry-run", action="store_true",
                   help="write the manifest and the array scripts, submit nothing")
    p.set_defaults(func=_sweep)


def _study_parser(sub) -> None:
    p = sub.add_parser("study", help="a grid of configurations one after another in this launch",
                       description="mpiexec -n 4 python -m mpisgd study GRID.yaml --out DIR: "
                                   "each configuration on the first RANKS ranks, with its own "
                                   "record; pays the start-up once (docs/studies.md)")
    p.add_argument("grid", metavar="GRID.yaml")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="the study's folder (the same layout as mpisgd sweep)")
    p.add_argument("--quiet", action="store_true", help="no line per configuration")
    p.set_defaults(func=_study)


def _calibrate_parser(sub) -> None:
    p = sub.add_parser("calibrate", help="this allocation's latency and bandwidth (alpha-beta)",
                       description="mpiexec -n 4 python -m mpisgd calibrate --out network.json: "
                                   "ping-pong and Allreduce over message sizes, fitted "
                                   "(docs/scaling.md)")
    p.add_argument("--out", metavar="FILE", help="write the fit (JSON) for mpisgd project")
    p.add_argument("--sizes", help="message sizes in bytes, comma-separated "
                                   "(default 8,64,...,16777216)")
    p.set_defaults(func=_calibrate)


def _project_parser(sub) -> None:
    p = sub.add_parser("project", help="projected step time at larger worker counts",
                       description="mpisgd project RUN.h5|DIR ... --workers 64,256,1024 "
                                   "--network network.json (docs/scaling.md)")
    p.add_argument("records", nargs="+", metavar="RUN.h5|DIR")
    p.add_argument("--workers", required=True, metavar="P,P,...",
                   help="worker counts to project to, comma-separated")
    p.add_argument("--network", required=True, metavar="FILE|ALPHA,BETA",
                   help="mpisgd calibrate's file, or latency (s) and inverse bandwidth (s/B)")
    p.add_argument("--out", metavar="FIG", help="plot the projection (PNG, PDF, SVG)")
    p.add_argument("--group-size", type=int, metavar="G",
                   help="project workers that are groups of G ranks (--workers counts groups; "
                        "default: the records' own)")
    p.add_argument("--ranks-per-node", type=int, metavar="R",
                   help="ranks sharing a node's link at the projected scale (default: the "
                        "records' own)")
    p.set_defaults(func=_project)


def _cluster_parser(sub) -> None:
    p = sub.add_parser("cluster", help="a job on emulated nodes with shaped NICs (root)",
                       description="mpisgd cluster --nodes 4 --ranks-per-node 2 --nic 1gbit -- "
                                   "python -m mpisgd train ...; mpisgd cluster up|down|list "
                                   "(docs/cluster.md)")
    p.add_argument("--name", help="the cluster's name (default c<pid>); up, down and runs on a "
                                  "cluster kept up need one")
    p.add_argument("--nodes", type=int, default=2, help="emulated nodes (default 2)")
    p.add_argument("--ranks-per-node", type=int, default=1, help="ranks on each node (default 1)")
    p.add_argument("--nic", default="1gbit",
                   help="each node's NIC rate, each direction: 1gbit, 10gbit, 100mbit, none "
                        "(default 1gbit)")
    p.add_argument("--latency", help="one-way latency between nodes (50us, 1ms): needs the "
                                     "kernel's netem")
    p.add_argument("--mpiexec", help="the launcher (default the mpiexec beside this Python)")
    p.add_argument("--all", action="store_true", dest="every", help="down: every cluster")
    p.add_argument("--quiet", action="store_true", help="no line on the cluster's start")
    p.add_argument("program", nargs=argparse.REMAINDER,
                   help="up | down | list, or -- PROGRAM ARGS... to run on every rank")
    p.set_defaults(func=_cluster)


def _topology_parser(sub) -> None:
    from ..topology import TOPOLOGIES, WEIGHTS
    p = sub.add_parser("topology", help="a mixing matrix's degrees, weights, spectrum and zeta",
                       description="python -m mpisgd topology ring -n 8 [--weights uniform]; "
                                   "topology torus -n 16 --matcha 0.5; topology W.csv -n 4; "
                                   "topology easgd -m 8 [--alpha A]")
    p.add_argument("name", metavar="NAME",
                   help=f"{', '.join(TOPOLOGIES)}; easgd (W_alpha: m workers and one centre); "
                        "or a file: .npy or .csv matrix, or an edge list 'i j [w]' per line")
    p.add_argument("-n", "-m", "--nodes", "--workers", dest="n", type=int, required=True,
                   help="number of nodes (workers/ranks); for easgd the number of workers m")
    p.add_argument("--weights", choices=WEIGHTS, default="metropolis",
                   help="mixing weights on a graph (default metropolis)")
    p.add_argument("--p", type=float, help="erdos-renyi edge probability (default 2 ln(n)/n)")
    p.add_argument("--matcha", type=float, metavar="P",
                   help="MATCHA on the graph: each matching active with probability P per round")
    p.add_argument("--seed", type=int, default=0, help="erdos-renyi and MATCHA seed (default 0)")
    p.add_argument("--alpha", type=float, help="easgd moving rate (default beta / m)")
    p.add_argument("--beta", type=float, default=0.9, help="easgd beta = m alpha (default 0.9)")
    p.set_defaults(func=_topology)


def parser() -> argparse.ArgumentParser:
    from .. import __version__
    p = _Parser(prog="mpisgd", description="Communication-efficient distributed SGD on MPI.")
    p.add_argument("--version", action="version", version=f"mpisgd {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _train_parser(sub)
    _report_parser(sub)
    _topology_parser(sub)
    _sweep_parser(sub)
    _study_parser(sub)
    _calibrate_parser(sub)
    _project_parser(sub)
    _cluster_parser(sub)
    return p


def _train(args) -> int:
    from .._mpi import MPI
    from ..errors import abort_on_exception, agree
    from . import sidecars, train
    from .config import from_sources
    comm = MPI.COMM_WORLD
    cfg = None

    def note(exc) -> bool:      # the reason reaches the record; False: another rank's came first
        return not (cfg and cfg.out) or sidecars.note_failure(cfg.out, comm.Get_rank(), exc)

    abort_on_exception(comm, note)     # from here, an unexpected error on one rank ends the job
    if comm.Get_rank() != 0:
        warnings.simplefilter("ignore")
    flags = {k: v for k, v in vars(args).items()
             if k not in ("config", "quiet", "func", "command")}
    try:
        cfg = from_sources(args.config, flags)
    except ConfigError as err:
        agree(comm, err)        # meets prepare()'s agree on ranks that succeeded
        raise
    from .stops import RunStopped
    try:
        train.run(cfg, comm, quiet=args.quiet)
    except RunStopped as err:        # every rank alike: one line, the documented exit status
        if comm.Get_rank() == 0:
            sys.stderr.flush()
            os.write(2, f"mpisgd: {err.status}\n".encode())
        return err.exit_code
    return 0


def _report(args) -> int:
    from . import report
    try:
        return report.main(args.records, args.out, args.target, args.panels, args.x, args.band)
    except (OSError, KeyError, ImportError) as err:
        raise ConfigError(str(err).strip("'\"")) from None


def _sweep(args) -> int:
    from . import sweep
    if args.parallel is not None and args.parallel < 1:
        raise ConfigError(f"--parallel must be a positive integer, got {args.parallel}")
    return sweep.main(args.grid, args.out, args.scheduler, args.parallel, args.submit_arg,
                      args.dry_run)


def _study(args) -> int:
    from .._mpi import MPI
    from ..errors import abort_on_exception
    from . import study
    comm = MPI.COMM_WORLD
    abort_on_exception(comm)          # an unexpected error on one rank ends the job
    if comm.Get_rank() != 0:
        warnings.simplefilter("ignore")
    return study.main(args.grid, args.out, comm, args.quiet)


def _calibrate(args) -> int:
    from .._mpi import MPI
    from ..errors import abort_on_exception
    from . import calibrate
    sizes = calibrate.SIZES
    if args.sizes:
        try:
            sizes = [int(float(v)) for v in args.sizes.split(",") if v.strip()]
        except ValueError:
            sizes = []
        if not sizes or min(sizes) < 1:
            raise ConfigError(f"--sizes must be positive byte counts, got {args.sizes!r}")
    comm = MPI.COMM_WORLD
    if comm.Get_size() < 2:
        raise ConfigError("calibrate needs at least 2 ranks (mpiexec -n 2 or more)")
    abort_on_exception(comm)
    return calibrate.main(comm, args.out, sizes)


def _project(args) -> int:
    from . import project
    try:
        workers = [int(v) for v in args.workers.split(",") if v.strip()]
    except ValueError:
        workers = []
    if not workers or min(workers) < 1:
        raise ConfigError(f"--workers must be positive integers, comma-separated, got "
                          f"{args.workers!r}")
    for flag, value in (("--group-size", args.group_size), ("--ranks-per-node", args.ranks_per_node)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be a positive integer, got {value}")
    try:
        return project.main(args.records, workers, args.network, args.out,
                            group=args.group_size, ranks_per_node=args.ranks_per_node)
    except (OSError, KeyError) as err:
        raise ConfigError(str(err).strip("'\"")) from None


def _cluster(args) -> int:
    from . import cluster
    program = list(args.program)
    action = "run"
    if program and program[0] in ("up", "down", "list"):
        action = program.pop(0)
        after = parser().parse_args(["cluster", *program])     # the options after the action
        defaults = parser().parse_args(["cluster"])
        for key, value in vars(after).items():              # ... with those before it
            if value != getattr(defaults, key):
                setattr(args, key, value)
        program = list(after.program)
    if program and program[0] == "--":
        program = program[1:]
    return cluster.main(action, args.name, args.nodes, args.ranks_per_node, args.nic,
                        args.latency, args.mpiexec, program, args.quiet, args.every)


def _topology(args) -> int:
    from .. import topology
    try:
        if args.name == "easgd":
            if args.p is not None or args.matcha is not None:
                raise ValueError("--p and --matcha do not apply to easgd")
            print(topology.describe_easgd(args.n, args.alpha, args.beta))
        else:
            print(topology.describe(topology.build(
                args.name, args.n, args.weights, args.p, args.matcha, args.seed, args.alpha)))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return 0


def main(argv=None) -> int:
    warnings.formatwarning = lambda msg, cat, *a, **k: f"mpisgd: warning: {msg}\n"
    try:
        args = parser().parse_args(argv)
        return args.func(args)
    except KeyboardInterrupt:     # Ctrl-C outside a run, or twice (once: SIGINT stops a run
        if _launched_rank() in (None, 0):    # at a step with a checkpoint, exit 3)
            os.write(2, b"mpisgd: interrupted (SIGINT)\n")
        return 130
    except ConfigError as err:
        if not err.echo:                 # every rank raised it: one of them prints it
            sys.stderr.flush()
            os.write(2, f"mpisgd: error: {message(err)}\n".encode())   # one write: lines stay whole
        return 2
