"""What a cell holds: empty or not, and the number it spells, the same for every task type."""

from __future__ import annotations

import math
import re
from typing import Any

# No leading zeros: "007" or "02134" are identifiers (codes, zip codes), not quantities.
# The digit cap keeps int() away from its size limit on long digit strings.
NUMBER = re.compile(r"[+-]?(?:0|[1-9][0-9]{0,30})(\.[0-9]+)?([eE][+-]?[0-9]{1,3})?")


def is_empty(value: Any) -> bool:
    """True for None and blank strings."""
    return value is None or (isinstance(value, str) and not value.strip())


def parse_number(value: Any) -> int | float | None:
    """The number a value holds (a real number or a plain numeric string), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if not isinstance(value, str):
        return None
    text = value.strip()
    match = NUMBER.fullmatch(text)
    if match is None:
        return None
    if match.group(1) is None and match.group(2) is None:
        return int(text)
    number = float(text)
    return number if math.isfinite(number) else None
