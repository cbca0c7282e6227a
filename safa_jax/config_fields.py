"""Checks of single config values, shared by the config checks and the methods' own config sections."""


def positive_int(value, field: str) -> None:
    """Raises ValueError naming `config.FIELD` unless `value` is an integer >= 1."""
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"config.{field} must be a positive integer, got {value!r}")
