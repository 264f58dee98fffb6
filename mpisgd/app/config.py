"""The training configuration: a dataclass, YAML files and ``--key value`` flags.

Precedence: the defaults below < ``--config FILE.yaml`` < command-line flags.
YAML keys are the flag names, with dashes or underscores (``batch-size`` or
``batch_size``); algorithm options (``tau``, ``bucket-mb``, ...) sit beside
the general ones.
"""
from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass, field

from .. import algorithms, device as placement, models, precision as mixed
from ..algorithms.options import coerce
from ..errors import ConfigError, OptionError
from . import board, lr as lr_schedules, optimizers


#: ``--momentum`` when not given (the run record stores the value used).
MOMENTUM = 0.9
_STALE = ("the server applies stale gradients through this momentum, which can hold the model "
          "at chance (Dutta et al. run plain SGD on the server): use --momentum 0, or damp "
          "stale gradients with --staleness-lr C,ETA_MAX")
#: Where the default is 0, and why: the warning given with a momentum > 0 ("" for eamsgd,
#: whose momentum is its own --delta).
ZERO_MOMENTUM = {
    "async": _STALE, "k-async": _STALE, "k-batch-async": _STALE, "eamsgd": "",
    "downpour": "each worker's momentum runs on across its pulls of the centre and adds to "
                "every push, which collapses training (the EASGD paper's DOWNPOUR pushes "
                "plain SGD steps): use --momentum 0"}


def default_momentum(algo: str) -> float:
    """``--momentum`` when not given for ``--algo algo``."""
    return 0.0 if algo in ZERO_MOMENTUM else MOMENTUM


def _sets_lr(algo: str, options: dict) -> str | None:
    """Why ``--algo algo`` with ``options`` sets the local rate itself (``None``: it does not)."""
    from ..algorithms.ps import FAMILY
    if algo in {cls.name for cls in FAMILY}:
        return "the server steps the model with its own copy of the optimizer"
    if options.get("schedule") == "time-varying":
        return "--schedule time-varying sets the rate itself (PR-SGD Algorithm 2's lr_exp)"
    return None


def _scalable(algo: str, options: dict) -> None:
    """``ConfigError`` where fp16's gradient scaler cannot work: a server steps the model,
    EAMSGD reads the gradients itself, or sync's compressed gradients keep an overflow's
    infinity in their error feedback."""
    cls = algorithms.ALGORITHMS.get(algo)
    if cls is not None and cls.unscalable:
        raise ConfigError(f"--precision fp16 does not combine with --algo {algo}: "
                          f"{cls.unscalable}; use --precision bf16 (no scaler)")
    if algo == "sync" and options.get("compress", "none") not in (None, "none"):
        raise ConfigError("--precision fp16 does not combine with sync's --compress: an "
                          "overflowed gradient would stay in the error feedback's residual; "
                          "use --precision bf16")


def _momentum_help() -> str:
    """``--momentum``'s help: the usual default, and the algorithms whose default is 0."""
    return f"SGD momentum (default {MOMENTUM:g}; 0 for {', '.join(ZERO_MOMENTUM)})"


