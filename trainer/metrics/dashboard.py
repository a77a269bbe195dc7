"""What TensorBoard needs, beyond scalars, to compare the runs of a sweep at a glance: a layout of
charts (the Custom Scalars tab) and each run's hyperparameters (the HParams tab).

Both are written into every run's own event file, so `tensorboard --logdir <sweep folder>` shows
the runs side by side and a run shows the same on its own.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from tensorboard.compat.proto.summary_pb2 import Summary

    from gradtrain.metrics.sinks import HParamValue

Value = TypeVar("Value")

# Custom Scalars: category -> chart title -> ("Multiline", regexes of the tags it overlays).
# TensorBoard merges the identical layouts of all runs into one, and draws every run's matching
# tags in each chart. Charts whose tags a run does not log (val/loss without validation data,
# update ratios when off) simply stay empty.
CHART_LAYOUT: dict[str, dict[str, list[str | list[str]]]] = {
    "loss": {
        "train vs val": ["Multiline", [r"^train/loss$", r"^val/loss$"]],
    },
    "gradients": {
        "global grad norm (before clipping)": ["Multiline", [r"^watch/grad_norm$"]],
        "grad norm per parameter": ["Multiline", [r"^watch/grad_norm/"]],
    },
    "optimizer": {
        "learning rate": ["Multiline", [r"^watch/lr$"]],
        "update-to-weight ratio per parameter": ["Multiline", [r"^watch/update_ratio/"]],
    },
}


def hparams_summaries(hparams: Mapping[str, HParamValue]) -> list[Summary]:
    """The session start and end records that put a run in the HParams tab.

    No experiment record is written on purpose. TensorBoard takes the first experiment record it
    finds as the list of hyperparameters for *all* runs, so a key one run lacks (momentum when
    another job of the sweep uses Adam) would vanish for every run. Without one, it builds the
    list from the union of all runs' keys and uses their scalars as metrics.
    (torch's `summary.hparams` always writes one, and stores booleans as numbers; hence this.)
    """
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams import api_pb2, metadata
    from tensorboard.plugins.hparams.plugin_data_pb2 import (
        HParamsPluginData,
        SessionEndInfo,
        SessionStartInfo,
    )

    start = SessionStartInfo()
    for name, value in hparams.items():
        if isinstance(value, bool):  # before int: bool is an int in Python
            start.hparams[name].bool_value = value
        elif isinstance(value, int | float):
            start.hparams[name].number_value = value
        else:
            start.hparams[name].string_value = value
    end = SessionEndInfo(status=api_pb2.STATUS_SUCCESS, end_time_secs=time.time())
    records = {
        metadata.SESSION_START_INFO_TAG: HParamsPluginData(session_start_info=start),
        metadata.SESSION_END_INFO_TAG: HParamsPluginData(session_end_info=end),
    }
    return [
        Summary(value=[Summary.Value(tag=tag, metadata=metadata.create_summary_metadata(data))])
        for tag, data in records.items()
    ]


def select_hparams(hparams: Mapping[str, Value], keys: Iterable[str] | None) -> dict[str, Value]:
    """The flattened `hparams` under `keys` (a group `optimizer` covers `optimizer.name`,
    `optimizer.lr`, ...), or all of them when `keys` is None or selects none."""
    if keys is None:
        return dict(hparams)
    prefixes = [key.lstrip("+~") for key in keys]
    chosen = {
        name: value
        for name, value in hparams.items()
        if any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)
    }
    return chosen or dict(hparams)
