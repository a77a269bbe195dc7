"""gradtrain from Python: `compose` the packaged configs, `fit` them or a model of your own, and
get a `Result` back (the trained model, the summary, every logged scalar).

    from gradtrain import compose, fit

    result = fit(compose(["experiment=linear_regression"]))  # python train.py experiment=...
    result = fit(model=net, data=(inputs, targets), loss=nn.MSELoss(), max_steps=500)

Both run gradtrain's one loop (`gradtrain.loop.Trainer`, whose `train_step` is the update) with
its non-finite guard, logging, checkpoints, resume, `explain` and figures. Bad input raises the
exceptions of `gradtrain.errors` with the messages the command line prints, never `sys.exit`.
Nothing is kept between two calls: each run gets a fresh folder, or none when it writes nothing.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import math
import shutil
import signal
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import Tensor, nn
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader, Dataset

from gradtrain.build import build_parameter_stats, build_sink, resolve_device
from gradtrain.checkpoint import (
    CheckpointWriter,
    load_checkpoint,
    resume_problems,
)
from gradtrain.config import (
    Config,
    LoaderSettings,
    LoggerConfig,
    TrainerConfig,
    _describe,
    _field_adapter,
    validate_config,
)
from gradtrain.errors import (
    CheckpointError,
    ConfigError,
    ResumeConfigMismatch,
    TrainingDiverged,
    TrainingInterrupted,
)
from gradtrain.files import remove_stale_temporaries
from gradtrain.insight.figures import (
    FIGURE_TAG,
    MATPLOTLIB_MISSING,
    Landscape,
    TrajectoryFigures,
    loss_landscape,
    matplotlib_available,
)
from gradtrain.insight.trajectory import MAX_PARAMETERS
from gradtrain.loop import FitResult, Trainer
from gradtrain.losses import ParameterLoss
from gradtrain.metrics.history import History, TeeSink
from gradtrain.models import VectorModel
from gradtrain.optim import ManualSGD
from gradtrain.run import (
    CHECKPOINT_DIR,
    MAY_CHANGE_ON_RESUME,
    Observer,
    _agree_on_start,
    _close_sink,
    _explain,
    _load_into,
    _summary,
    _write_summary,
    config_differences,
    fit_and_report,
    flatten_hparams,
    format_summary,
    how_to_continue,
    run,
    seed_everything,
)
from gradtrain.signals import SignalStop
from gradtrain.step import summed
from gradtrain.sweeps.monitor import choose_monitor

log = logging.getLogger("gradtrain")

__all__ = ["Result", "compose", "fit"]

# Where a run goes when no run_dir is given: the command line's folder (hydra.run.dir in
# configs/config.yaml), under the current working directory.
RUNS_ROOT = Path("outputs")
# The arguments of `fit` other than the trainer settings, as an unknown keyword's message lists.
FIT_ARGUMENTS = (
    "model",
    "data",
    "loss",
    "optimizer",
    "val_data",
    "scheduler",
    "batch_size",
    "shuffle",
    "classification",
    "seed",
    "explain",
    "logger",
    "run_dir",
)

DataArgument = Dataset[Any] | DataLoader[Any] | tuple[Tensor, Tensor] | list[Tensor] | None
OptimizerArgument = torch.optim.Optimizer | Callable[..., torch.optim.Optimizer] | None
SchedulerArgument = LRScheduler | Callable[[torch.optim.Optimizer], LRScheduler] | None


@dataclass(frozen=True)
class Result:
    """What a run gives back.

    Attributes:
        model: the trained model (your module itself, or for a tensor the `VectorModel` whose
            `.x` holds the trained values).
        summary: what `summary.json` holds: `status`, `final_loss`, `best_loss`, `val_loss` and
            `val_accuracy` (with validation data), `steps`, `epochs`, `grad_norm`, ...
        history: every scalar the run logged, `{tag: [(step, value), ...]}`: `train/loss`,
            `train/grad_norm`, `optim/lr`, `val/loss`, ... (the TensorBoard curves, in memory).
        run_dir: the run's folder, or None when it wrote nothing to keep.
        explain: with `explain=True`, the report (Markdown) that `explain.md` holds.
        figure: the trajectory figure (PNG bytes) when one was drawn, else None.
        config: the validated config of a run of the packaged configs, else None.
    """

    model: nn.Module
    summary: dict[str, Any]
    history: dict[str, list[tuple[int, float]]] = field(repr=False)
    run_dir: Path | None
    explain: str | None = field(default=None, repr=False)
    figure: bytes | None = field(default=None, repr=False)
    config: Config | None = field(default=None, repr=False)

    @property
    def final_loss(self) -> float | None:
        return self.summary.get("final_loss")

    @property
    def best_loss(self) -> float | None:
        return self.summary.get("best_loss")

    @property
    def val_loss(self) -> float | None:
        return self.summary.get("val_loss")

    def __str__(self) -> str:
        """The summary as the command line prints it."""
        try:
            if "run_dir" in self.summary:
                return format_summary(self.summary)
            lines = format_summary({**self.summary, "run_dir": ""}).splitlines()
        except (KeyError, TypeError, ValueError):  # (a run that failed: its summary is short)
            return f"Result(summary={self.summary!r}, run_dir={self.run_dir})"
        return "\n".join(lines[:-1])  # (no folder: no summary.json line)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))  # how IPython and Jupyter show a Result


# --------------------------------------------------------------------------------- compose
def compose(overrides: Sequence[str] | None = None) -> Config:
    """The config `python train.py <overrides>` trains, validated.

    Composes the packaged `configs/` with Hydra's compose API (from any working directory),
    leaving no Hydra state behind, so it can be called again and again.

    Raises:
        ConfigError: an override Hydra refuses (its message, as the command line prints it),
            one of Hydra's own keys (`hydra.*`: give `fit` a `run_dir` instead), or an invalid
            config (every problem by key, as the command line lists them).
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(overrides, str):
        raise TypeError(f"compose takes a list of overrides: compose([{overrides!r}])")
    overrides = list(overrides or [])
    hydra_own = [o for o in overrides if o.lstrip("+~").split("=")[0].startswith("hydra")]
    if hydra_own:
        raise ConfigError(
            [
                f"{override}: Hydra's own keys do not apply to compose(); give fit() a run_dir "
                "for the run's folder"
                for override in hydra_own
            ]
        )
    from gradtrain.plugin_configs import add_plugin_configs
    from gradtrain.suggest import unknown_override_problem

    add_plugin_configs()  # installed plugins' YAML (model=polynomial), as train.py does

    def composed_with(chosen: list[str]) -> dict[str, Any]:
        with initialize_config_module("gradtrain.configs", version_base="1.3"):
            composed = hydra_compose(config_name="config", overrides=chosen)
        raw = OmegaConf.to_container(composed, resolve=True)
        assert isinstance(raw, dict)
        return raw  # type: ignore[return-value]

    try:
        raw = composed_with(overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        unknown = unknown_override_problem(str(exc), overrides, composed_with)
        if unknown is not None:
            raise ConfigError([unknown]) from exc
        # What Hydra's command line prints for it: the error, and OmegaConf's cause below it.
        message = str(exc).strip()
        if isinstance(exc.__cause__, OmegaConfBaseException):
            message += "\n" + str(exc.__cause__).strip()
        raise ConfigError([message]) from exc
    return validate_config(raw)


# ------------------------------------------------------------------------------------- fit
def fit(
    config: Config | Sequence[str] | Mapping[str, Any] | None = None,
    *,
    model: nn.Module | Tensor | None = None,
    data: DataArgument = None,
    loss: Callable[..., Tensor] | None = None,
    optimizer: OptimizerArgument = None,
    val_data: DataArgument = None,
    scheduler: SchedulerArgument = None,
    batch_size: int | None = 64,
    shuffle: bool = True,
    classification: bool | None = None,
    seed: int = 0,
    explain: bool = False,
    logger: str | Mapping[str, Any] | LoggerConfig = "tensorboard",
    run_dir: str | Path | None = None,
    **trainer: Any,
) -> Result:
    """Train, and return the `Result`.

    Either a config of the packaged `configs/` (a `compose` result, a list of overrides, or a
    composed dict), run exactly as `python train.py` runs it; or a model of your own:

    Args:
        model: any `nn.Module`; or a 1-D tensor, the parameter vector itself (the lecture's
            `x`), trained as a `VectorModel` that starts from its values.
        data: `(inputs, targets)` tensors, a map-style `Dataset` of `(input, target)` pairs
            (both served in seeded, shuffled batches of `batch_size`), or a `DataLoader` of
            `(inputs, targets)` batches, used as it is; None for a loss of the parameters alone.
        loss: `loss(model(inputs), targets)`, or with no data `loss(model())`; may return a
            vector, whose backward is the vector-Jacobian product with ones.
        optimizer: a `torch.optim.Optimizer` over the model's parameters, or a factory called
            with them (`torch.optim.Adam`, `lambda params: torch.optim.SGD(params, lr=0.1)`);
            None: the lecture's update `p -= 0.1 * p.grad` (`ManualSGD`, the command line's).
        val_data: evaluated at each epoch's end and at the end of the run (`val/loss`).
        scheduler: an `LRScheduler` of that optimizer, or a factory called with it.
        batch_size: of `data` and `val_data` given as tensors or a Dataset (None: all rows).
        shuffle: whether those training batches are shuffled (seeded by `seed`, per epoch).
        classification: count right answers (`train/accuracy`, `val/accuracy`): the largest
            of several logits, or one logit > 0, against a class index; None: when the loss is
            `nn.CrossEntropyLoss` or `nn.NLLLoss`.
        seed: seeds torch and Python's generators and the batch order, as the command line.
        explain: before training, show autograd on the model and its first batch
            (`Result.explain`, `explain.md`): the graph, a gradient check, `no_grad`, `detach`.
        logger: "tensorboard" (event files and the trajectory figure), "none", or the
            `logger` section's keys (`{"name": "tensorboard", "figures": False}`).
        run_dir: the run's folder; None: a fresh `outputs/<date>/<time>` when the run writes
            logs or checkpoints, else none at all.
        **trainer: the `trainer` section's keys: `max_steps=500`, `max_epochs`,
            `log_every_n_steps`, `device`, `grad_clip`, `save_checkpoints`, `resume="auto"`,
            `on_nonfinite`, `progress_bar`, ... (validated as on the command line).

    Raises:
        ConfigError: invalid settings, each problem by key. GradtrainError: a problem you
        can fix (a device this machine lacks, a folder in use). TrainingDiverged and
        TrainingInterrupted after the run wrote its summary; their `result` attribute holds
        the `Result` so far.
    """
    folder = Path(run_dir) if run_dir is not None else None
    if config is not None:
        given = {
            name: value
            for name, value in {
                "model": model,
                "data": data,
                "loss": loss,
                "optimizer": optimizer,
                "val_data": val_data,
                "scheduler": scheduler,
            }.items()
            if value is not None
        }
        if given or trainer:
            names = ", ".join([*given, *trainer])
            raise TypeError(
                f"fit() trains a config or a model of your own, not both: with a config, set "
                f"its keys by compose() overrides (e.g. trainer.max_steps=100) instead of {names}"
            )
        return _fit_config(config, folder)
    if model is None or loss is None:
        missing = " and ".join(n for n, v in (("model", model), ("loss", loss)) if v is None)
        raise TypeError(f"fit() needs a config, or a model and a loss: {missing} missing")
    settings = _settings(trainer, seed, explain, logger, batch_size, shuffle)
    return _fit_user_code(
        settings,
        model=model,
        data=data,
        loss=loss,
        optimizer=optimizer,
        val_data=val_data,
        scheduler=scheduler,
        classification=classification,
        run_dir=folder,
    )


# ------------------------------------------------------------------- a config of gradtrain's
def _fit_config(config: Config | Sequence[str] | Mapping[str, Any], run_dir: Path | None) -> Result:
    """`gradtrain.run.run`, the command line's path, watched for the history and the model."""
    if isinstance(config, Config):
        # What compose() validated, as the composed dict it came from (unset keys keep their
        # defaults), so the run logs the same config text as the command line.
        raw: Mapping[str, Any] = config.model_dump(mode="json", exclude_unset=True)
    elif isinstance(config, Mapping):
        raw = config
    elif isinstance(config, str):
        raise TypeError(f"fit takes a list of overrides: fit([{config!r}])")
    else:
        raw = compose(list(config)).model_dump(mode="json", exclude_unset=True)
    cfg = validate_config(raw)
    keep = run_dir is not None or _writes_files(cfg.trainer, cfg.logger)
    history = History()
    observer = Observer(sink=history)
    with _run_folder(run_dir, keep) as folder:
        try:
            summary = run(raw, folder, observer=observer)
        except (TrainingDiverged, TrainingInterrupted) as exc:
            exc.result = _result(observer, history, _read_summary(folder), folder, keep, cfg)  # type: ignore[attr-defined]
            raise
        return _result(observer, history, summary, folder, keep, cfg)


def _result(
    observer: Observer,
    history: History,
    summary: dict[str, Any],
    folder: Path,
    keep: bool,
    cfg: Config | None,
) -> Result:
    assert observer.trainer is not None
    figure = history.images.get(FIGURE_TAG)
    if not keep:  # the summary names the temporary folder, which is gone when fit returns
        summary = {k: v for k, v in summary.items() if k not in ("run_dir", "tensorboard_dir")}
    return Result(
        model=observer.trainer.module,
        summary=summary,
        history=history.scalars,
        run_dir=folder if keep else None,
        explain=history.texts.get("explain"),
        figure=figure[1] if figure is not None else None,
        config=cfg,
    )


def _read_summary(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "summary.json").read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return {}


def _writes_files(settings: TrainerConfig, logger: LoggerConfig) -> bool:
    """Whether a run leaves anything worth a folder: event files or checkpoints."""
    return logger.name != "none" or settings.save_checkpoints


@contextlib.contextmanager
def _run_folder(run_dir: Path | None, keep: bool) -> Any:
    """`run_dir`; else a fresh `outputs/<date>/<time>` (the command line's name for it) when the
    run writes anything to keep, or a temporary folder removed afterwards."""
    if run_dir is not None:
        yield run_dir
    elif keep:
        yield _fresh_folder()
    else:
        scratch = Path(tempfile.mkdtemp(prefix="gradtrain-"))
        try:
            yield scratch
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def _fresh_folder() -> Path:
    while True:
        now = datetime.datetime.now()
        folder = RUNS_ROOT.resolve() / now.strftime("%Y-%m-%d") / now.strftime("%H-%M-%S-%f")
        if not folder.exists():
            return folder


# --------------------------------------------------------------------------- your own model
@dataclass(frozen=True)
class _Settings:
    trainer: TrainerConfig
    logger: LoggerConfig
    seed: int
    explain: bool
    batch_size: int | None
    shuffle: bool


def _settings(
    trainer: Mapping[str, Any],
    seed: Any,
    explain: Any,
    logger: Any,
    batch_size: Any,
    shuffle: Any,
) -> _Settings:
    """fit's settings, validated by the schema the command line's are (every problem at once,
    by the name fit was given it: `max_steps`, `logger.figures`, `batch_size`)."""
    problems: list[str] = []

    def check(name: str, value: Any, adapter: Any, prefix: tuple[str, ...] = ()) -> Any:
        try:
            return adapter.validate_python(value)
        except ValidationError as exc:
            for error in exc.errors():
                loc = (*prefix, *error["loc"])
                if error["type"] == "extra_forbidden" and not prefix and name == "trainer":
                    problems.append(
                        f"{loc[-1]}: unknown argument of fit(); it takes "
                        f"{', '.join(FIT_ARGUMENTS)} and the trainer settings "
                        f"{', '.join(TrainerConfig.model_fields)}"
                    )
                    continue
                problems.append(_describe({**error, "loc": loc}, {name: value}))
            return None

    if isinstance(logger, str):
        logger = {"name": logger}
    validated_trainer = check("trainer", dict(trainer), _field_adapter("trainer"))
    validated_logger = check("logger", logger, _field_adapter("logger"), ("logger",))
    validated_seed = check("seed", seed, _field_adapter("seed"), ("seed",))
    validated_explain = check("explain", explain, _field_adapter("explain"), ("explain",))
    try:  # (the keys a dataset section has for its loader, checked by the same rules)
        LoaderSettings(batch_size=batch_size, shuffle=shuffle)
    except ValidationError as exc:
        problems += [_describe(error, {}) for error in exc.errors()]
    if problems:
        raise ConfigError(problems)
    return _Settings(
        validated_trainer, validated_logger, validated_seed, validated_explain, batch_size, shuffle
    )


class _FunctionLoss(nn.Module):
    """A loss given as a plain function, as a module: explain, the gradient check and figures
    copy and move losses as modules."""

    def __init__(self, function: Callable[..., Tensor]) -> None:
        super().__init__()
        self.function = function
        self.name = getattr(function, "__qualname__", type(function).__name__)

    def forward(self, *args: Any) -> Tensor:
        return self.function(*args)


def _fit_user_code(
    settings: _Settings,
    *,
    model: nn.Module | Tensor,
    data: DataArgument,
    loss: Callable[..., Tensor],
    optimizer: OptimizerArgument,
    val_data: DataArgument,
    scheduler: SchedulerArgument,
    classification: bool | None,
    run_dir: Path | None,
) -> Result:
    """The same run as `gradtrain.run.run`, of objects given instead of built from a config:
    the folder claimed, a resume checked, explain, the loop, the summary."""
    cfg = settings.trainer
    if cfg.resume == "auto" and run_dir is None:
        raise ConfigError(
            ["resume=auto continues the run in run_dir: give fit() the run_dir to continue"]
        )
    device = resolve_device(cfg.device)
    seed_everything(settings.seed)
    module = _as_module(model).to(device)
    loss_fn = loss if isinstance(loss, nn.Module) else _FunctionLoss(loss)
    loss_fn = loss_fn.to(device)
    train_loader = _loader(data, settings, train=True)
    val_loader = _loader(val_data, settings, train=False)
    if cfg.monitor == "val_loss" and val_loader is None:
        raise ConfigError(
            ["monitor=val_loss needs validation data: give fit() val_data, or leave monitor unset"]
        )
    the_optimizer = _optimizer(optimizer, module)
    the_scheduler = _scheduler(scheduler, the_optimizer)
    if classification is None:
        # (Losses of class indices: a prediction's class is its largest logit.)
        classification = isinstance(loss, nn.CrossEntropyLoss | nn.NLLLoss)
    description = _describe_run(settings, module, loss_fn, the_optimizer)
    keep = run_dir is not None or _writes_files(cfg, settings.logger)
    history = History()
    with _run_folder(run_dir, keep) as folder, contextlib.ExitStack() as claim:
        start = _agree_on_start(cfg.resume, folder, claim)
        folder = start.run_dir
        checkpoint = None
        if start.resume_from is not None:
            checkpoint = load_checkpoint(start.resume_from)
            problems = resume_problems(checkpoint)
            if problems:
                raise CheckpointError(
                    f"{start.resume_from} cannot be resumed: {'; '.join(problems)}"
                )
            _check_same_run(description, checkpoint, start.resume_from)
        for stale in remove_stale_temporaries(folder / CHECKPOINT_DIR):
            log.info("Removed %s, left by a session killed while writing a checkpoint.", stale)
        checkpointer = (
            CheckpointWriter(folder / CHECKPOINT_DIR, keep=cfg.keep_checkpoints, config=description)
            if cfg.save_checkpoints
            else None
        )
        resumed_step = checkpoint["step"] if checkpoint is not None else None
        purge_step = resumed_step + 1 if resumed_step is not None else None
        if start.hide_earlier_events:
            purge_step = 0
        logged = build_sink(settings.logger, folder / "tensorboard", purge_step=purge_step)
        sink = TeeSink(logged, history)
        stop = SignalStop(checkpoints=cfg.save_checkpoints)
        try:
            figures = _figures(settings, module, loss_fn, the_optimizer, train_loader, sink)
            trainer = Trainer(
                module,
                loss_fn,
                the_optimizer,
                train_loader,
                cfg,
                device,
                sink,
                scheduler=the_scheduler,
                val_loader=val_loader,
                classification=classification,
                checkpointer=checkpointer,
                stop_request=stop,
                trajectory=figures.trajectory if figures is not None else None,
                parameter_stats=build_parameter_stats(settings.logger, sink, module),
            )
            if checkpoint is not None:
                assert start.resume_from is not None
                _load_into(trainer, checkpoint, start.resume_from)
                log.info("Resuming from %s at step %d.", start.resume_from, resumed_step)
            else:
                sink.log_text("config", _as_text(description))
            gradient_check = (
                _explain(trainer, sink, folder) if settings.explain and checkpoint is None else None
            )
            result = fit_and_report(trainer, stop, folder, write_summary=True)
            summary = _summary(settings.logger, result, module, folder)
            summary["monitor"] = choose_monitor(cfg.monitor, summary)
            if gradient_check is not None:
                summary["gradient_check"] = gradient_check
            if figures is not None:
                figures.finish(result.steps, folder)
            if result.stop_reason != "interrupted":
                sink.log_hparams(
                    flatten_hparams(description),
                    {
                        "summary/final_loss": result.final_loss,
                        "summary/best_loss": result.best_loss,
                    },
                    step=result.steps,
                )
        finally:
            _close_sink(sink, folder)
        _write_summary(folder, summary)
        observer = Observer(sink=history, trainer=trainer)
        outcome = _result(observer, history, summary, folder, keep, None)
        if result.stop_reason == "diverged":
            lr = the_optimizer.param_groups[0]["lr"]
            error = TrainingDiverged(
                f"{result.message} Lower the learning rate (lr={lr:g}; try lr={lr / 10:g})."
            )
            error.result = outcome  # type: ignore[attr-defined]
            raise error
        if result.stop_reason == "interrupted":
            interrupted = TrainingInterrupted(
                f"{result.message}; {_how_to_continue_fit(result, folder)}",
                stop.signal_number or signal.SIGTERM,
            )
            interrupted.result = outcome  # type: ignore[attr-defined]
            raise interrupted
        return outcome


def _how_to_continue_fit(result: FitResult, folder: Path) -> str:
    """The stop message's second half, for fit: what was saved, and the call that continues."""
    again = f"fit(..., run_dir={str(folder)!r}, resume='auto') with the same model and optimizer"
    return how_to_continue(result, again, "save_checkpoints=False")


def _as_module(model: nn.Module | Tensor) -> nn.Module:
    if isinstance(model, nn.Module):
        return model
    if isinstance(model, Tensor):
        if model.dim() != 1 or not model.is_floating_point():
            raise TypeError(
                f"model: a tensor is the parameter vector itself and must be 1-D and floating "
                f"point (got shape {tuple(model.shape)}, {model.dtype}); wrap other parameters "
                "in an nn.Module"
            )
        vector = VectorModel(model.detach().cpu().tolist())
        return vector.to(model.dtype)
    raise TypeError(f"model: expected an nn.Module or a 1-D tensor, got {type(model).__name__}")


def _loader(data: DataArgument, settings: _Settings, train: bool) -> DataLoader[Any] | None:
    """`data` as batches: a DataLoader as it is, anything else through gradtrain's seeded
    loader (the order is a function of the seed and the epoch, so a resume continues it)."""
    from gradtrain.datasets import InMemoryDataset, build_dataloader

    if data is None or isinstance(data, DataLoader):
        return data
    dataset: Dataset[Any]
    if isinstance(data, tuple | list):
        if len(data) != 2 or not all(isinstance(t, Tensor) for t in data):
            raise TypeError(
                "data: a tuple must be (inputs, targets), two tensors with one row per sample"
            )
        dataset = InMemoryDataset(data[0], data[1])
    elif isinstance(data, Dataset):
        dataset = data
    else:
        raise TypeError(
            f"data: expected (inputs, targets) tensors, a Dataset or a DataLoader, got "
            f"{type(data).__name__}"
        )
    size = len(dataset)  # type: ignore[arg-type]
    if size == 0:
        raise ValueError(f"{'data' if train else 'val_data'} holds no sample")
    return build_dataloader(
        dataset,
        batch_size=settings.batch_size or size,
        shuffle=settings.shuffle and train,
        seed=settings.seed,
    )


def _scheduler(given: SchedulerArgument, optimizer: torch.optim.Optimizer) -> LRScheduler | None:
    if given is None or isinstance(given, LRScheduler):
        return given
    made = given(optimizer)
    if not isinstance(made, LRScheduler):
        raise TypeError(
            f"scheduler: the factory returned a {type(made).__name__}, not an LRScheduler"
        )
    return made


def _optimizer(given: OptimizerArgument, module: nn.Module) -> torch.optim.Optimizer:
    """The optimizer of the model's parameters (checked: one over other tensors would train
    nothing)."""
    if given is None:
        return ManualSGD(module.parameters(), lr=0.1)
    if not isinstance(given, torch.optim.Optimizer):
        made = given(module.parameters())
        if not isinstance(made, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer: the factory returned a {type(made).__name__}, not a "
                "torch.optim.Optimizer"
            )
        return made
    optimized = {id(p) for group in given.param_groups for p in group["params"]}
    trainable = [name for name, p in module.named_parameters() if p.requires_grad]
    untouched = [
        name for name, p in module.named_parameters() if p.requires_grad and id(p) not in optimized
    ]
    if untouched and len(untouched) == len(trainable):
        raise TypeError(
            f"optimizer: it updates none of the model's parameters ({', '.join(untouched[:5])}"
            f"{', ...' if len(untouched) > 5 else ''}); make it from model.parameters(), or "
            "pass a factory such as optimizer=lambda params: torch.optim.SGD(params, lr=0.1)"
        )
    return given


def _figures(
    settings: _Settings,
    module: nn.Module,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_loader: DataLoader[Any] | None,
    sink: TeeSink,
) -> TrajectoryFigures | None:
    """The trajectory figure, as `TrajectoryFigures.for_run` decides it for a config: drawn on
    the loss curve or contours for a loss of 1 or 2 parameters alone, else projected."""
    logger = settings.logger
    if logger.name != "tensorboard" or not logger.figures:
        return None
    n_parameters = sum(p.numel() for p in module.parameters() if p.requires_grad)
    if n_parameters > MAX_PARAMETERS:
        log.warning(
            f"figures skipped: the model has {n_parameters} parameters; paths are recorded for "
            f"at most {MAX_PARAMETERS} (logger={{'name': 'tensorboard', 'figures': False}} "
            "stops this message)"
        )
        return None
    draw = matplotlib_available()
    if not draw:
        log.warning(MATPLOTLIB_MISSING)
    landscape, minimizer = None, None
    if train_loader is None and isinstance(module, VectorModel):
        landscape = _landscape(loss_fn, n_parameters)
        if isinstance(loss_fn, ParameterLoss):
            minimizer = loss_fn.minimum(n_parameters)[1]
    lr = optimizer.param_groups[0]["lr"]
    title = f"{_loss_name(loss_fn)}, {type(optimizer).__name__} (lr {lr:g})"
    problem = {"loss": {"name": _loss_name(loss_fn)}, "parameter_loss": landscape is not None}
    return TrajectoryFigures(
        sink, title, landscape, minimizer, logger.figure_every_n_steps, draw, problem
    )


def _landscape(loss_fn: nn.Module, n_parameters: int) -> Landscape:
    """The loss at many points at once (`torch.vmap`); a loss vmap cannot batch (Python
    branching on values) is evaluated point by point instead."""
    vectorised = loss_landscape(loss_fn)
    try:
        vectorised(torch.zeros(2, n_parameters, dtype=torch.float64))
    except Exception:  # (whatever the user's function raises under vmap)
        import copy

        loss64 = copy.deepcopy(loss_fn).to("cpu", torch.float64)

        def point_by_point(points: Tensor) -> Tensor:
            with torch.no_grad():
                values = [summed(loss64(point)) for point in points.to(torch.float64)]
            return torch.stack(values).to(torch.float64)

        return point_by_point
    return vectorised


def _loss_name(loss_fn: nn.Module) -> str:
    return loss_fn.name if isinstance(loss_fn, _FunctionLoss) else type(loss_fn).__name__


def _describe_run(
    settings: _Settings, module: nn.Module, loss_fn: nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """The run as plain data, stored in its checkpoints (a resume is compared with it) and
    logged as its config and hparams: what trains it, and the settings."""
    model_class = type(module)
    hyper = {
        key: list(value) if isinstance(value, tuple) else value
        for key, value in optimizer.defaults.items()
        if _plain(value)
    }
    return {
        "seed": settings.seed,
        "model": {
            "class": f"{model_class.__module__}.{model_class.__qualname__}",
            "parameters": sum(p.numel() for p in module.parameters()),
        },
        "loss": {"name": _loss_name(loss_fn)},
        "optimizer": {"class": type(optimizer).__name__, **hyper},
        "trainer": settings.trainer.model_dump(mode="json"),
        "logger": settings.logger.model_dump(mode="json"),
        "explain": settings.explain,
    }


def _plain(value: Any) -> bool:
    """Whether a value goes into a checkpoint as plain data (weights_only loading takes it)."""
    if isinstance(value, tuple | list):
        return all(_plain(item) for item in value)
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, bool | int | str)


def _check_same_run(
    description: Mapping[str, Any], checkpoint: Mapping[str, Any], path: Path
) -> None:
    """Refuse to resume a checkpoint of another training (another model class, optimizer,
    learning rate, seed...), as the command line refuses one of another config."""
    saved = checkpoint.get("config")
    if not isinstance(saved, Mapping):
        return
    differences, _ = config_differences(saved, description)
    if differences:
        allowed = ", ".join(k + ("*" if k.endswith(".") else "") for k in MAY_CHANGE_ON_RESUME)
        raise ResumeConfigMismatch(str(path), differences, allowed)


def _as_text(description: Mapping[str, Any]) -> str:
    return "```json\n" + json.dumps(description, indent=2) + "\n```"
