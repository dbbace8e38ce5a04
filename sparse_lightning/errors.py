"""The one error type for bad user input, and the one-line form of every bad-input error: the
entry point shows each as ``sparse-train: error: <line>``."""

from __future__ import annotations

from hydra.errors import MissingConfigException, OverrideParseException


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the value and what is allowed."""


class UsageError(ConfigError):
    """The command line itself is malformed: an unknown flag, a flag missing its value."""


def one_line(text: str) -> str:
    """A message on one line: its non-empty lines joined by "; " (trailing "." or ":" dropped),
    up to Hydra's "Config search path:" listing, which names no bad value."""
    parts = []
    for line in str(text).splitlines():
        line = line.strip()
        if line.startswith("Config search path"):
            break
        if line:
            parts.append(line.rstrip(".:") if len(line) > 1 else line)
    return "; ".join(parts)


def describe_bad_input(error: BaseException) -> str:
    """One line for an error Hydra or OmegaConf raised on a bad command line or config value:
    an unknown group option names the options there are, an unparsable override is quoted, and
    any other message is folded onto one line with the first line of its cause."""
    if isinstance(error, MissingConfigException) and error.options is not None:
        group, _, option = str(error.missing_cfg_file).rpartition("/")
        if group:
            options = ", ".join(error.options) or "none"
            return f"{group}={option} is not an option of '{group}'; the options are {options}"
    if isinstance(error, OverrideParseException):
        return f"cannot parse the override '{error.override}': {one_line(error.message)}"
    text = one_line(str(error))
    head, *rest = text.split("; ")
    cause = one_line(str(error.__cause__ or "")).split("; ")[0]
    if cause and cause not in text:
        head += f": {cause}"
    return "; ".join([head, *rest]) or type(error).__name__
