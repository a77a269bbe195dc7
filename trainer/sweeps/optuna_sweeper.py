"""gradtrain's Optuna search: a Hydra sweeper on Optuna >= 4 (`hparams_search=optuna`).

Hydra finds sweepers only under the `hydra_plugins` namespace, so
`hydra_plugins/gradtrain_optuna_sweeper` is a shim that registers the config below as
`hydra/sweeper=gradtrain_optuna` and hands every call to `OptunaSearch`, which is all the logic:

- the search space is Hydra's override grammar (`choice`, `range`, `interval`,
  `tag(log, interval(...))`), read by Hydra's own override parser, from `hydra.sweeper.params`
  and the command line (which wins for a key it names);
- the study lives in Optuna's journal file `<sweep dir>/optuna.journal` (safe for several
  processes), or in `hydra.sweeper.storage` (a database URL, or a journal file elsewhere);
- a worker asks the study for a trial, runs it as one job of the sweep (its folder is numbered
  by the trial's number, which no two workers share), tells the result, and stops once the
  study holds `n_trials` trials; several workers (`hydra.sweeper.resume=<sweep dir>`, or one
  database) run one study together, and a killed search continues the same way;
- with a pruner, each trial reports its monitored metric at every validation
  (gradtrain/sweeps/trial_report.py) and stops early, `status: pruned`, when the pruner says so;
- a trial that fails or diverges is told to Optuna as failed and the search goes on.

Nothing here imports Optuna (or torch) at module level: Hydra imports the shim on every start.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import math
import os
import socket
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from gradtrain.errors import ConfigError
from gradtrain.files import write_atomic
from gradtrain.suggest import flattened
from gradtrain.sweeps import summary as sweep_summary
from gradtrain.sweeps import trial_report

if TYPE_CHECKING:
    import optuna
    from hydra.core.override_parser.types import Override
    from hydra.plugins.launcher import Launcher
    from hydra.types import HydraContext, TaskFunction
    from optuna.distributions import BaseDistribution

log = logging.getLogger("gradtrain")

SAMPLERS = ("tpe", "random", "cmaes")
PRUNERS = ("median", "hyperband")
DIRECTIONS = ("minimize", "maximize")
JOURNAL_FILE = "optuna.journal"  # the study, in the sweep folder unless hydra.sweeper.storage
RESULTS_FILE = "optimization_results.yaml"
PLUGIN_TARGET = "hydra_plugins.gradtrain_optuna_sweeper.GradtrainOptunaSweeper"
# Study attribute: what the study searches, so that a worker of another search cannot join it.
SEARCH_ATTR = "gradtrain_search"
# Trial attribute: the process that runs it, so that a resumed search can tell a trial whose
# process died (it stays "running" in the study) from one another worker is running.
WORKER_ATTR = "gradtrain_worker"


@dataclass
class OptunaSweeperConf:
    """`hydra.sweeper` for `hydra/sweeper=gradtrain_optuna`. Typed loosely on purpose: every
    value is checked by `OptunaSearch` before any trial runs, which names the key and exits 2."""

    _target_: str = PLUGIN_TARGET
    n_trials: Any = 20  # trials of the study, all workers together
    direction: Any = "minimize"  # of the monitored metric (trainer.monitor): a loss
    sampler: Any = "tpe"  # tpe, random or cmaes
    seed: Any = None  # the sampler's seed: the same search for the same seed (one worker)
    pruner: Any = None  # null, median or hyperband
    storage: Any = None  # null: <sweep dir>/optuna.journal; or a database URL, or a journal file
    study_name: Any = "gradtrain"
    resume: Any = None  # a sweep folder whose study to continue (or join as another worker)
    # The search space, in Hydra's override grammar: key -> e.g. "tag(log, interval(1e-3, 1))".
    params: dict[str, Any] = field(default_factory=dict)


def register_configs() -> None:
    """Make `hydra/sweeper=gradtrain_optuna` known to Hydra."""
    ConfigStore.instance().store(
        group="hydra/sweeper", name="gradtrain_optuna", node=OptunaSweeperConf, provider="gradtrain"
    )


@dataclass
class SearchSpace:
    """What a trial's overrides are made of."""

    distributions: dict[str, BaseDistribution]  # searched: override key -> distribution
    fixed: list[str]  # given to every trial as they are
    where: dict[str, str]  # override key -> the key a user wrote it under (for messages)

    def describe(self, direction: str) -> dict[str, Any]:
        """Plain data that identifies the search, kept in the study (SEARCH_ATTR)."""
        from optuna.distributions import distribution_to_json

        return {
            "direction": direction,
            "params": {k: distribution_to_json(d) for k, d in sorted(self.distributions.items())},
            "fixed": sorted(self.fixed),
        }


