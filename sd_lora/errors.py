"""The one exception type the CLI turns into a clean message (no traceback)."""

__all__ = ["SdLoraError"]


class SdLoraError(Exception):
    """A problem the user can fix: bad config, bad path, bad file.

    The message says what was wrong, where, and what to do about it.
    """
