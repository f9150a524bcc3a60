"""Fast, minimal clients: raw sockets, hiredis.Reader for RESP, a hand parser for beanstalkd.

Every client does the same job cycle the same way: `push(n)` sends n pushes in one write
and reads n replies, `pop(n)` sends n pops (each for one message, with a lease) and returns
the ids it got, `ack(ids)` acknowledges them. n is the pipeline depth; n = 1 is one round
trip per command. `fill(n)` loads n messages the fastest way the system has (the layout in
memory is the same as pushing them one by one), `lease_all(n)` takes n messages in flight.

The systems:
- valqd: VALQ PUSH / VALQ POP / VALQ ACK.
- valkey-lua: a reliable queue in Lua (SCRIPT LOAD, EVALSHA). push: INCR + HSET + RPUSH;
  pop: LPOP + ZADD of the lease deadline + HINCRBY of the attempts (+ HGET of the body);
  ack: ZREM + HDEL (one HDEL removes the body and the attempts field).
- valkey-streams: XADD; XREADGROUP GROUP g c COUNT 1 STREAMS s >; XACK + XDEL (sent
  together in one write, as a client library's pipeline would).
- beanstalkd: put / reserve-with-timeout 0 / delete.
- valkey: plain lists, LPUSH / RPOP, no ack (what redis-benchmark's lpush and rpop do).
"""

import hashlib
import socket
import time

import hiredis

