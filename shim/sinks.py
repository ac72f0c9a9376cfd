"""The one seam between the shim's reader and its drivers (types only, nothing at run time).

A sink takes records with ``add`` (buffered), delivers them with ``flush`` and finishes with
``close``; ``pending`` is how many records ``flush`` would deliver. JsonFileWriter,
FluentdSink and RingSink (which wraps one of the others in a thread) implement it.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    class Sink(Protocol):
        """What the reader needs from a driver."""

        def add(
            self,
            stream: str,
            log: str,
            time_ns: int,
            partial_id: str | None = None,
            partial_ordinal: int = 0,
            partial_last: bool = False,
        ) -> None: ...

        @property
        def pending(self) -> int: ...

        def flush(self) -> None: ...

        def close(self) -> None: ...
