"""Users and their permissions, as Valkey's ACL has them: rules, checks, the ACL log.

A `User` is changed only through Valkey's rule words (`on`, `>password`, `~jobs:*`,
`+valq|push`, `-@dangerous`, ...), applied by `Acl.set_user` all or nothing. A user's
command permissions are the set of command names (`valq|push`, `ping`) it may run; the
categories and names come from the command table, handed in as data. `unrestricted` says
a user may run everything on every queue and channel: the dispatcher checks nothing more
for it, so the default user costs nothing on the hot path.

Pure data and rules: no sockets, files or clock (times are passed in).
"""

import copy
import hashlib
import hmac
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable

from ..errors import CommandError
from .glob import glob_match, glob_matcher

if TYPE_CHECKING:  # the table imports this module
    from .table import CommandSpec

READ, WRITE = 1, 2  # key pattern permissions, as the table's READ_ACCESS/WRITE_ACCESS
_PATTERN_PREFIX = {b"%R~": READ, b"%W~": WRITE, b"%RW~": READ | WRITE, b"%WR~": READ | WRITE}
HASH_HEX_DIGITS = frozenset(b"0123456789abcdef")
LOG_GROUPING_MS = 60000  # Valkey: a repeat within a minute counts on the same entry


class RuleError(ValueError):
    """A rule word Valkey would refuse; the message is Valkey's."""


def password_hash(password: bytes) -> bytes:
    return hashlib.sha256(password).hexdigest().encode()


@dataclass(eq=False)
class User:
    name: bytes
    enabled: bool = False
    nopass: bool = False
    passwords: list[bytes] = field(default_factory=list)  # SHA-256 hex, in the order added
    commands: set[str] = field(default_factory=set)  # names it may run: "ping", "valq|push"
    base_all: bool = False  # the last of +@all / -@all was +@all
    command_rules: list[str] = field(default_factory=list)  # rules since then, for LIST
    keys: list[tuple[bytes, int]] = field(default_factory=list)  # (pattern, READ|WRITE)
    # the same patterns as (READ|WRITE, test), built by Acl.apply: the check per command
    key_tests: list[tuple[int, Callable[[bytes], bool]]] = field(default_factory=list)
    all_keys: bool = False
    channels: list[bytes] = field(default_factory=list)
    all_channels: bool = False
    unrestricted: bool = False  # every command, key and channel: nothing to check

    def may_run(self, name: str) -> bool:
        return name in self.commands

    def may_access(self, key: bytes, access: int) -> bool:
        if self.all_keys:
            return True
        for flags, test in self.key_tests:
            if flags & access == access and test(key):
                return True
        return False

    def may_subscribe(self, channel: bytes, is_pattern: bool) -> bool:
        """As Valkey: a channel must match one of the patterns; a PSUBSCRIBE pattern must
        be one of them literally."""
        if self.all_channels:
            return True
        if is_pattern:
            return channel in self.channels
        return any(glob_match(pattern, channel) for pattern in self.channels)

    def password_matches(self, password: bytes) -> bool:
        if self.nopass:
            return True
        digest = password_hash(password)
        return any(hmac.compare_digest(digest, known) for known in self.passwords)

    # -- what ACL LIST, GETUSER and the ACL file show ----------------------------------------

    def flags(self) -> list[bytes]:
        return [b"on" if self.enabled else b"off"] + ([b"nopass"] if self.nopass else [])

    def describe_commands(self) -> bytes:
        return " ".join(["+@all" if self.base_all else "-@all", *self.command_rules]).encode()

    def describe_keys(self) -> bytes:
        if self.all_keys:
            return b"~*"
        prefix = {READ: b"%R~", WRITE: b"%W~", READ | WRITE: b"~"}
        return b" ".join(prefix[flags] + pattern for pattern, flags in self.keys)

    def describe_channels(self) -> bytes:
        if self.all_channels:
            return b"&*"
        return b" ".join(b"&" + pattern for pattern in self.channels)

    def describe(self) -> bytes:
        """The user as one ACL file line: `user alice on #<sha256> ~jobs:* ... -@all +@read`."""
        words = [b"user", self.name, *self.flags(), *(b"#" + h for h in self.passwords)]
        keys = self.describe_keys()
        if keys:
            words.append(keys)
        if not self.all_channels:
            words.append(b"resetchannels")
        channels = self.describe_channels()
        if channels:
            words.append(channels)
        words.append(self.describe_commands())
        return b" ".join(words)