class OptunaSearch:
    """The sweeper's logic (the Hydra plugin in hydra_plugins/ only forwards to it)."""

    def __init__(self, **settings: Any) -> None:
        self.settings: dict[str, Any] = {
            key: OmegaConf.to_container(value, resolve=True)
            if isinstance(value, DictConfig)
            else value
            for key, value in settings.items()
        }
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher: Launcher | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        from hydra.core.plugins import Plugins

        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )
        self.sweep_dir = Path(str(config.hydra.sweep.dir))

    # ------------------------------------------------------------------------------- the sweep
    def sweep(self, arguments: list[str]) -> None:
        if importlib.util.find_spec("optuna") is None:
            print(
                'gradtrain: hparams_search=optuna needs Optuna: pip install -e ".[sweeps]"',
                file=sys.stderr,
            )
            raise SystemExit(1)
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # gradtrain logs each trial itself
        space, problems = self._settings_problems(arguments)
        study = None
        if not problems:
            assert space is not None
            study, problems = self._open_study(space)
        if problems:
            self._refuse(problems)
        assert study is not None and space is not None
        self._fail_trials_of_dead_workers(study)
        n_trials = int(self.settings["n_trials"])
        log.info(
            f"Optuna study {study.study_name!r} in {self._storage_shown()}: "
            f"{len(study.trials)} of {n_trials} trials so far; sampler "
            f"{type(study.sampler).__name__}, pruner {type(study.pruner).__name__}"
        )
        while (trial := self._ask(study, space, n_trials)) is not None:
            if not self._run_trial(study, trial, space):
                break  # interrupted (Ctrl-C, SIGTERM): the search stops with the trial
        self._finish(study)

    def _ask(
        self, study: optuna.Study, space: SearchSpace, n_trials: int
    ) -> optuna.trial.Trial | None:
        """The next trial, or None once the study holds `n_trials` (with every worker's)."""
        with self._ask_lock():
            if len(study.get_trials(deepcopy=False)) >= n_trials:
                return None
            trial = study.ask(fixed_distributions=space.distributions)
        trial.set_user_attr(WORKER_ATTR, {"host": socket.gethostname(), "pid": os.getpid()})
        return trial

    @contextlib.contextmanager
    def _ask_lock(self) -> Iterator[None]:
        """Counting the trials and asking for one, as one step among the workers that share a
        journal file (a database's workers may overshoot `n_trials` by one each, rarely)."""
        journal = self._journal_path()
        if journal is None:
            yield
            return
        from optuna.storages.journal import JournalFileOpenLock

        lock = JournalFileOpenLock(f"{journal}.ask")
        lock.acquire()
        try:
            yield
        finally:
            lock.release()

    def _run_trial(
        self, study: optuna.Study, trial: optuna.trial.Trial, space: SearchSpace
    ) -> bool:
        """Run one trial as a job of the sweep and tell Optuna how it ended; False when it was
        interrupted (the search then stops)."""
        from optuna.trial import TrialState

        assert self.launcher is not None
        overrides = [*(f"{k}={_override_value(v)}" for k, v in trial.params.items()), *space.fixed]
        reporter = _OptunaReporter(trial)
        value: Any = None
        status = "failed"
        try:
            with trial_report.reporting_to(reporter):
                # The job's number is the trial's: unique in the study, so in the sweep folder.
                [job] = self.launcher.launch([overrides], initial_job_idx=trial.number)
            run_dir = Path(str(job.hydra_cfg.hydra.runtime.output_dir)) if job.hydra_cfg else None
            value = job.return_value  # (raises what the job raised)
            status = _job_status(run_dir) or status
            if run_dir is not None:
                trial.set_user_attr("run_dir", str(run_dir))
        except Exception as exc:  # a job Hydra could not even start: recorded, the search goes on
            log.error(f"gradtrain: trial {trial.number} failed: {type(exc).__name__}: {exc}")
        if reporter.pruned:
            study.tell(trial, state=TrialState.PRUNED)
            log.info(f"Trial {trial.number} pruned at step {reporter.last_step}.")
        elif isinstance(value, float) and math.isfinite(value):
            study.tell(trial, value)
        else:  # failed or diverged: its summary.json and the sweep summary say why
            trial.set_user_attr("status", status)
            study.tell(trial, state=TrialState.FAIL)
        if status == "interrupted":
            log.error(
                f"gradtrain: the search stopped with trial {trial.number}; continue it with "
                f"the same command and hydra.sweeper.resume={self.sweep_dir}"
            )
            return False
        return True

    def _finish(self, study: optuna.Study) -> None:
        """Write the best trial to optimization_results.yaml, and tell the sweep summary which
        jobs other workers are still running (no summary.json yet, and not failed)."""
        from optuna.trial import TrialState

        trials = study.get_trials(deepcopy=False)
        counts = {
            state.name.lower(): sum(t.state == state for t in trials)
            for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        }
        running = [t.number for t in trials if t.state == TrialState.RUNNING]
        sweep_summary.mark_running(running)
        completed = [t for t in trials if t.state == TrialState.COMPLETE]
        results: dict[str, Any] = {
            "name": "optuna",
            "study_name": study.study_name,
            "storage": self._storage_shown(),
            "trials": {**counts, "running": len(running)},
            "best_params": None,
            "best_value": None,
            "best_trial": None,
        }
        if completed:
            best = study.best_trial
            results.update(best_params=best.params, best_value=best.value, best_trial=best.number)
            log.info(f"Best trial {best.number}: {best.value} with {best.params}")
        else:
            log.error("gradtrain: no trial of the search completed")
        text = OmegaConf.to_yaml(OmegaConf.create(results))
        write_atomic(self.sweep_dir / RESULTS_FILE, lambda file: file.write(text.encode()))
        log.info(f"Watch the study live: optuna-dashboard {self._storage_shown()}")

    # -------------------------------------------------------------------------------- checks
    def _settings_problems(self, arguments: list[str]) -> tuple[SearchSpace | None, list[str]]:
        """Every problem of hydra.sweeper.* and of the search space, by key."""
        s = self.settings
        problems = []
        n_trials = s["n_trials"]
        if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
            problems.append(f"hydra.sweeper.n_trials={n_trials}: must be a whole number >= 1")
        if s["direction"] not in DIRECTIONS:
            problems.append(
                f"hydra.sweeper.direction={s['direction']}: must be one of {', '.join(DIRECTIONS)}"
            )
        if s["sampler"] not in SAMPLERS:
            problems.append(
                f"hydra.sweeper.sampler={s['sampler']}: unknown sampler; choose one of "
                f"{', '.join(SAMPLERS)}"
            )
        elif s["sampler"] == "cmaes" and importlib.util.find_spec("cmaes") is None:
            problems.append(
                'hydra.sweeper.sampler=cmaes needs the cmaes package: pip install -e ".[sweeps]"'
            )
        seed = s["seed"]
        if seed is not None and (
            isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32
        ):
            problems.append(
                f"hydra.sweeper.seed={seed}: must be null or a whole number 0 .. 2**32-1"
            )
        if s["pruner"] not in (None, "none", *PRUNERS):
            problems.append(
                f"hydra.sweeper.pruner={s['pruner']}: unknown pruner; choose one of "
                f"{', '.join(PRUNERS)} or null"
            )
        elif s["pruner"] not in (None, "none") and not self._launches_in_process():
            problems.append(
                f"hydra.sweeper.pruner={s['pruner']}: a pruner needs the trials in this process "
                "(hydra/launcher=basic, the default) to hear from them while they train; run "
                "several workers instead of a parallel launcher"
            )
        for key in ("study_name", "storage", "resume"):
            value = s[key]
            if (value is not None or key == "study_name") and (
                not isinstance(value, str) or not value
            ):
                problems.append(f"hydra.sweeper.{key}={value}: must be a non-empty string")
        problems += self._resume_problems()
        space, space_problems = parse_search_space(s["params"] or {}, arguments)
        problems += space_problems
        if not space_problems:
            problems += self._composition_problems(space)
        return space, problems

    def _launches_in_process(self) -> bool:
        assert self.config is not None
        target = str(self.config.hydra.launcher.get("_target_", ""))
        return target.endswith("BasicLauncher")

    def _resume_problems(self) -> list[str]:
        resume = self.settings["resume"]
        if not isinstance(resume, str) or not resume:
            return []
        folder = Path(resume)
        if not folder.is_dir():
            return [f"hydra.sweeper.resume={resume}: no such folder (give the sweep folder)"]
        if folder.resolve() != self.sweep_dir.resolve():
            return [
                f"hydra.sweeper.resume={resume}: hydra.sweep.dir={self.sweep_dir} names another "
                "folder; give only hydra.sweeper.resume (train.py makes it the sweep folder)"
            ]
        if self.settings["storage"] is None and not (folder / JOURNAL_FILE).is_file():
            return [f"hydra.sweeper.resume={resume}: holds no Optuna study ({JOURNAL_FILE})"]
        return []

    def _composition_problems(self, space: SearchSpace) -> list[str]:
        """Compose a job with each choice (and each interval's low end) before any trial runs,
        so that a value Hydra cannot compose (an unknown option of a group, a misspelt key)
        stops the search now rather than failing trial after trial."""
        assert self.config is not None and self.hydra_context is not None
        problems = []
        for key, distribution in space.distributions.items():
            values = getattr(distribution, "choices", None) or [distribution.low]  # type: ignore[attr-defined]
            for value in values:
                try:
                    self.hydra_context.config_loader.load_sweep_config(
                        self.config, [*space.fixed, f"{key}={_override_value(value)}"]
                    )
                except Exception as exc:
                    message = " ".join(str(exc).split()).split(" Config search path")[0]
                    problems.append(f"{space.where[key]}: {key}={value}: {message}")
                    break
        return problems

    def _open_study(self, space: SearchSpace) -> tuple[optuna.Study | None, list[str]]:
        """Create the study, or load it to continue or join; refuse one of another search."""
        import optuna

        s = self.settings
        try:
            storage = self._storage()
            existing = optuna.study.get_all_study_names(storage)
        except Exception as exc:  # a URL SQLAlchemy cannot use, a database it cannot reach
            return None, [f"hydra.sweeper.storage={s['storage']}: {type(exc).__name__}: {exc}"]
        if s["resume"] is not None and s["study_name"] not in existing:
            return None, [
                f"hydra.sweeper.resume={s['resume']}: holds no study named {s['study_name']} "
                f"(hydra.sweeper.study_name; it holds: {', '.join(existing) or 'none'})"
            ]
        seed = s["seed"]
        if seed is not None and s["study_name"] in existing:
            # A worker joining (or resuming) the study continues the seeded stream elsewhere:
            # with the very same seed its first draws would repeat the study's first trials.
            done = len(optuna.load_study(study_name=s["study_name"], storage=storage).trials)
            seed = (seed + done) % 2**32
        study = optuna.create_study(
            study_name=s["study_name"],
            storage=storage,
            sampler=_sampler(s["sampler"], seed),
            pruner=_pruner(s["pruner"]),
            direction=s["direction"],
            load_if_exists=True,
        )
        wanted = space.describe(s["direction"])
        found = study.user_attrs.get(SEARCH_ATTR)
        if found is None:
            study.set_user_attr(SEARCH_ATTR, wanted)
        elif found != wanted:
            key = "hydra.sweeper.resume" if s["resume"] is not None else "hydra.sweeper.storage"
            return None, [
                f"{key}: study {s['study_name']!r} there searches another space "
                f"({_differences(found, wanted)}); search it with its own settings, or start "
                "a new search (another hydra.sweeper.study_name or sweep folder)"
            ]
        return study, []

    def _refuse(self, problems: list[str]) -> None:
        """Exit 2 listing every problem, leaving the fresh sweep folder as it was (none)."""
        print(f"gradtrain: {ConfigError(problems)}", file=sys.stderr, flush=True)
        if self.settings["resume"] is None:
            with contextlib.suppress(OSError):
                self.sweep_dir.rmdir()  # claimed empty when the sweep started; still empty
        raise SystemExit(ConfigError.exit_code)

    def _fail_trials_of_dead_workers(self, study: optuna.Study) -> None:
        """Trials left running by a process of this machine that is gone (a killed search)
        are told as failed; their folders hold no summary.json, and the summary says so."""
        from optuna.trial import TrialState

        host = socket.gethostname()
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            worker = trial.user_attrs.get(WORKER_ATTR) or {}
            if worker.get("host") == host and not _process_alive(int(worker.get("pid", 0))):
                study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
                log.warning(
                    f"Trial {trial.number} was left running by a process that died "
                    f"(pid {worker.get('pid')}): recorded as failed."
                )

    # ------------------------------------------------------------------------------- storage
    def _journal_path(self) -> Path | None:
        storage = self.settings["storage"]
        if storage is None:
            return self.sweep_dir / JOURNAL_FILE
        return None if "://" in storage else Path(storage)

    def _storage(self) -> Any:
        journal = self._journal_path()
        if journal is None:
            return self.settings["storage"]  # a database URL, opened by Optuna
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        journal.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(journal)))

    def _storage_shown(self) -> str:
        journal = self._journal_path()
        return str(journal) if journal is not None else str(self.settings["storage"])


