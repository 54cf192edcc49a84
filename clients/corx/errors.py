"""The one exception type the command line turns into a clean error message."""


class CorxError(Exception):
    """A user-facing error: bad input, missing file, refused overwrite. The message names the culprit."""