class Acl:
    """Every user, the command names and categories rules refer to, and the ACL log.

    `specs` maps every command and subcommand name to its table entry (anything with
    `categories`); `default` is the user every connection starts as."""

    def __init__(self, specs: dict[str, "CommandSpec"], log_max_len: int = 128) -> None:
        self.specs = specs
        self.all_commands = frozenset(specs)
        self.categories: dict[str, list[str]] = {}
        for name, spec in specs.items():
            for category in spec.categories:
                self.categories.setdefault(category, []).append(name)
        self.users: dict[bytes, User] = {}
        self.default = self.create_default()
        self.users[b"default"] = self.default
        self.log = AclLog(log_max_len)

    def create_default(self) -> User:
        """The default user as Valkey makes it: on, nopass, every key, channel and command."""
        user = User(b"default")
        self.apply(user, [b"on", b"nopass", b"allkeys", b"allchannels", b"allcommands"])
        return user

    def get(self, name: bytes) -> User | None:
        return self.users.get(name)

    # -- rules -------------------------------------------------------------------------------

    def set_user(self, name: bytes, rules: list[bytes]) -> User:
        """ACL SETUSER: create the user if need be and apply the rules, all or none
        (CommandError with Valkey's words naming the first bad rule). The user object
        keeps its identity, so connected clients follow the change at once."""
        check_username(name)
        user = self.users.get(name)
        draft = copy.deepcopy(user) if user is not None else User(name)
        for rule in rules:
            try:
                self.apply(draft, [rule])
            except RuleError as exc:
                raise CommandError(f"Error in ACL SETUSER modifier "
                                   f"'{rule.decode('utf-8', 'replace')}': {exc}") from None
        if user is None:
            self.users[name] = draft
            return draft
        user.__dict__.update(draft.__dict__)
        return user

    def apply(self, user: User, rules: Iterable[bytes]) -> None:
        """Apply rule words in order; RuleError (Valkey's words) on the first bad one."""
        for raw in rules:
            self._apply_one(user, raw)
        user.key_tests = [(flags, glob_matcher(pattern)) for pattern, flags in user.keys]
        user.unrestricted = (user.commands == self.all_commands and user.all_keys
                             and user.all_channels)

    def _apply_one(self, user: User, raw: bytes) -> None:
        if raw[:1] == b"(" or raw[-1:] == b")":
            raise RuleError("Selectors are not supported by valqd")
        rule = raw.lower()
        if rule == b"on":
            user.enabled = True
        elif rule == b"off":
            user.enabled = False
        elif rule == b"nopass":
            user.nopass, user.passwords = True, []
        elif rule == b"resetpass":
            user.nopass, user.passwords = False, []
        elif raw[:1] in (b">", b"#"):
            digest = password_hash(raw[1:]) if raw[:1] == b">" else _check_hash(raw[1:])
            if digest not in user.passwords:
                user.passwords.append(digest)
            user.nopass = False
        elif raw[:1] in (b"<", b"!"):
            digest = password_hash(raw[1:]) if raw[:1] == b"<" else _check_hash(raw[1:])
            if digest not in user.passwords:
                raise RuleError("The password you are trying to remove from the user does "
                                "not exist")
            user.passwords.remove(digest)
        elif rule == b"allkeys":
            user.all_keys, user.keys = True, []
        elif rule == b"resetkeys":
            user.all_keys, user.keys = False, []
        elif raw[:1] in (b"~", b"%"):
            self._add_key_pattern(user, raw)
        elif rule == b"allchannels":
            user.all_channels, user.channels = True, []
        elif rule == b"resetchannels":
            user.all_channels, user.channels = False, []
        elif raw[:1] == b"&":
            if user.all_channels:
                raise RuleError("Adding a pattern after the * pattern (or the 'allchannels' "
                                "flag) is not valid and does not have any effect. Try "
                                "'resetchannels' to start with an empty list of channels")
            if raw == b"&*":
                user.all_channels, user.channels = True, []
            elif raw[1:] not in user.channels:
                user.channels.append(raw[1:])
        elif rule in (b"allcommands", b"+@all"):
            user.commands, user.base_all, user.command_rules = set(self.all_commands), True, []
        elif rule in (b"nocommands", b"-@all"):
            user.commands, user.base_all, user.command_rules = set(), False, []
        elif raw[:1] in (b"+", b"-"):
            self._command_rule(user, rule.decode("latin-1"))
        elif rule == b"reset":
            self.apply(user, [b"resetpass", b"resetkeys", b"resetchannels", b"off",
                              b"-@all"])
        elif rule in (b"clearselectors", b"sanitize-payload", b"skip-sanitize-payload"):
            pass  # no selectors to clear; payloads are not restored from dumps in valqd
        elif rule == b"":
            pass  # Valkey ignores an empty rule
        else:
            raise RuleError("Syntax error")

    def _add_key_pattern(self, user: User, raw: bytes) -> None:
        if raw[:1] == b"~":
            flags, pattern = READ | WRITE, raw[1:]
        else:
            tilde = raw.find(b"~")
            flags = _PATTERN_PREFIX.get(raw[:tilde + 1].upper(), 0) if tilde > 0 else 0
            if not flags:
                raise RuleError("Syntax error")
            pattern = raw[tilde + 1:]
        if user.all_keys:
            raise RuleError("Adding a pattern after the * pattern (or the 'allkeys' flag) is "
                            "not valid and does not have any effect. Try 'resetkeys' to start "
                            "with an empty list of patterns")
        if pattern == b"*" and flags == READ | WRITE:
            user.all_keys, user.keys = True, []
            return
        for i, (known, known_flags) in enumerate(user.keys):
            if known == pattern:  # as Valkey: the same pattern again widens its access
                user.keys[i] = (known, known_flags | flags)
                return
        user.keys.append((pattern, flags))

    def _command_rule(self, user: User, rule: str) -> None:
        allow, word = rule[0] == "+", rule[1:]
        if word.startswith("@"):
            category = word[1:]
            if category not in self.categories and category not in ALL_CATEGORIES:
                raise RuleError("Unknown command or category name in ACL")
            names = self.categories.get(category, [])
        else:
            spec = self.specs.get(word)
            if spec is None:
                raise RuleError("Unknown command or category name in ACL")
            names = [word, *getattr(spec, "subcommands", {})]
        if allow:
            user.commands.update(names)
        else:
            user.commands.difference_update(names)
        # as Valkey: a later rule for the same name replaces the earlier one in the listing
        user.command_rules = [r for r in user.command_rules if r[1:] != word]
        user.command_rules.append(rule)

    # -- users as a whole --------------------------------------------------------------------

    def set_default_password(self, password: str) -> None:
        """`requirepass`: the default user's one password, or nopass when empty."""
        self.apply(self.default, [b"resetpass", b">" + password.encode()] if password
                   else [b"nopass"])

    def parse_users(self, lines: list[tuple[str, int, list[bytes]]]) -> dict[bytes, User]:
        """Users from `user <name> <rule> ...` lines, each given as (source, line number,
        words); CommandError naming the source and line of the first bad one."""
        users: dict[bytes, User] = {}
        for source, number, words in lines:
            where = f"{source}:{number}"
            if len(words) < 2 or words[0] != b"user":
                raise CommandError(f"{where}: line should start with user keyword")
            name = words[1]
            try:
                check_username(name)
                if name in users:
                    raise RuleError(f"Duplicate user '{name.decode('utf-8', 'replace')}' found")
                user = User(name)
                for rule in words[2:]:
                    try:
                        self.apply(user, [rule])
                    except RuleError as exc:
                        raise RuleError(f"Error in applying operation "
                                        f"'{rule.decode('utf-8', 'replace')}': {exc}") from None
            except (RuleError, CommandError) as exc:
                message = exc.message if isinstance(exc, CommandError) else str(exc)
                raise CommandError(f"{where}: {message}") from None
            users[name] = user
        return users

    def replace_users(self, users: dict[bytes, User]) -> None:
        """Make `users` the whole set. The default user object stays (connections hold
        it); without a `default` entry it keeps its rules, so `requirepass` holds."""
        new_default = users.pop(b"default", None)
        if new_default is not None:
            self.default.__dict__.update(new_default.__dict__)
        kept = {name: user for name, user in self.users.items()
                if name == b"default"}
        for name, user in users.items():
            old = self.users.get(name)
            if old is not None:  # connected clients of a user that remains follow it
                old.__dict__.update(user.__dict__)
                user = old
            kept[name] = user
        self.users = kept

    def file_text(self) -> bytes:
        return b"".join(user.describe() + b"\n" for _, user in sorted(self.users.items()))

    def authenticate(self, name: bytes, password: bytes) -> User | None:
        """The user when it exists, is on and the password is right (or it has nopass)."""
        user = self.users.get(name)
        if user is None or not user.enabled or not user.password_matches(password):
            return None
        return user

    def denial(self, user: User, spec: "CommandSpec",
               argv: list[bytes]) -> tuple[str, bytes] | None:
        """Why `user` may not run argv (spec: its table entry): ("command", name),
        ("key", key) or ("channel", channel); None when it may."""
        if spec.name not in user.commands:
            return "command", spec.name.encode()
        if spec.key_specs and not user.all_keys:
            for key_spec in spec.key_specs:
                access = key_spec.access
                if key_spec.single:  # the usual case, a queue at one index: no list built
                    if key_spec.index < len(argv) and \
                            not user.may_access(argv[key_spec.index], access):
                        return "key", argv[key_spec.index]
                    continue
                for key in key_spec.find(argv):
                    if not user.may_access(key, access):
                        return "key", key
        subscribes = SUBSCRIBES.get(spec.name)
        if subscribes is not None and not user.all_channels:
            for channel in argv[1:]:
                if not user.may_subscribe(channel, subscribes):
                    return "channel", channel
        return None