@dataclass
class TrainConfig:
    """Everything ``mpisgd train`` needs; one field per flag."""
    algo: str = "sync"
    model: str = "mlp"
    data: str = "digits"
    steps: int | None = None
    epochs: float | None = None
    batch_size: int = 32
    accumulate: int = 1
    precision: str = "fp32"
    optimizer: str = "sgd"
    lr: float = 0.05
    lr_schedule: str = "constant"
    warmup: int = 0
    lr_min: float = 0.0
    lr_gamma: float = 0.1
    momentum: float | None = None      # None: the algorithm's default_momentum (validate)
    nesterov: bool = False
    betas: str = "0.9,0.999"
    eps: float = 1e-8
    weight_decay: float = 0.0
    seed: int = 0
    shard: str = "iid"
    skew_alpha: float = 0.5
    log_every: int | None = None
    eval_samples: int | None = None
    out: str | None = None
    tensorboard: str | None = None
    threads: int | None = None
    device: str = "auto"
    deterministic: bool = False
    overwrite: bool = False
    checkpoint_every: int | None = None
    checkpoint_dir: str | None = None
    resume: str | None = None
    on_nonfinite: str = "stop"
    options: dict = field(default_factory=dict)   # algorithm options, Python names

    HELP = {
        "algo": f"algorithm: {', '.join(algorithms.ALGORITHMS)}",
        "model": "linear, mlp, cnn, resnet20 or gpt[:LAYERS,WIDTH,HEADS,CONTEXT] (a byte-level "
                 "transformer for --data text, default gpt:2,128,4,64)",
        "data": "digits, synthetic[:N], cifar10:DIR, mnist:DIR, hdf5:FILE or text:FILE (bytes, "
                "for --model gpt)",
        "steps": "local steps per worker (default 300 unless --epochs)",
        "epochs": "passes over the training set by all workers together",
        "batch_size": "mini-batch size per worker",
        "accumulate": "micro-batches of --batch-size per step: gradients summed locally, "
                      "communication once, after the last (a step of N x batch-size samples)",
        "precision": "fp32, bf16 (autocast, CPU or GPU) or fp16 (autocast and a gradient "
                     "scaler, GPU only); parameters and exchanges stay fp32",
        "optimizer": "the local optimizer: sgd, adam or adamw (decoupled weight decay)",
        "lr": "learning rate (the base rate of --lr-schedule)",
        "lr_schedule": "constant, cosine, linear (to --lr-min over the run, after the warmup) or "
                       "step:E1,E2,... (times --lr-gamma at each epoch listed)",
        "warmup": "steps of linear warmup from lr/warmup to lr",
        "lr_min": "the rate cosine and linear end at",
        "lr_gamma": "the factor of each step:E milestone",
        "momentum": _momentum_help(),
        "nesterov": "Nesterov momentum",
        "betas": "adam and adamw: the moments' decay rates B1,B2",
        "eps": "adam and adamw: the denominator's epsilon",
        "weight_decay": "weight decay (sgd, adam: L2 in the gradient; adamw: decoupled)",
        "seed": "seed of data order, sharding and initialisation",
        "shard": "iid or label-skew (Dirichlet, see --skew-alpha)",
        "skew_alpha": "Dirichlet concentration of label-skew sharding",
        "log_every": "steps between evaluations (default: 20 log points)",
        "eval_samples": "test samples evaluated at each log point: a seeded subset, the same at "
                        "every point (default: a quarter of the samples the workers train on "
                        "between two log points, at most the test set)",
        "out": "HDF5 run record (default runs/ALGO-DATE-TIME.h5)",
        "tensorboard": "also write every logged row as TensorBoard scalars to this directory "
                       "(rank 0; the tensorboard extra)",
        "threads": "torch threads per rank (default: cores per node / ranks per node)",
        "device": "auto (CUDA where torch sees a GPU), cpu, cuda (GPU local_rank %% GPUs) or cuda:N",
        "deterministic": "deterministic kernels only (torch.use_deterministic_algorithms, cuDNN "
                         "without autotuning): a rerun on the same GPU gives the same bits",
        "overwrite": "replace an existing --out (refused otherwise)",
        "checkpoint_every": "steps between checkpoints, and one at the last step (async "
                            "algorithms: at the next log point after; default: none, but "
                            "SIGTERM/SIGUSR1/SIGINT still write one)",
        "checkpoint_dir": "where checkpoints go (default: --out without .h5, plus .ckpt)",
        "resume": "continue the run from a checkpoint directory (or its parent: the newest)",
        "on_nonfinite": "stop (the run fails, exit 4) or warn when a loss or parameter is not "
                        "finite",
    }

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the first bad flag."""
        def need(ok, flag, must, value):
            if not ok:
                raise ConfigError(f"--{flag} must be {must}, got {value!r}")
        if self.steps is not None:
            need(self.steps >= 1, "steps", "a positive integer", self.steps)
        if self.epochs is not None:
            need(self.epochs > 0, "epochs", "positive", self.epochs)
            need(self.steps is None, "epochs", "used without --steps", self.epochs)
        need(self.batch_size >= 1, "batch-size", "a positive integer", self.batch_size)
        need(self.accumulate >= 1, "accumulate", "a positive integer", self.accumulate)
        need(self.lr > 0, "lr", "positive", self.lr)
        need(self.warmup >= 0, "warmup", "a whole number of steps >= 0", self.warmup)
        need(0 <= self.lr_min < self.lr, "lr-min", f"in [0, --lr {self.lr:g})", self.lr_min)
        need(0 < self.lr_gamma <= 1, "lr-gamma", "in (0, 1]", self.lr_gamma)
        lr_schedules.check(self, _sets_lr(self.algo, self.options))
        given = self.momentum is not None
        optimizers.check(self, given)
        if not given:            # the algorithm's default, recorded as the value (Adam: 0)
            self.momentum = default_momentum(self.algo) if self.optimizer == "sgd" else 0.0
        need(0 <= self.momentum < 1, "momentum", "in [0, 1)", self.momentum)
        if given and self.momentum > 0 and ZERO_MOMENTUM.get(self.algo):
            warnings.warn(f"--momentum {self.momentum:g} with --algo {self.algo}: "
                          f"{ZERO_MOMENTUM[self.algo]}", UserWarning, stacklevel=2)
        need(not self.nesterov or self.momentum > 0, "nesterov", "used with --momentum > 0",
             self.nesterov)
        need(self.weight_decay >= 0, "weight-decay", "non-negative", self.weight_decay)
        if self.tensorboard:
            board.check()
        try:
            self.device = placement.parse(self.device)
        except ValueError:
            need(False, "device", "auto, cpu, cuda or cuda:N", self.device)
        mixed.check(self.precision, self.device)
        if self.precision == "fp16":
            _scalable(self.algo, self.options)
        try:
            models.parse(self.model)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        need(self.shard in ("iid", "label-skew"), "shard", "iid or label-skew", self.shard)
        need(self.skew_alpha > 0, "skew-alpha", "positive", self.skew_alpha)
        need(self.seed >= 0, "seed", "a non-negative integer", self.seed)
        if self.log_every is not None:
            need(self.log_every >= 1, "log-every", "a positive integer", self.log_every)
        if self.eval_samples is not None:
            need(self.eval_samples >= 1, "eval-samples", "a positive integer", self.eval_samples)
        if self.threads is not None:
            need(self.threads >= 1, "threads", "a positive integer", self.threads)
        if self.checkpoint_every is not None:
            need(self.checkpoint_every >= 1, "checkpoint-every", "a positive integer",
                 self.checkpoint_every)
        need(self.on_nonfinite in ("stop", "warn"), "on-nonfinite", "stop or warn",
             self.on_nonfinite)
        try:
            declared = {o.name for o in algorithms.lookup(self.algo).declared()}
        except ValueError as err:
            raise ConfigError(str(err)) from None
        for name in ("straggler_seed", "topology_seed"):  # delays and random graphs follow --seed
            if name in declared and self.options.get(name) is None:
                self.options[name] = self.seed
        try:          #: The algorithm's resolved options (:func:`mpisgd.spec`).
            self.spec = algorithms.spec(self.algo, **self.options)
        except OptionError as err:       # named, not parsed from the message
            raise ConfigError(err.flagged()) from None
        self.options = dict(self.spec.options)

    def resolved(self) -> dict:
        """The configuration as the run record stores it (JSON-able)."""
        return dataclasses.asdict(self)


GENERAL = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "options"]


def read_mapping(path: str, where: str, missing: str, expected: str) -> dict:
    """A YAML file's top-level mapping; ``ConfigError`` (``missing``, or ``where: ...``) for a
    missing, unreadable or invalid file, or one that is not a mapping (``expected``)."""
    import yaml
    if not os.path.exists(path):
        raise ConfigError(missing)
    try:
        with open(path, encoding="utf-8") as f:
            loaded = yaml.safe_load(f) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: not valid YAML ({err})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{where}: cannot read it ({err})") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{where}: expected {expected}")
    return loaded


def from_sources(yaml_path: str | None, flags: dict) -> TrainConfig:
    """Merge defaults, a YAML file and explicitly given flags into a config."""
    values: dict = {}
    if yaml_path:
        loaded = read_mapping(yaml_path, f"--config {yaml_path}", f"--config: no such file: {yaml_path}",
                              "a mapping of option: value")
        bad_keys = [k for k in loaded if not isinstance(k, str)]
        if bad_keys:
            raise ConfigError(f"--config {yaml_path}: keys must be option names, got {bad_keys[0]!r}")
        values.update({k.replace("-", "_"): v for k, v in loaded.items()})
    values.update({k: v for k, v in flags.items() if v is not None})
    known_algo = algorithms.all_options()
    unknown = sorted(set(values) - set(GENERAL) - set(known_algo))
    if unknown:
        where = f"--config {yaml_path}: " if yaml_path else ""
        raise ConfigError(f"{where}unknown key {unknown[0]!r}")
    kinds = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    general = {k: _coerce(k, kinds[k], v) for k, v in values.items() if k in GENERAL}
    options = {k: v for k, v in values.items() if k in known_algo}
    cls = algorithms.ALGORITHMS.get(general.get("algo", TrainConfig.algo))
    if cls is not None and cls.owns_momentum:      # eamsgd: the momentum is its --delta
        given = sorted({"momentum", "nesterov"} & set(general))
        if given:
            raise ConfigError(f"--{given[0]} does not apply to --algo {cls.name}: "
                              "its momentum is --delta")
    return TrainConfig(**general, options=options)


_KINDS = {"str": str, "int": int, "float": float, "bool": bool}


def _coerce(name: str, declared: str, value):
    """A flag's or YAML key's value as the field's type (see
    :func:`mpisgd.algorithms.options.coerce`)."""
    flag = "--" + name.replace("_", "-")
    if value is None:
        if declared.endswith("| None"):
            return None
        raise ConfigError(f"{flag} needs a value, got nothing")
    try:
        return coerce(_KINDS[declared.split("|")[0].strip()], value)
    except ValueError as err:
        raise ConfigError(f"{flag} must be {err}, got {value!r}") from None
