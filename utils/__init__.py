class InputError(Exception):
    """Bad input from the user (flags, files, data): reported as one line, exit code 2, no traceback."""


class RunError(Exception):
    """A run that cannot go on (a failed write, a non-finite loss, an interruption): one line, exit code 1
    (or 128 + the signal number for an interruption)."""
    def __init__(self, message, exit_code=1):
        super().__init__(message)
        self.exit_code = exit_code
