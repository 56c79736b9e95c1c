"""The one exception type users see: its message is a single line the CLI prints as is."""


class FastpartError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class DatasetError(FastpartError):
    """A dataset source is missing, corrupt, truncated or has the wrong layout."""
