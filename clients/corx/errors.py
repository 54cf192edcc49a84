"""The one exception type the command line turns into a clean error message."""


class CorxError(Exception):
    """A user-facing error: bad input, missing file, refused overwrite. The message names the culprit."""


#: Errors that mean "bad input" rather than "a bug": the command line prints them as one line, exit code 2.
#: Anything else keeps its traceback (exit code 1).
USER_ERRORS: tuple[type[Exception], ...] = (CorxError, ValueError, FileNotFoundError, FileExistsError,
                                            NotADirectoryError)
