"""The one exception type cliplab raises for bad input: callers catch it to print a clear message."""


class CliplabError(ValueError):
    """Bad input named precisely: unknown model, missing folder, corrupt image, bad checkpoint."""


class DownloadError(CliplabError):
    """A download that failed on the way (network, server): worth retrying, unlike bad input."""
