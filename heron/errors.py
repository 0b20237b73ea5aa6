"""Error types raised by heron-rl for bad input."""


class ConfigError(ValueError):
    """A configuration, ranking or environment that heron-rl cannot use.

    The message is one line and names the offending field or factor.
    """


class FactorError(ConfigError):
    """An environment that does not report the factors the ranking needs."""
