"""Parse human durations such as ``90s``, ``5m``, ``1h30m`` or a bare number of seconds."""

from __future__ import annotations

import re

from .errors import ConfigError

_UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smh])")


def parse_duration(value: str | float | int | None, *, field: str = "budget") -> float | None:
    """Return seconds, or None for None. Raises ConfigError naming ``field`` on bad input."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        text = str(value).strip().lower().replace(" ", "")
        try:
            seconds = float(text)
        except ValueError:
            parts = _PART.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise ConfigError(
                    f"{field}: cannot read {value!r} as a duration; "
                    "write seconds (300) or a duration such as 90s, 5m, 1h30m"
                ) from None
            seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    if seconds <= 0:
        raise ConfigError(f"{field}: must be positive, got {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """Short human form: 75 -> '1m15s' (negative times show as 0s)."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"
