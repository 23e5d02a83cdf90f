"""Errors caused by the user's input: the CLI prints them as one line and exits with status 2."""


class UserError(ValueError):
    """Bad input; the message names the field, the value and the fix."""


class MissingModelError(UserError, FileNotFoundError):
    """Model files (weights, licensed body models) that are not on disk."""


class ErrorBudgetExceeded(RuntimeError):
    """More samples failed than the recipe's ``output.max_errors`` allows."""
