"""Errors the CLI prints as one line: the user's input (exit 2), and runs that stop (exit 1, or
128 + the signal when interrupted)."""


class UserError(ValueError):
    """Bad input; the message names the field, the value and the fix."""


class MissingModelError(UserError, FileNotFoundError):
    """Model files (weights, licensed body models) that are not on disk."""


class ErrorBudgetExceeded(RuntimeError):
    """More samples failed than the recipe's ``output.max_errors`` allows."""


class StorageError(RuntimeError):
    """The output storage failed after retries (an upload, a full disk); complete shards are kept."""


class WorkLost(RuntimeError):
    """Work kept dying with its worker process or node, more often than the recipe allows retries
    (``output.ray.max_retries``); complete shards are kept."""


class Interrupted(RuntimeError):
    """SIGTERM / SIGINT stopped a run; complete shards are kept. ``signum`` gives the exit status."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