HOST = "127.0.0.1"
BODY = (b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ" * 2)[:100]
QUEUE = b"bench"
FILL_CHUNK = 1000


class ServerReplyError(RuntimeError):
    pass


def resp(*args: bytes | str | int) -> bytes:
    """One command in RESP."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, int):
            a = b"%d" % a
        elif isinstance(a, str):
            a = a.encode()
        out.append(b"$%d\r\n%b\r\n" % (len(a), a))
    return b"".join(out)


PING = resp("PING")


def connect(port: int, timeout: float = 60.0) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def ping_once(port: int, protocol: str = "resp") -> bool:
    """True when the server at port answers PING with PONG (beanstalkd: `stats`)."""
    try:
        with connect(port, timeout=2.0) as sock:
            if protocol == "beanstalk":
                sock.sendall(b"stats\r\n")
                return sock.recv(64).startswith(b"OK ")
            sock.sendall(PING)
            data = b""
            while not data.endswith(b"\r\n"):
                chunk = sock.recv(256)
                if not chunk:
                    return False
                data += chunk
            return data == b"+PONG\r\n"  # Valkey answers -LOADING while it loads
    except OSError:
        return False


def server_pid(port: int, protocol: str = "resp") -> int | None:
    """The process id the server at port reports (INFO server's process_id; beanstalkd's
    stats pid), or None if it says none."""
    try:
        if protocol == "beanstalk":
            conn = BeanstalkConn(port, timeout=10.0)
            conn.send(b"stats\r\n")
            text = (conn.read(1)[0][1] or b"").decode(errors="replace")
            conn.close()
            key = "pid:"
        else:
            rc = RespConn(port, timeout=10.0)
            text = rc.call("INFO", "server").decode(errors="replace")
            rc.close()
            key = "process_id:"
    except (OSError, ServerReplyError, ConnectionError):
        return None
    for line in text.splitlines():
        if line.strip().startswith(key):
            return int(line.split(":", 1)[1])
    return None


class RespConn:
    def __init__(self, port: int, timeout: float = 60.0) -> None:
        self.sock = connect(port, timeout)
        self.reader = hiredis.Reader()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def next_reply(self):
        """The next reply as hiredis gives it, an error reply as a hiredis.ReplyError."""
        reader = self.reader
        while (reply := reader.gets()) is False:
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("server closed the connection")
            reader.feed(data)
        return reply

    def read(self, n: int) -> list:
        out = []
        next_reply = self.next_reply
        while len(out) < n:
            reply = next_reply()
            if type(reply) is hiredis.ReplyError:
                raise ServerReplyError(str(reply))
            out.append(reply)
        return out

    def call(self, *args) -> object:
        self.send(resp(*args))
        return self.read(1)[0]

    def call_lenient(self, *args) -> object:
        """Like call, but an error reply is returned (as a string) instead of raised."""
        self.send(resp(*args))
        reply = self.next_reply()
        return str(reply) if type(reply) is hiredis.ReplyError else reply

    def close(self) -> None:
        self.sock.close()


class QueueClient:
    """The job cycle against one system; see the module docstring."""

    def __init__(self, port: int, index: int = 0, visibility: int = 300) -> None:
        self.visibility = visibility

    def setup(self) -> None: ...

    def push(self, n: int) -> None: ...

    def pop(self, n: int) -> list: ...

    def ack(self, ids: list) -> None: ...

    def fill(self, n: int) -> None:
        """Store n messages, FILL_CHUNK at a time."""
        while n > 0:
            k = min(FILL_CHUNK, n)
            self.push(k)
            n -= k

    def lease_all(self, n: int) -> int:
        """Lease up to n messages; how many were leased."""
        got = 0
        while got < n:
            ids = self.pop(min(FILL_CHUNK, n - got))
            if not ids:
                break
            got += len(ids)
        return got

    def close(self) -> None: ...


class _Resp(QueueClient):
    PUSH = b""
    POP = b""
    ACK_REPLIES = 1

    def __init__(self, port: int, index: int = 0, visibility: int = 300) -> None:
        super().__init__(port, index, visibility)
        self.conn = RespConn(port)

    def push(self, n: int) -> None:
        conn = self.conn
        conn.send(self.PUSH * n)
        conn.read(n)

    def ack_command(self, message_id) -> bytes:
        raise NotImplementedError

    def ack(self, ids: list) -> None:
        if ids:
            conn = self.conn
            cmd = self.ack_command
            conn.send(b"".join([cmd(i) for i in ids]))
            conn.read(len(ids) * self.ACK_REPLIES)

    def fill_in_batches(self, n: int, batch_command) -> None:
        """Store n messages with `batch_command(k)` (k bodies, at most FILL_CHUNK), a few
        commands per write."""
        conn = self.conn
        while n > 0:
            sent = 0
            for _ in range(8):
                k = min(FILL_CHUNK, n)
                if k <= 0:
                    break
                conn.send(batch_command(k))
                n -= k
                sent += 1
            conn.read(sent)

    def close(self) -> None:
        self.conn.close()


class ValqdClient(_Resp):
    PUSH = resp("VALQ", "PUSH", QUEUE, BODY)
    POP = resp("VALQ", "POP", QUEUE)
    ACK_HEAD = b"*4\r\n$4\r\nVALQ\r\n$3\r\nACK\r\n$%d\r\n%b\r\n" % (len(QUEUE), QUEUE)

    def setup(self) -> None:
        reply = self.conn.call_lenient("VALQ", "CREATE", QUEUE, "VISIBILITY", self.visibility)
        if isinstance(reply, str) and not reply.startswith("BUSYQUEUE"):
            raise ServerReplyError(reply)

    def pop(self, n: int) -> list:
        conn = self.conn
        conn.send(self.POP * n)
        # RESP2: [b"body", body, b"id", id], or b"" when nothing is visible
        return [r[3] for r in conn.read(n) if r]

    def ack_command(self, message_id: bytes) -> bytes:
        return self.ACK_HEAD + b"$%d\r\n%b\r\n" % (len(message_id), message_id)

    def fill(self, n: int) -> None:
        self.fill_in_batches(n, lambda k: resp("VALQ", "MPUSH", QUEUE, *([BODY] * k)))

    def lease_all(self, n: int) -> int:
        got = 0
        while got < n:
            k = min(FILL_CHUNK, n - got)
            reply = self.conn.call("VALQ", "POP", QUEUE, "COUNT", k)
            if not reply:
                break
            got += len(reply)
        return got


LUA_PUSH = """
local id = redis.call('INCR', KEYS[1])
redis.call('HSET', KEYS[2], id, ARGV[1])
redis.call('RPUSH', KEYS[3], id)
return id
"""
LUA_POP = """
local id = redis.call('LPOP', KEYS[1])
if not id then return false end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local deadline = now + tonumber(ARGV[1]) * 1000
redis.call('ZADD', KEYS[2], deadline, id)
redis.call('HINCRBY', KEYS[3], 'a' .. id, 1)
return {id, redis.call('HGET', KEYS[3], id)}
"""
LUA_ACK = """
local n = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1], 'a' .. ARGV[1])
return n
"""
# Bulk load: the same INCR + HSET + RPUSH per body, for many bodies per call.
LUA_FILL = """
for i = 1, #ARGV do
  local id = redis.call('INCR', KEYS[1])
  redis.call('HSET', KEYS[2], id, ARGV[i])
  redis.call('RPUSH', KEYS[3], id)
