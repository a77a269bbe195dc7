"""Every error gradtrain raises on purpose. Each reaches the user as a short message (train.py
prints it without a traceback and exits with its `exit_code`), and a notebook as an exception."""

from __future__ import annotations


class GradtrainError(Exception):
    """A problem the user can fix; train.py prints it without a traceback and exits non-zero."""

    exit_code = 1


class ConfigError(GradtrainError):
    """The composed config is invalid; `problems` holds one line per offending key."""

    exit_code = 2

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        count = f"{len(problems)} problem" + ("s" if len(problems) != 1 else "")
        body = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(f"Invalid configuration ({count}):\n{body}")


class GradientCheckError(GradtrainError):
    """explain=true found autograd's gradient and a reference further apart than the stated
    tolerance: training on that gradient would not be trustworthy."""


class DataError(GradtrainError):
    """The data itself is unusable; the message names the file, line, column and value."""


class CheckpointError(GradtrainError):
    """A checkpoint file is missing, corrupt, or holds more than tensors and plain data."""


class TrainingDiverged(GradtrainError):
    """The loss or a gradient became non-finite; the summary and last checkpoint are kept."""

    exit_code = 3


class TrainingInterrupted(GradtrainError):
    """A signal stopped the run after a checkpoint; resume with trainer.resume=auto."""

    def __init__(self, message: str, signal_number: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signal_number  # the shell's convention for "killed by signal"


class ResumeConfigMismatch(ConfigError):
    """trainer.resume would continue a checkpoint saved with other values of keys that change
    what is trained; `problems` holds one line per differing key, with both values."""

    def __init__(self, checkpoint: str, problems: list[str], may_change: str) -> None:
        self.problems = problems
        body = "\n".join(f"  - {problem}" for problem in problems)
        count = f"{len(problems)} key" + ("s" if len(problems) != 1 else "")
        GradtrainError.__init__(
            self,
            f"cannot resume from {checkpoint}: it was saved by a run configured differently "
            f"({count}):\n{body}\nA resumed run continues the same training: only how long and "
            f"how often may change ({may_change}). Resume with the checkpoint's values, or "
            "train these as a new run in another hydra.run.dir (leave it unset for a fresh "
            "folder).",
        )