# commands that subscribe, and whether their arguments are patterns
SUBSCRIBES = {"subscribe": False, "psubscribe": True}
# Valkey's categories: valid in rules even where valqd has no command in them
ALL_CATEGORIES = ("keyspace", "read", "write", "set", "sortedset", "list", "hash", "string",
                  "bitmap", "hyperloglog", "geo", "stream", "pubsub", "admin", "fast", "slow",
                  "blocking", "dangerous", "connection", "transaction", "scripting", "valq")


def check_username(name: bytes) -> None:
    if b" " in name or b"\0" in name or not name:
        raise CommandError("Usernames can't contain spaces or null characters")


def _check_hash(digest: bytes) -> bytes:
    if len(digest) != 64 or not set(digest) <= HASH_HEX_DIGITS:
        raise RuleError("The password hash must be exactly 64 characters and contain only "
                        "lowercase hexadecimal characters")
    return digest


@dataclass
class LogEntry:
    entry_id: int
    reason: str  # command | key | channel | auth
    context: str  # toplevel | multi | ...
    object: bytes
    username: bytes
    client_info: str
    created_at: int  # Unix ms
    updated_at: int
    count: int = 1


class AclLog:
    """ACL LOG: denials and failed authentications, newest first; a repeat of the same
    (reason, context, object, user) within a minute counts on the same entry."""

    def __init__(self, max_len: int = 128) -> None:
        self.entries: deque[LogEntry] = deque()
        self.max_len = max_len
        self.next_id = 0

    def add(self, reason: str, context: str, object_: bytes, username: bytes,
            client_info: str, now_ms: int) -> None:
        for entry in list(self.entries)[:10]:
            if (entry.reason, entry.context, entry.object, entry.username) == \
                    (reason, context, object_, username) and \
                    now_ms - entry.created_at <= LOG_GROUPING_MS:
                entry.count += 1
                entry.updated_at = now_ms
                entry.client_info = client_info
                self.entries.remove(entry)
                self.entries.appendleft(entry)
                return
        self.entries.appendleft(LogEntry(self.next_id, reason, context, object_, username,
                                         client_info, now_ms, now_ms))
        self.next_id += 1
        self.resize(self.max_len)

    def resize(self, max_len: int) -> None:
        self.max_len = max_len
        while len(self.entries) > max_len:
            self.entries.pop()
