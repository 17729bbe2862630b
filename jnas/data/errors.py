"""The one exception type of the data layer."""

from __future__ import annotations


class DataError(ValueError):
    """Data that cannot be used: a bad name, split or path, or a corrupt file.

    The message is one line naming the data set, file or directory and the problem,
    so the CLI can print it as is and exit non-zero.
    """
