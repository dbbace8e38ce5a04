"""The one error type for bad user input: caught at the entry point and shown as one line."""


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the value and what is allowed."""
