"""The ACL command, authentication and the permission check the dispatcher runs.

Sessions start as the `default` user (`open_session`); AUTH and HELLO ... AUTH switch them
with `authenticate`. A session whose user may run everything (`restricted` false) is
never checked; any other is checked by `check` before each command, as Valkey checks:
the command, then every queue name it touches (read or write access), then channels.
"""

import os
import time
from typing import TYPE_CHECKING

from ..errors import CommandError
from ..resp import encode, split_inline
from .args import parse_int, subcommand_syntax_error
from .context import ServerState, Session
from .users import ALL_CATEGORIES, LogEntry, User

if TYPE_CHECKING:
    from .table import CommandSpec

NOT_CONFIGURED = ("This instance is not configured to use an ACL file. You may want to "
                  "specify users via the ACL SETUSER command and then issue a CONFIG REWRITE "
                  "(assuming you have a configuration file set) in order to store users in the "
                  "configuration.")
WRONGPASS = "invalid username-password pair or user is disabled."


# -- sessions ------------------------------------------------------------------------------

def bind(session: Session, user: User) -> None:
    """Run the session's commands as `user` from now on."""
    session.user = user
    session.restricted = not user.unrestricted


def open_session(state: ServerState, client_id: int, addr: str = "",
                 laddr: str = "") -> Session:
    """A new connection's session, as Valkey starts one: the default user, authenticated
    only when that user needs no password."""
    session = Session(client_id, addr, laddr)
    default = state.acl.default
    bind(session, default)
    session.authenticated = default.nopass and default.enabled
    return session


def authenticate(state: ServerState, session: Session, username: bytes, password: bytes,
                 via: str = "AUTH") -> None:
    """Bind the session to the user when the password is right; otherwise WRONGPASS and an
    ACL LOG entry (`via` names the command, as Valkey's entry does). For any front end: the
    HTTP API authenticates its requests' sessions with this."""
    user = state.acl.authenticate(username, password)
    if user is None:
        log_denial(state, session, "auth", via.encode(), username)
        raise CommandError(WRONGPASS, "WRONGPASS")
    bind(session, user)
    session.authenticated = True


def refresh_sessions(state: ServerState, users: list[User]) -> None:
    """After users changed: their sessions follow the new rules, and a subscriber whose
    channels are no longer allowed is disconnected (as Valkey does)."""
    for session in list(state.clients.values()):
        user = session.user
        if user not in users:
            continue
        bind(session, user)
        allowed = all(user.may_subscribe(c, False) for c in session.channels) and \
            all(user.may_subscribe(p, True) for p in session.patterns)
        if not allowed:
            disconnect(session)


def disconnect(session: Session) -> None:
    if session.closer is not None:
        session.closer()
    else:
        session.close_after_reply = True


# -- the check before each command -------------------------------------------------------

def check(state: ServerState, session: Session, spec: "CommandSpec", argv: list[bytes],
          context: str = "toplevel") -> bytes | None:
    """The NOPERM reply when the session's user may not run argv (logged in ACL LOG), or
    None. Called only for restricted sessions: by the dispatcher, and by EXEC (context
    "multi") for each queued command, since the rules may have changed since it was queued."""
    denial = state.acl.denial(session.user, spec, argv)
    if denial is None:
        return None
    reason, object_ = denial
    if context == "toplevel":
        session.last_command = spec.name  # as Valkey: the log's client info names it
    log_denial(state, session, reason, object_, session.user.name, context)
    if context == "multi":
        return encode.error("NOPERM", "ACLs rules changed between the moment the transaction "
                            "was accumulated and the EXEC call. This command is no longer "
                            f"allowed for the following reason: {_EXEC_REASONS[reason]}")
    if reason == "command":
        return encode.error("NOPERM", f"User {_show(session.user.name)} has no permissions to "
                            f"run the '{spec.name}' command")
    return encode.error("NOPERM", f"No permissions to access a {reason}")


# EXEC checks again what was queued: why a queued command may no longer run, as Valkey says
_EXEC_REASONS = {
    "command": "no permission to execute the command or subcommand",
    "key": "no permission to touch the specified keys",
    "channel": "no permission to access one of the channels used as arguments"}


