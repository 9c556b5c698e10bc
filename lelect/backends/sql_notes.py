"""The notes verbs' reads and deletes for the backends that speak SQL (PostgreSQL,
MariaDB/MySQL): each renders its own dialect's GET_NOTE and DELETE_NOTE (its ``sql``
module) and runs them with its own bounded ``_read``/``_write``."""

from __future__ import annotations

from lelect.backends.base import MAX_NOTE, check_note_key
from lelect.names import validate_stored

TYPE_CHECKING = False  # not typing's (~1.5 ms of every start): annotations only
if TYPE_CHECKING:
    from typing import Any


class SqlNotes:
    """A mixin: the backend sets ``notes_sql`` (its statements) and has ``render``,
    ``_read`` and ``_write``."""

    notes_sql: Any

    def get_note(self, election: str, key: str) -> bytes | None:
        validate_stored(election)
        rows = self._read(self.render(self.notes_sql.GET_NOTE, election=election,  # type: ignore[attr-defined]
                                      key=check_note_key(key), max_bytes=MAX_NOTE))
        return bytes(rows[0][0]) if rows and rows[0][0] is not None else None

    def delete_note(self, election: str, key: str) -> None:
        validate_stored(election)
        self._write(self.render(self.notes_sql.DELETE_NOTE, election=election,  # type: ignore[attr-defined]
                                key=check_note_key(key)), create=False)
