class InputError(Exception):
    """Bad input from the user (flags, files, data): reported as one line, exit code 2, no traceback."""
