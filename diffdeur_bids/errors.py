"""Errors of the BIDS App that the user can fix.

The library raises these typed errors with a message that says what is wrong and what to do;
only the command line (``cli.py``) turns them into exit codes, so the mapping lives in one place.
"""


class AppError(Exception):
    """Base class: a problem with the run's inputs or environment, explained in the message."""


class UsageError(AppError):
    """The arguments do not make sense together (exit 64)."""


class InputMissingError(AppError):
    """The input dataset is missing, unreadable, not BIDS, or holds no suitable scans (exit 66)."""


class OutputError(AppError):
    """The output or work folder cannot be created or written, or would be inside the input (exit 73)."""


class ValidationFailedError(AppError):
    """bids-validator-deno found errors in the input dataset (exit 16)."""


class UnknownLevelError(AppError):
    """The analysis level is not one this app runs (exit 17)."""


class EmptySelectionError(AppError):
    """The labels, filters or field-strength selection left nothing to process (exit 18)."""


class FeatureUnavailableError(AppError):
    """An option asks for a component this installation does not have (exit 1)."""


class ScanError(AppError):
    """One scan cannot be processed; the run goes on with the others and exits 1 (raised inside a scan's step)."""


class UnreadableScanError(ScanError):
    """The image data cannot be read: the file is truncated or corrupt."""


class NotEnoughMemoryError(ScanError):
    """The GPU or the machine ran out of memory on a scan, even after retrying with smaller batches."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's time limit, ``docker stop``), turned into the same clean stop as Ctrl-C (exit 143)."""
