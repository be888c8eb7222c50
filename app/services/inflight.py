"""How many calls may be in flight to one downstream service, and the slots that hold that limit.

`current_limit(view)` is the one place that says what a service's in-flight limit is right now;
everything that takes a slot asks it. Today it is the registry's `max_concurrency`; a policy
that changes the limit at runtime plugs in here and nowhere else.
"""

from __future__ import annotations

from typing import Protocol


class _HasLimit(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def max_concurrency(self) -> int: ...


def current_limit(view: _HasLimit) -> int:
    """The number of calls that may be in flight to the service of `view`, over all workers."""
    return max(int(view.max_concurrency), 1)
