"""The one exception type cliplab raises for bad input: callers catch it to print a clear message."""


class CliplabError(ValueError):
    """Bad input named precisely: unknown model, missing folder, corrupt image, bad checkpoint."""
