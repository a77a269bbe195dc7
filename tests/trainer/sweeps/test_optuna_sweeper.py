"""gradtrain's Optuna sweeper in this process: the search space read by Hydra's override parser,
the reporter a trial's validations reach, and a pruned run's summary. The searches themselves
(subprocesses of train.py -m) are in tests/test_optuna_sweeps.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gradtrain.sweeps import trial_report
from gradtrain.sweeps.summary import collect_rows, markdown_table

optuna = pytest.importorskip("optuna", reason='pip install -e ".[sweeps]"')

from optuna.distributions import (  # noqa: E402
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from gradtrain.sweeps.optuna_sweeper import parse_search_space  # noqa: E402


def test_the_search_space_is_read_with_hydras_grammar_and_the_command_line_wins() -> None:
    space, problems = parse_search_space(
        {
            "optimizer": "choice(sgd, adam)",
            "optimizer.lr": "tag(log, interval(0.001, 1.5))",
            "trainer.max_steps": "range(10, 40, 10)",
        },
        ["optimizer.lr=interval(0.01,0.1)", "logger=none", "model.hidden=range(1,3)"],
    )
    assert problems == []
    assert space.distributions == {
        "optimizer": CategoricalDistribution(["sgd", "adam"]),
        "optimizer.lr": FloatDistribution(0.01, 0.1),  # the command line's, not log-scaled
        "trainer.max_steps": IntDistribution(10, 30, step=10),  # range's end is exclusive
        "model.hidden": IntDistribution(1, 2),
    }
    assert space.fixed == ["logger=none"]
    assert space.where["optimizer"] == "hydra.sweeper.params.optimizer"
    assert space.where["optimizer.lr"] == "optimizer.lr"


def test_a_nested_params_entry_is_the_dotted_key_a_yaml_file_writes() -> None:
    space, problems = parse_search_space({"optimizer": {"lr": "interval(1, 2)"}}, [])
    # (Hydra's interval is of floats; range(...) searches whole numbers)
    assert problems == [] and space.distributions == {"optimizer.lr": FloatDistribution(1, 2)}


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"optimizer.lr": "interval(0.1"}, "hydra.sweeper.params.optimizer.lr"),
        ({"optimizer.lr": "tag(log, interval(0, 1.0))"}, "hydra.sweeper.params.optimizer.lr"),
        ({"optimizer.lr": "tag(fast, interval(0.1, 1.0))"}, "hydra.sweeper.params.optimizer.lr"),
        ({"trainer.max_steps": "range(5, 1)"}, "hydra.sweeper.params.trainer.max_steps"),
        ({"optimizer.lr": "interval(1.0, 0.1)"}, "hydra.sweeper.params.optimizer.lr"),
    ],
)
def test_a_search_space_the_parser_or_optuna_rejects_is_a_problem_naming_its_key(
    params: dict[str, str], named: str
) -> None:
    _, problems = parse_search_space(params, [])
    assert len(problems) == 1 and problems[0].startswith(named), problems


class PruneAtFirstValidation:
    """A pruner's verdict, as the sweeper's reporter gives it: stop at the first validation."""

    def __init__(self) -> None:
        self.reports: list[tuple[int, float, bool]] = []

    def report(self, step: int, value: float, final: bool) -> bool:
        self.reports.append((step, value, final))
        return not final


def test_a_pruned_run_stops_at_a_validation_with_status_pruned(
    quick_run: Callable[..., Any], tmp_path: Path
) -> None:
    reporter = PruneAtFirstValidation()
    with trial_report.reporting_to(reporter):
        result = quick_run(
            "experiment=logistic_regression",
            "dataset.n_samples=64",
            "dataset.batch_size=16",
            "trainer.max_steps=null",
            "trainer.max_epochs=5",
        )
    summary = result.summary
    assert summary["status"] == "pruned" and summary["stop_reason"] == "pruned"
    assert summary["epochs"] == 1 and summary["steps"] == 4  # 48 training samples / 16
    # The reporter heard the monitored metric (val_loss) at that validation only.
    assert reporter.reports == [(4, summary["val_loss"], False)]
    assert "pruned" in summary["message"]
    # Outside the block nothing is reported: the same run trains to its end.
    assert (
        quick_run(
            "experiment=logistic_regression",
            "dataset.n_samples=64",
            "dataset.batch_size=16",
            "trainer.max_steps=null",
            "trainer.max_epochs=2",
        ).summary["status"]
        == "completed"
    )


def test_pruned_jobs_get_their_own_section_of_the_summary_and_do_not_fail_the_sweep(
    quick_run: Callable[..., Any], tmp_path: Path
) -> None:
    sweep_dir = tmp_path / "sweep"
    with trial_report.reporting_to(PruneAtFirstValidation()):
        quick_run(
            "experiment=logistic_regression",
            "dataset.n_samples=64",
            "trainer.max_steps=null",
            "trainer.max_epochs=3",
            run_dir=sweep_dir / "0_pruned",
        )
    rows = collect_rows(sweep_dir)
    assert [row.status for row in rows] == ["pruned"]
    assert rows[0].monitored_value is None and "val_loss" in rows[0].val_metrics
    assert "| pruned |" in markdown_table(rows)


def test_should_prune_reports_only_a_finite_validation_metric_the_run_is_judged_by() -> None:
    reporter = PruneAtFirstValidation()
    assert not trial_report.should_prune(3, None, {"loss": 0.5}, final=False)  # none installed
    with trial_report.reporting_to(reporter):
        assert trial_report.should_prune(3, None, {"loss": 0.5}, final=False)
        assert not trial_report.should_prune(4, "final_loss", {"loss": 0.5}, final=False)
        assert not trial_report.should_prune(5, "val_loss", {"loss": float("nan")}, final=False)
        assert not trial_report.should_prune(6, "val_loss", {"loss": 0.25}, final=True)
    assert reporter.reports == [(3, 0.5, False), (6, 0.25, True)]


@pytest.mark.parametrize(
    ("name", "kind"),
    [("tpe", "TPESampler"), ("random", "RandomSampler"), ("cmaes", "CmaEsSampler")],
)
def test_each_sampler_name_is_optunas_sampler_seeded(name: str, kind: str) -> None:
    from optuna.distributions import FloatDistribution

    from gradtrain.sweeps.optuna_sweeper import _sampler

    draws = []
    for _ in range(2):
        study = optuna.create_study(sampler=_sampler(name, 7))
        draws.append(study.ask({"x": FloatDistribution(0, 1)}).params["x"])
    assert type(study.sampler).__name__ == kind and draws[0] == draws[1]


def test_a_job_another_worker_still_runs_is_listed_as_running_not_failed(tmp_path: Path) -> None:
    from test_sweep_summary import make_job

    from gradtrain.sweeps.summary import mark_running

    make_job(tmp_path, 0, ["optimizer.lr=0.1"])
    make_job(tmp_path, 1, ["optimizer.lr=0.2"])
    mark_running([1])
    try:
        statuses = {row.number: row.status for row in collect_rows(tmp_path)}
    finally:
        mark_running([])
    assert statuses == {0: "failed", 1: "running"}
