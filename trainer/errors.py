"""Errors that reach the user as a short message instead of a traceback."""

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
