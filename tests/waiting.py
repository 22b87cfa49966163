"""The one polling loop of the tests: wait for a condition, or fail saying what did not happen."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.5) -> None:
    """Call `condition` every `interval` seconds until it is true; after `timeout` seconds fail with `what`.

    `condition` may raise AssertionError itself to stop the wait early (a process that died).
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"after {timeout:.0f} s: {what}")
        time.sleep(interval)