class _OptunaReporter:
    """trial_report.TrialReporter for one Optuna trial."""

    def __init__(self, trial: optuna.trial.Trial) -> None:
        self.trial = trial
        self.pruned = False
        self.last_step: int | None = None

    def report(self, step: int, value: float, final: bool) -> bool:
        if step == self.last_step:
            return False  # (validated again at the same step: already reported)
        self.trial.report(value, step)
        self.last_step = step
        if not final and self.trial.should_prune():
            self.pruned = True
        return self.pruned


# ---------------------------------------------------------------------------- the search space
def parse_search_space(
    params: Mapping[str, Any], arguments: list[str]
) -> tuple[SearchSpace, list[str]]:
    """The search space from `hydra.sweeper.params` and the command line's overrides (which
    win for the keys they name), each read by Hydra's override parser; and the problems."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    # (`hydra.sweeper.params.optimizer.lr=...` on the command line nests the key: flattened,
    # it is `optimizer.lr`, as a YAML file writes it.)
    lines = [(f"hydra.sweeper.params.{k}", f"{k}={v}") for k, v in flattened(params).items()]
    lines += [(line.split("=", 1)[0], line) for line in arguments]
    parsed: dict[str, tuple[str, Override]] = {}
    problems = []
    for where, line in lines:
        try:
            [override] = parser.parse_overrides([line])
        except Exception as exc:
            problems.append(f"{where}: {' '.join(str(exc).split())}")
            continue
        parsed[override.get_key_element()] = (where, override)  # a later one wins
    space = SearchSpace({}, [], {})
    for key, (where, override) in parsed.items():
        space.where[key] = where
        if not override.is_sweep_override():
            space.fixed.append(
                override.input_line or f"{key}={override.get_value_element_as_str()}"
            )
            continue
        try:
            space.distributions[key] = _distribution(override)
        except (ValueError, TypeError) as exc:
            problems.append(f"{where}={(override.input_line or '').split('=', 1)[-1]}: {exc}")
    return space, problems


def _distribution(override: Override) -> BaseDistribution:
    """Optuna's distribution for one sweep of Hydra's grammar."""
    from hydra.core.override_parser.types import IntervalSweep, RangeSweep, Transformer
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    value = override.value()
    if override.is_choice_sweep() or (override.is_range_sweep() and value.shuffle):  # type: ignore[union-attr]
        choices = list(override.sweep_iterator(transformer=Transformer.encode))
        if not choices:
            raise ValueError("chooses nothing")
        if not all(isinstance(c, str | int | float | bool) or c is None for c in choices):
            raise ValueError("a choice must be a single value (no list or dict)")
        return CategoricalDistribution(choices)  # type: ignore[arg-type]
    if isinstance(value, RangeSweep):
        numbers = list(override.sweep_iterator())
        if not numbers:
            raise ValueError("the range holds no value")
        low, high = numbers[0], numbers[-1]
        assert isinstance(low, int | float) and isinstance(high, int | float)
        if isinstance(low, int) and isinstance(high, int) and isinstance(value.step, int):
            return IntDistribution(low, high, step=value.step)
        return FloatDistribution(float(low), float(high), step=float(value.step))
    if isinstance(value, IntervalSweep):
        unknown = set(value.tags) - {"log"}
        if unknown:
            raise ValueError(f"unknown tag {', '.join(sorted(unknown))}; only `log` is read")
        log_scale = "log" in value.tags  # (Hydra's interval is of floats: range for whole numbers)
        return FloatDistribution(float(value.start), float(value.end), log=log_scale)  # type: ignore[arg-type]
    raise ValueError("only choice(...), range(...) and interval(...) can be searched")


def _override_value(value: Any) -> str:
    """A sampled value as Hydra's grammar reads it back (choices are kept encoded already)."""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _differences(found: Mapping[str, Any], wanted: Mapping[str, Any]) -> str:
    keys = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
    return "; ".join(
        f"{k}: {json.dumps(found.get(k))} there, {json.dumps(wanted.get(k))} now" for k in keys
    )


# ----------------------------------------------------------------------- samplers and pruners
def _sampler(name: str, seed: int | None) -> optuna.samplers.BaseSampler:
    import optuna

    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def _pruner(name: str | None) -> optuna.pruners.BasePruner:
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner()
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.NopPruner()


# ------------------------------------------------------------------------------------- helpers
def _job_status(run_dir: Path | None) -> str | None:
    """The `status` of the job's summary.json (completed, failed, diverged, interrupted...)."""
    if run_dir is None:
        return None
    try:
        status = json.loads((run_dir / sweep_summary.JOB_SUMMARY).read_text()).get("status")
    except (OSError, ValueError):
        return None
    return status if isinstance(status, str) else None


def _process_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True