def log_denial(state: ServerState, session: Session, reason: str, object_: bytes,
               username: bytes, context: str = "toplevel") -> None:
    state.acl.log.add(reason, context, object_, username, session.info_line(time.monotonic()),
                      state.clock())


def _show(name: bytes) -> str:
    return name.decode("utf-8", "replace")


# -- ACL subcommands -----------------------------------------------------------------------

def acl_setuser(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """ACL SETUSER username [rule ...] -> +OK; the rules apply at once to the user's
    connections. ERR naming the first bad rule (nothing changes then)."""
    user = state.acl.set_user(argv[2], argv[3:])
    refresh_sessions(state, [user])
    return encode.OK


def acl_getuser(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """ACL GETUSER username -> map of flags, passwords, commands, keys, channels,
    selectors; null for no such user."""
    user = state.acl.get(argv[2])
    if user is None:
        return encode.null(session.proto)
    proto = session.proto
    return encode.map_([
        encode.bulk(b"flags"), encode.array([encode.bulk(f) for f in user.flags()]),
        encode.bulk(b"passwords"), encode.bulk_array(list(user.passwords)),
        encode.bulk(b"commands"), encode.bulk(user.describe_commands()),
        encode.bulk(b"keys"), encode.bulk(user.describe_keys()),
        encode.bulk(b"channels"), encode.bulk(user.describe_channels()),
        encode.bulk(b"selectors"), encode.EMPTY_ARRAY,
    ], proto)


def acl_deluser(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """ACL DELUSER username [username ...] -> how many existed; their connections are
    closed. ERR for `default`."""
    names = argv[2:]
    if b"default" in names:
        raise CommandError("The 'default' user cannot be removed")
    removed = [user for user in (state.acl.users.pop(n, None) for n in dict.fromkeys(names))
               if user is not None]
    for client in list(state.clients.values()):
        if client.user in removed:
            disconnect(client)
    return encode.integer(len(removed))


def acl_users(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """ACL USERS -> every user name, sorted."""
    return encode.bulk_array(sorted(state.acl.users))


def acl_list(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """ACL LIST -> each user as an ACL file line, sorted by name."""
    return encode.bulk_array([user.describe() for _, user in sorted(state.acl.users.items())])


def acl_whoami(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """ACL WHOAMI -> this connection's user name."""
    return encode.bulk(session.user.name)


def acl_cat(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """ACL CAT [category] -> every category, or the commands in one. ERR for an unknown
    category."""
    if len(argv) == 2:
        return encode.bulk_array([c.encode() for c in ALL_CATEGORIES])
    if len(argv) > 3:
        raise subcommand_syntax_error(argv)
    category = argv[2].decode("latin-1").lower()
    if category not in ALL_CATEGORIES:
        raise CommandError(f"Unknown category '{_show(argv[2])}'")
    return encode.bulk_array([n.encode() for n in state.acl.categories.get(category, [])])


def acl_log(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """ACL LOG [count | RESET] -> the newest entries (10 by default), each a map of count,
    reason, context, object, username, age-seconds, client-info, entry-id,
    timestamp-created, timestamp-last-updated; RESET -> +OK."""
    log = state.acl.log
    if len(argv) > 3:
        raise subcommand_syntax_error(argv)
    count = 10
    if len(argv) == 3:
        if argv[2].upper() == b"RESET":
            log.entries.clear()
            return encode.OK
        count = parse_int(argv[2])
    now = state.clock()
    proto = session.proto
    return encode.array([_log_entry(e, now, proto) for e in list(log.entries)[:max(count, 0)]])


def _log_entry(entry: LogEntry, now_ms: int, proto: int) -> bytes:
    return encode.map_([
        encode.bulk(b"count"), encode.integer(entry.count),
        encode.bulk(b"reason"), encode.bulk_str(entry.reason),
        encode.bulk(b"context"), encode.bulk_str(entry.context),
        encode.bulk(b"object"), encode.bulk(entry.object),
        encode.bulk(b"username"), encode.bulk(entry.username),
        encode.bulk(b"age-seconds"), encode.double((now_ms - entry.created_at) / 1000, proto),
        encode.bulk(b"client-info"), encode.bulk_str(entry.client_info),
        encode.bulk(b"entry-id"), encode.integer(entry.entry_id),
        encode.bulk(b"timestamp-created"), encode.integer(entry.created_at),
        encode.bulk(b"timestamp-last-updated"), encode.integer(entry.updated_at),
    ], proto)


def acl_dryrun(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """ACL DRYRUN username command [arg ...] -> +OK when the user could run it, else a
    bulk string saying why. ERR for an unknown user or command, or a wrong arity."""
    user = state.acl.get(argv[2])
    if user is None:
        raise CommandError(f"User '{_show(argv[2])}' not found")
    command = argv[3:]
    spec = state.acl.specs.get(command[0].decode("latin-1").lower())
    if spec is None:
        raise CommandError(f"Command '{_show(command[0])}' not found")
    if spec.subcommands and len(command) > 1:
        sub_name = f"{spec.name}|{command[1].decode('latin-1').lower()}"
        spec = spec.subcommands.get(sub_name, spec)
    if not spec.fewest_args <= len(command) <= spec.most_args:
        raise CommandError(f"wrong number of arguments for '{spec.name}' command")
    denial = state.acl.denial(user, spec, command)
    if denial is None:
        return encode.OK
    reason, object_ = denial
    what = f"run the '{spec.name}' command" if reason == "command" else \
        f"access the '{_show(object_)}' {reason}"
    return encode.bulk_str(f"User {_show(user.name)} has no permissions to {what}")


def acl_genpass(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """ACL GENPASS [bits] -> a random password of `bits` bits (256 by default) in hex."""
    bits = 256
    if len(argv) == 3:
        bits = parse_int(argv[2])
        if not 0 < bits <= 4096:
            raise CommandError("ACL GENPASS argument must be the number of bits for the "
                               "output password, a positive number up to 4096")
    return encode.bulk(os.urandom((bits + 7) // 8).hex()[:(bits + 3) // 4].encode())


def acl_save(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """ACL SAVE -> +OK once every user is written to `aclfile` (replaced atomically).
    ERR when no aclfile is configured or it cannot be written."""
    path = str(state.config["aclfile"])
    if not path:
        raise CommandError(NOT_CONFIGURED)
    try:
        state.write_file(path, state.acl.file_text())
    except OSError as exc:
        raise CommandError(f"There was an error trying to save the ACLs. Please check the "
                           f"server logs for more information ({exc.strerror})") from None
    return encode.OK


def acl_load(state: ServerState, session: Session, argv: list[bytes]) -> bytes:
    """ACL LOAD -> +OK once the users of `aclfile` replace every user; connections of users
    that are gone are closed. ERR naming file and line of the first error (nothing changes
    then), or when no aclfile is configured."""
    path = str(state.config["aclfile"])
    if not path:
        raise CommandError(NOT_CONFIGURED)
    load_acl_file(state, path, "ACL errors detected, no change to the previously active "
                  "ACL rules was performed")
    return encode.OK


def load_acl_file(state: ServerState, path: str, consequence: str) -> None:
    """Replace every user by those of the ACL file at `path`; CommandError (file, line and
    `consequence`) on the first error, with nothing changed."""
    try:
        text = state.read_file(path)
    except OSError as exc:
        raise CommandError(f"Error loading ACLs, opening file '{path}': {exc.strerror}. "
                           f"WARNING: {consequence}") from None
    try:
        users = state.acl.parse_users(user_lines(path, text))
    except CommandError as exc:
        raise CommandError(f"{exc.message}. WARNING: {consequence}") from None
    replace_users(state, users)


def user_lines(source: str, text: bytes) -> list[tuple[str, int, list[bytes]]]:
    """The non-blank lines of an ACL file as (source, line number, words)."""
    lines = []
    for number, line in enumerate(text.split(b"\n"), 1):
        line = line.strip()
        if not line:
            continue
        try:
            words = split_inline(line)
        except Exception:
            raise CommandError(f"{source}:{number}: unbalanced quotes in ACL line") from None
        lines.append((source, number, words))
    return lines


def replace_users(state: ServerState, users: dict[bytes, User]) -> None:
    acl = state.acl
    acl.replace_users(users)
    remaining = set(map(id, acl.users.values()))
    for client in list(state.clients.values()):
        if id(client.user) not in remaining and client.user.name != b"default":
            disconnect(client)
    refresh_sessions(state, list(acl.users.values()))
