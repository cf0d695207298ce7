"""Every error brinicle_etl raises on purpose.

One tree, so callers can catch ``BrinicleError`` and entry points (CLI, HTTP,
Dagster) can map each branch to their own form of failure::

    BrinicleError
    ├── ConfigError          a setting, policy, name or parameter is invalid   (ValueError)
    ├── InputError           the data is bad; the message says where           (ValueError)
    │   └── DimensionError   a vector has the wrong number of values
    ├── ConflictError        keys collide (insert of an existing key, a key twice in one write)
    │   └── PublishConflictError  another writer published the same generation first (object storage)
    ├── NotFoundError        no such collection, template, task or model       (LookupError)
    │   └── UnknownModelError  an embedding model named in a request or schema is not registered
    ├── AlreadyExistsError   creating something that exists
    ├── StateError           a call out of order (no session, session pending) (RuntimeError)
    │   └── TaskStateError   a task cannot be restarted or cancelled in its current status
    ├── LockedError          another writer holds the collection               (RuntimeError)
    ├── CorruptCollectionError  files on disk are missing or unreadable
    ├── EngineError          what the brinicle-compatible VectorEngine raises  (RuntimeError)
    ├── QuotaExceededError   a write would take an API key past its storage quota
    ├── DiskFullError        the disk (or quota) filled up while writing; nothing was published (OSError)
    ├── BusyError            too many writers queued on one collection, or waited too long; retry later
    ├── ObjectStoreError     the object store failed or refused a request (no credential in the message)
    └── MissingExtraError    an optional dependency is not installed           (ImportError)

Messages name the operation, say what is wrong, and where possible what to do
next. Third-party exceptions are translated where they are caught, with
``raise ... from`` so the original stays attached.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "AlreadyExistsError",
    "BrinicleError",
    "ConfigError",
    "ConflictError",
    "CorruptCollectionError",
    "DimensionError",
    "DiskFullError",
    "BusyError",
    "EngineError",
    "InputError",
    "LockedError",
    "MissingExtraError",
    "NotFoundError",
    "QuotaExceededError",
    "StateError",
    "TaskStateError",
    "UnknownModelError",
    "format_values",
]


class BrinicleError(Exception):
    """Root of every error raised by brinicle_etl."""


class ConfigError(BrinicleError, ValueError):
    """A setting, policy, name or parameter is invalid."""


class InputError(BrinicleError, ValueError):
    """Input data is malformed; the message names the file, row or column."""


class DimensionError(InputError):
    """A vector's length does not match the collection's dimension."""


class ConflictError(BrinicleError):
    """Keys collide (``keys`` holds every conflicting key, ``field`` the key column), or a
    write does: with another writer's, or with a drop of its collection on object storage."""

    def __init__(self, message: str, *, keys: Sequence[object] = (), field: str | None = None):
        super().__init__(message)
        self.keys = list(keys)
        self.field = field


class PublishConflictError(ConflictError):
    """Another writer published ``generation`` of the collection first, on the same base
    (object storage, where writers on different machines share no lock). Nothing of the
    losing write was published; running it again applies it on top of the winner's."""

    def __init__(self, message: str, *, generation: int):
        super().__init__(message)
        self.generation = generation


class NotFoundError(BrinicleError, LookupError):
    """A collection, template, model or task does not exist."""

    def __str__(self) -> str:
        # LookupError's KeyError-style repr quoting is not wanted here.
        return str(self.args[0]) if self.args else ""


class UnknownModelError(NotFoundError):
    """An embedding model id that the store's registry does not know.

    A value the caller chose (an argument, a schema field, a request field), so the HTTP
    server answers 400 rather than 404."""


class AlreadyExistsError(BrinicleError):
    """Something being created already exists."""


class StateError(BrinicleError, RuntimeError):
    """A call was made in the wrong state (no pending session, a session already pending)."""


class TaskStateError(StateError):
    """An upsertion task's status does not allow the request (restart a running task, cancel a
    finished one): a conflict with the task's state, which the HTTP server answers with 409."""


class LockedError(BrinicleError, RuntimeError):
    """Another writer holds the collection's lock."""


class CorruptCollectionError(BrinicleError):
    """A collection's files are missing or unreadable."""


class EngineError(BrinicleError, RuntimeError):
    """Raised by :class:`brinicle_etl.VectorEngine` for state and data errors, as brinicle raises RuntimeError."""


class QuotaExceededError(BrinicleError):
    """A write would take its owner past a storage quota."""


class DiskFullError(BrinicleError, OSError):
    """The file system ran out of space (or quota) during a write. ``path`` is where.

    The write published nothing: the previous generation stays current, and what the
    write had created is removed."""

    def __init__(self, message: str, *, path: str | None = None):
        super().__init__(message)
        self.path = path

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class BusyError(BrinicleError):
    """A collection has too many writers waiting, or one waited past its timeout.

    ``retry_after`` suggests how many seconds to wait before trying again."""

    def __init__(self, message: str, *, retry_after: float = 1.0):
        super().__init__(message)
        self.retry_after = retry_after


class ObjectStoreError(BrinicleError):
    """The object store could not be reached, or refused a request; the message names the
    object and the store's answer, never a credential."""


class MissingExtraError(BrinicleError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""


def format_values(values: Sequence[object], *, limit: int = 20) -> str:
    """``'a', 'b' and 3 more``: a readable, bounded list for error messages."""
    shown = ", ".join(repr(v) for v in values[:limit])
    extra = len(values) - limit
    return f"{shown} and {extra} more" if extra > 0 else shown
