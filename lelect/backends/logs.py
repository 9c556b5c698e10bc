"""A backend's logger, with :mod:`logging` imported at its first message.

``logging`` costs some 3 ms of CPU and 1.4 MB of every waiting candidate, and a backend
logs rarely (a schema created, a release that failed). Standard library only.
"""

from __future__ import annotations


class Logger:
    """``logging.getLogger(name)``, looked up (and :mod:`logging` imported) on use:
    ``log.warning(...)`` and the rest work as on the logger itself."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __getattr__(self, attribute: str):  # noqa: ANN204 - the logger's own
        import logging

        return getattr(logging.getLogger(self.name), attribute)
