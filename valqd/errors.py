"""Error types shared by every layer.

An error carries a code, the first word of the Valkey error reply (`ERR`, `NOQUEUE`, ...),
which clients map to exception classes. Only the dispatcher turns an error into wire bytes.
"""


class CommandError(Exception):
    """A command failed; the connection stays open and nothing changed."""

    code = "ERR"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class ProtocolError(Exception):
    """The client broke the wire protocol: reply once, then close its connection."""


def show(name: bytes) -> str:
    """A queue name or argument as it appears inside an error message."""
    return name.decode("utf-8", "backslashreplace")


class NoQueueError(CommandError):
    code = "NOQUEUE"

    def __init__(self, name: bytes) -> None:
        super().__init__(f"no such queue '{show(name)}'")


class BusyQueueError(CommandError):
    code = "BUSYQUEUE"

    def __init__(self, name: bytes) -> None:
        super().__init__(f"queue '{show(name)}' already exists")


class NoMessageError(CommandError):
    code = "NOMSG"

    def __init__(self, name: bytes, message_id: int) -> None:
        super().__init__(f"no message with id {message_id} in queue '{show(name)}'")


class NoLeaseError(CommandError):
    """A LEASE receipt that is not the message's current delivery (or no delivery)."""

    code = "NOLEASE"

    def __init__(self, name: bytes, message_id: int,
                 why: str = "is not leased with that receipt") -> None:
        super().__init__(f"message {message_id} in queue '{show(name)}' {why}")


class QueueFullError(CommandError):
    code = "QUEUEFULL"

    def __init__(self, name: bytes, maxlen: int) -> None:
        super().__init__(f"queue '{show(name)}' is full (maxlen {maxlen})")
