"""One exception type for every user-facing error.

`train.py` and the command-line tools catch `DbdpoError` and print its message alone (no traceback):
every message names the setting to change.
"""


class DbdpoError(Exception):
    """A user-facing error whose message says what to change."""


class ConfigError(DbdpoError):
    """A configuration value is invalid."""


class DataError(DbdpoError):
    """Input data (concept images, prompt files, annotations) is missing or unreadable."""
