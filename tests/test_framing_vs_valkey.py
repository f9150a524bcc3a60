"""The request parser against a real valkey-server: random streams of requests, inline
lines, quotes, stray type bytes and broken line ends, each fed to valqd's parser whole and
sent to Valkey at once; both must read the same commands and stop at the same protocol
error. The commands are unknown names, so Valkey's error reply names the arguments it
read (`unknown command 'ZZ', with args beginning with: 'a' 'b' `).

Left out on purpose: NUL bytes in an inline line (Valkey 9.1 stops answering the
connection; valqd reads them as bytes)."""

import random
import re
import socket

import hiredis
import pytest

from support import encode_command
from test_resp import Err, feed_whole

STREAMS = 2000


PIECES = [
    encode_command([b"ZZ"]), encode_command([b"ZZ", b"a b"]), b"ZZ\r\n", b"ZZ\n", b"*0\r\n",
    b"*-1\r\n", b"~1\r\n", b"$-1\r\n", b"\r\n", encode_command([b"ZZ", b"*12345"]),
    encode_command([b"ZZ", b"x>99999"]),
    b"*1\r\n", b"*2\r\n", b"$2\r\n", b"+x\r\n", b":1\r\n", b"#f\r\n", b"%1\r\n", b"|1\r\n",
    b">1\r\n", b"_\r\n", b"*", b"1", b"$", b"-1", b"x", b"AB", b"\r", b"\n", b"ZZ *12345\r\n",
    b"*1\r\n$2\r\nxyAB", b"~", b" ", b"*1\rX", b"$2\rX", b"*01\r\n", b"$02\r\n", b"*+1\r\n",
    b"\t", b"\x0b", b'"a b"', b"'q'", b'"', b"'", b"\\", b'"\\x41\\n"', b"ZZ a\"b c\"d\r\n",
]
END = encode_command([b"ZZEND"])
UNKNOWN = re.compile(r"unknown command '(.*?)', with args beginning with: (.*)$", re.S)


def valkey_reads(socket_path: str, wire: bytes) -> list:
    """What Valkey read of `wire`: the argv of each unknown command, then Err(message) at
    a protocol error; up to ZZEND, the connection's close, or 2 s without a byte (a
    request left unfinished)."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(socket_path)
        sock.sendall(wire)
        sock.settimeout(2)
        reader, out = hiredis.Reader(), []
        while not out or (out[-1] != [b"ZZEND"] and not isinstance(out[-1], Err)):
            reply = reader.gets()
            if reply is False:
                try:
                    data = sock.recv(65536)
                except socket.timeout:
                    break
                if not data:
                    break
                reader.feed(data)
                continue
            text = str(reply).removeprefix("ERR ")
            if text.startswith("Protocol error: "):
                out.append(Err(text.removeprefix("Protocol error: ")))
                continue
            match = UNKNOWN.match(text)
            assert match, text
            out.append([match.group(1).encode("latin-1"),
                        *[a.encode("latin-1") for a in re.findall(r"'(.*?)' ", match.group(2))]])
        return out


def parser_reads(wire: bytes) -> list:
    """valqd's parser on `wire`, as valkey_reads reports it: up to ZZEND or the error;
    CR and LF as spaces, as error replies carry them."""
    out: list = []
    for item in feed_whole(wire):
        if isinstance(item, Err):
            out.append(Err(_one_line(item.message)))
            break
        out.append([_one_line(arg.decode("latin-1")).encode("latin-1") for arg in item])
        if item == [b"ZZEND"]:
            break
    return out


def _one_line(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ")


@pytest.mark.parametrize("first", range(0, STREAMS, 100))
def test_the_parser_reads_requests_as_valkey_does(valkey_server, first):
    for seed in range(first, first + 100):
        rnd = random.Random(seed)
        wire = b"".join(rnd.choice(PIECES) for _ in range(rnd.randint(1, 8))) + b"\r\n" + END
        assert parser_reads(wire) == valkey_reads(valkey_server.socket_path, wire), \
            (seed, wire)
