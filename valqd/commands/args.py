"""Argument parsing for command handlers: strict integers and a cursor over argv.

Numbers are parsed as Valkey's string2ll parses them: optional `-`, then ASCII digits with
no leading zero, nothing else (no spaces, `+`, `_` or non-ASCII digits, which `int()` takes).
"""

import re

from ..errors import CommandError

_INTEGER = re.compile(rb"-?(?:0|[1-9][0-9]*)\Z")
NOT_AN_INTEGER = "value is not an integer or out of range"
SYNTAX_ERROR = "syntax error"
U64_MAX = 2**64 - 1
I64_MIN, I64_MAX = -(2**63), 2**63 - 1


def subcommand_syntax_error(argv: list[bytes]) -> CommandError:
    """A subcommand that takes fewer arguments than its arity allows (SLOWLOG GET 1 2), as
    Valkey's addReplySubcommandSyntaxError words it: the subcommand as the client typed it."""
    return CommandError("unknown subcommand or wrong number of arguments for '%s'. Try %s "
                        "HELP." % (argv[1].decode("utf-8", "replace")[:128],
                                   argv[0].decode("utf-8", "replace").upper()))


def parse_int(raw: bytes, low: int = I64_MIN, high: int = I64_MAX,
              message: str = NOT_AN_INTEGER) -> int:
    if raw.isdigit() and (raw[0] != 48 or len(raw) == 1):  # bytes.isdigit is ASCII-only
        value = int(raw)
    elif _INTEGER.match(raw) and raw != b"-0":
        value = int(raw)
    else:
        raise CommandError(message)
    if not low <= value <= high:
        raise CommandError(message)
    return value


class Args:
    """A cursor over a command's arguments (after the command and subcommand names)."""

    __slots__ = ("argv", "pos")

    def __init__(self, argv: list[bytes], pos: int) -> None:
        self.argv = argv
        self.pos = pos

    def remaining(self) -> int:
        return len(self.argv) - self.pos

    def next_bytes(self) -> bytes:
        if self.pos >= len(self.argv):
            raise CommandError(SYNTAX_ERROR)
        value = self.argv[self.pos]
        self.pos += 1
        return value

    def next_int(self, low: int = I64_MIN, high: int = I64_MAX,
                 message: str = NOT_AN_INTEGER) -> int:
        return parse_int(self.next_bytes(), low, high, message)

    def next_keyword(self) -> str:
        return self.next_bytes().decode("latin-1").upper()

    def finish(self) -> None:
        """No arguments may be left over."""
        if self.pos < len(self.argv):
            raise CommandError(SYNTAX_ERROR)