end
return #ARGV
"""


def sha1(text: str) -> bytes:
    return hashlib.sha1(text.encode()).hexdigest().encode()


class LuaClient(_Resp):
    SEQ, MSGS, READY, LEASES = b"bq:seq", b"bq:msgs", b"bq:ready", b"bq:leases"
    PUSH = resp("EVALSHA", sha1(LUA_PUSH), 3, SEQ, MSGS, READY, BODY)
    ACK_SHA = sha1(LUA_ACK)

    def __init__(self, port: int, index: int = 0, visibility: int = 300) -> None:
        super().__init__(port, index, visibility)
        self.POP = resp("EVALSHA", sha1(LUA_POP), 3, self.READY, self.LEASES, self.MSGS,
                        visibility)
        self.ack_head = (b"*6\r\n$7\r\nEVALSHA\r\n$40\r\n%b\r\n$1\r\n2\r\n"
                         b"$%d\r\n%b\r\n$%d\r\n%b\r\n"
                         % (self.ACK_SHA, len(self.LEASES), self.LEASES, len(self.MSGS),
                            self.MSGS))

    def setup(self) -> None:
        for script in (LUA_PUSH, LUA_POP, LUA_ACK, LUA_FILL):
            if self.conn.call("SCRIPT", "LOAD", script) != sha1(script):
                raise ServerReplyError("SCRIPT LOAD returned an unexpected sha")

    def pop(self, n: int) -> list:
        conn = self.conn
        conn.send(self.POP * n)
        return [r[0] for r in conn.read(n) if r]

    def ack_command(self, message_id: bytes) -> bytes:
        return self.ack_head + b"$%d\r\n%b\r\n" % (len(message_id), message_id)

    def fill(self, n: int) -> None:
        sha = sha1(LUA_FILL)
        self.fill_in_batches(n, lambda k: resp("EVALSHA", sha, 3, self.SEQ, self.MSGS,
                                               self.READY, *([BODY] * k)))

class StreamsClient(_Resp):
    STREAM, GROUP = b"bs", b"g"
    PUSH = resp("XADD", STREAM, "*", "b", BODY)
    ACK_REPLIES = 2

    def __init__(self, port: int, index: int = 0, visibility: int = 300) -> None:
        super().__init__(port, index, visibility)
        self.consumer = b"c%d" % index
        self.POP = resp("XREADGROUP", "GROUP", self.GROUP, self.consumer, "COUNT", 1,
                        "STREAMS", self.STREAM, ">")
        self.xack_head = (b"*4\r\n$4\r\nXACK\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n"
                          % (len(self.STREAM), self.STREAM, len(self.GROUP), self.GROUP))
        self.xdel_head = b"*3\r\n$4\r\nXDEL\r\n$%d\r\n%b\r\n" % (len(self.STREAM), self.STREAM)

    def setup(self) -> None:
        reply = self.conn.call_lenient("XGROUP", "CREATE", self.STREAM, self.GROUP, "$",
                                       "MKSTREAM")
        if isinstance(reply, str) and not reply.startswith("BUSYGROUP"):
            raise ServerReplyError(reply)

    def pop(self, n: int) -> list:
        conn = self.conn
        conn.send(self.POP * n)
        # [[stream, [[id, [field, value]]]]], or nil when nothing is new
        return [r[0][1][0][0] for r in conn.read(n) if r]

    def ack_command(self, message_id: bytes) -> bytes:
        arg = b"$%d\r\n%b\r\n" % (len(message_id), message_id)
        return self.xack_head + arg + self.xdel_head + arg

    def lease_all(self, n: int) -> int:
        got = 0
        while got < n:
            k = min(FILL_CHUNK, n - got)
            reply = self.conn.call("XREADGROUP", "GROUP", self.GROUP, self.consumer, "COUNT",
                                   k, "STREAMS", self.STREAM, ">")
            if not reply:
                break
            got += len(reply[0][1])
        return got


class ListClient(_Resp):
    """Plain Valkey lists, what redis-benchmark's lpush and rpop do: LPUSH a body, RPOP it
    (the body is the id); nothing to ack."""

    LIST = b"bl"
    PUSH = resp("LPUSH", LIST, BODY)
    POP = resp("RPOP", LIST)

    def pop(self, n: int) -> list:
        conn = self.conn
        conn.send(self.POP * n)
        return [r for r in conn.read(n) if r]

    def ack(self, ids: list) -> None:
        pass


class BeanstalkConn:
    def __init__(self, port: int, timeout: float = 60.0) -> None:
        self.sock = connect(port, timeout)
        self.buf = bytearray()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _more(self) -> None:
        data = self.sock.recv(1 << 20)
        if not data:
            raise ConnectionError("server closed the connection")
        self.buf += data

    def read(self, n: int) -> list:
        """n replies, each (first line without CRLF, body or None)."""
        out = []
        buf = self.buf
        pos = 0
        while len(out) < n:
            end = buf.find(b"\r\n", pos)
            if end < 0:
                del buf[:pos]
                pos = 0
                self._more()
                buf = self.buf
                continue
            line = bytes(buf[pos:end])
            if line.startswith(b"RESERVED") or line.startswith(b"OK "):
                size = int(line.rsplit(b" ", 1)[1])
                body_end = end + 2 + size
                if len(buf) < body_end + 2:
                    del buf[:pos]
                    pos = 0
                    self._more()
                    buf = self.buf
                    continue
                out.append((line, bytes(buf[end + 2:body_end])))
                pos = body_end + 2
            else:
                out.append((line, None))
                pos = end + 2
        del buf[:pos]
        return out

    def close(self) -> None:
        self.sock.close()


class BeanstalkClient(QueueClient):
    RESERVE = b"reserve-with-timeout 0\r\n"

    def __init__(self, port: int, index: int = 0, visibility: int = 300) -> None:
        super().__init__(port, index, visibility)
        self.conn = BeanstalkConn(port)
        self.PUT = b"put 0 0 %d %d\r\n%b\r\n" % (visibility, len(BODY), BODY)

    def _check(self, replies: list, ok: bytes) -> list:
        for line, _ in replies:
            if not line.startswith(ok):
                raise ServerReplyError(line.decode(errors="replace"))
        return replies

    def push(self, n: int) -> None:
        self.conn.send(self.PUT * n)
        self._check(self.conn.read(n), b"INSERTED")

    def pop(self, n: int) -> list:
        self.conn.send(self.RESERVE * n)
        ids = []
        for line, _ in self.conn.read(n):
            if line.startswith(b"RESERVED"):
                ids.append(line.split(b" ", 2)[1])
            elif not (line.startswith(b"TIMED_OUT") or line.startswith(b"DEADLINE_SOON")):
                raise ServerReplyError(line.decode(errors="replace"))
        return ids

    def ack(self, ids: list) -> None:
        if ids:
            self.conn.send(b"".join([b"delete %b\r\n" % i for i in ids]))
            self._check(self.conn.read(len(ids)), b"DELETED")

    def close(self) -> None:
        self.conn.close()


CLIENTS = {"valqd": ValqdClient, "valkey-lua": LuaClient, "valkey-streams": StreamsClient,
           "beanstalkd": BeanstalkClient, "valkey": ListClient}


def make_client(system: str, port: int, index: int = 0, visibility: int = 300) -> QueueClient:
    return CLIENTS[system](port, index, visibility)


class Pinger:
    """PING in a loop on its own connection; records the longest wait for a reply.

    Runs in a thread (`threading.Thread(target=pinger.run)`) until `stop()` or its time
    limit; `gaps` are (sent_at, seconds) of the replies slower than `record_over`. A wait
    is counted from when the PING was sent, or from `not_before` if that is later (set it
    when the server is resumed after SIGSTOP)."""

    def __init__(self, port: int, limit_s: float = 300.0,
                 record_over: float = 0.05) -> None:
        self.port = port
        self.limit_s = limit_s
        self.record_over = record_over
        self.max_gap = 0.0
        self.max_gap_at = 0.0
        self.count = 0
        self.gaps: list[tuple[float, float]] = []
        self.error: str | None = None
        self.not_before = 0.0
        self.connected = False
        self._stop = False

    def stop(self) -> None:
        self._stop = True

    def run(self) -> None:
        try:
            conn = RespConn(self.port, timeout=self.limit_s)
            self.connected = True
            deadline = time.monotonic() + self.limit_s
            while not self._stop and time.monotonic() < deadline:
                sent = time.monotonic()
                conn.send(PING)
                conn.next_reply()
                gap = time.monotonic() - max(sent, self.not_before)
                self.count += 1
                if gap > self.max_gap:
                    self.max_gap, self.max_gap_at = gap, sent
                if gap > self.record_over:
                    self.gaps.append((sent, gap))
            conn.close()
        except Exception as exc:  # reported, not raised: the thread must end
            self.error = repr(exc)
