"""The one exception type for problems a user can cause (bad path, wrong store, bad flag...).

The CLI prints its message as a single line and exits with code 2; library code raises it with a message
that says what is wrong and, where possible, how to fix it.
"""


class AdaslotError(Exception):
    """A user-facing error: the message is shown as one line, without a traceback."""
