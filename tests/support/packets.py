"""Mutations of real packets, for the fuzz tests of the SNMP decoders."""

from __future__ import annotations

import random


def mutate(rng: random.Random, data: bytes) -> bytes:
    """1-5 random edits: overwrite, flip a bit, insert (often a length-ish octet), delete, truncate."""
    out = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 3, 5))):
        op = rng.random()
        if op < 0.35 and out:
            out[rng.randrange(len(out))] = rng.randrange(256)
        elif op < 0.5 and out:
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        elif op < 0.65:
            at = rng.randrange(len(out) + 1)
            out[at:at] = bytes([rng.choice((0x00, 0x30, 0x80, 0x81, 0x82, 0x84, 0xFF, rng.randrange(256)))])
        elif op < 0.8 and out:
            at = rng.randrange(len(out))
            del out[at:at + rng.randrange(1, 4)]
        else:
            out = out[:rng.randrange(len(out) + 1)]
    return bytes(out)
