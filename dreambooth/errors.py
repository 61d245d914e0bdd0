"""One exception type for everything a user can fix.

The CLI prints its message as a single paragraph and exits with status 2 instead of a traceback.
Raise it with a message that names the offending file/flag and says what to do about it.
"""


class DreamboothError(Exception):
    """A problem with the user's input or environment, explained in plain words."""
