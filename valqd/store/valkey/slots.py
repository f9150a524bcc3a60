"""Which of a Valkey Cluster's 16384 slots a key lives in (the cluster specification's
CRC16/XMODEM of the key's hash tag, modulo 16384)."""

import binascii

SLOTS = 16384


def hash_tag(key: bytes) -> bytes:
    """The part of `key` that decides its slot: between the first `{` and the first `}`
    after it when that is not empty, else the whole key. Every key of one queue,
    valq:{<queue>}..., shares the tag <queue> (up to a `}` inside the name)."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            return key[start + 1:end]
    return key


def key_slot(key: bytes) -> int:
    """The slot of `key`, as CLUSTER KEYSLOT answers it."""
    return binascii.crc_hqx(hash_tag(key), 0) % SLOTS
