"""The one exception type for mistakes a user can fix; the CLI prints it as one line, exit code 2."""


class UserError(ValueError):
    """Bad input: the message names the input and the fix."""
