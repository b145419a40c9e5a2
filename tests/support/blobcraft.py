"""Blobs written from docs/FORMAT.md alone (not by the codec): CRC-valid, structurally valid
blobs with whatever counts a test asks for, down to the edge of every field's range. An all-zero
group costs almost nothing to describe: one probability table (symbol 0 at 4096/4096), token
steps as 1-bit step codes, and 128-byte segments whose states never move."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

MAX_SEGMENT_SYMBOLS = 1 << 22
TOKEN_SCALE, CHANNEL_SCALE, CHANNEL_OFFSET, TOKEN_CODES, RAW_ROWS, OVERFLOW = 1, 2, 4, 8, 32, 64
DTYPE_SIZES = {1: 2, 2: 2, 3: 4}


class Bits:
    """A bit stream as the format writes one: least significant bit of each byte first."""

    def __init__(self) -> None:
        self.value, self.count = 0, 0

    def put(self, v: int, n: int) -> None:
        v, n = int(v), int(n)
        self.value |= (v & ((1 << n) - 1)) << self.count
        self.count += n

    def zeros(self, n: int) -> None:
        self.count += n

    def ones(self, n: int) -> None:
        self.put((1 << n) - 1, n)

    def bytes(self) -> bytes:
        return self.value.to_bytes((self.count + 7) // 8, "little")


def zero_table() -> bytes:
    """One probability table: alphabet index 128 (symbol 0) with frequency 4096, as a v3
    Exp-Golomb code of order 0."""
    u = 4096 + 1
    m = u.bit_length() - 1
    b = Bits()
    b.ones(m)
    b.zeros(1)
    b.put(u, m)
    return bytes([128, 0]) + b.bytes()


def varint(v: int) -> bytes:
    """LEB128."""
    out = bytearray()
    while v >= 0x80:
        out.append(v & 0x7F | 0x80)
        v >>= 7
    return bytes(out + bytes([v]))


def overflow_list(entries: list[tuple[int, int, int]], max_symbol: int = 127) -> bytes:
    """Overflow entries (token, channel, symbol), ascending, as docs/FORMAT.md writes them
    (without the count)."""
    out, token, channel = b"", 0, 0
    for i, (t, c, s) in enumerate(entries):
        same = i > 0 and t == token
        sign = int(s < 0)
        out += varint(t - token) + varint(c - channel - 1 if same else c)
        out += varint((abs(s) - max_symbol - 1) << 1 | sign)
        token, channel = t, c
    return out


def zero_step_codes(count: int) -> bytes:
    """`count` step codes of 0 (step 1.0): center 0, Rice parameter 0, one zero bit each."""
    return struct.pack("<hB", 0, 0) + bytes((count + 7) // 8)


ZERO_SEGMENT = struct.pack("<32I", *([1 << 16] * 32))  # final states of an all-zero segment


@dataclass
class Group:
    tokens: int
    heads: int
    head_dim: int
    side: bytes
    flags: int
    num_tables: int = 1
    seg_tokens: int = 0  # 0: as many as a segment may hold
    quantizer: int = 3
    max_symbol: int = 127
    param: float = 0.5
    segments: list[bytes] = field(default_factory=list)

    @property
    def channels(self) -> int:
        return self.heads * self.head_dim

    def __post_init__(self) -> None:
        if not self.seg_tokens:
            self.seg_tokens = max(1, min(self.tokens, MAX_SEGMENT_SYMBOLS // self.channels))
        if not self.segments:
            count = -(-self.tokens // self.seg_tokens)
            self.segments = [ZERO_SEGMENT] * count


def zero_group(
    tokens: int,
    heads: int,
    head_dim: int,
    *,
    tables: int = 1,
    raw_rows: int = 0,
    raw_value: bytes = b"\0\0",
    seg_tokens: int = 0,
    overflow: list[tuple[int, int, int]] | bytes | None = None,
    overflow_count: int | None = None,
) -> Group:
    """An all-zero group in the token-step form (1-bit step codes: every step 1.0), with
    `tables` identical tables, `raw_rows` verbatim rows filled with `raw_value` (one element's
    bytes) and an `overflow` list: (token, channel, symbol) entries, or the entries' bytes (its
    count written as `overflow_count` if given)."""
    channels = heads * head_dim
    side = zero_step_codes(tokens)
    flags = TOKEN_SCALE | TOKEN_CODES
    if raw_rows:
        flags |= RAW_ROWS
        side += struct.pack("<I", raw_rows) + raw_value * (raw_rows * channels)
    if overflow is not None:
        flags |= OVERFLOW
        count = len(overflow) if overflow_count is None else overflow_count
        entries = overflow if isinstance(overflow, bytes) else overflow_list(overflow)
        side += struct.pack("<I", count) + entries
    if tables > 1:
        side += bytes((channels * (tables - 1).bit_length() + 7) // 8)
    side += zero_table() * tables
    return Group(tokens, heads, head_dim, side, flags, tables, seg_tokens)


def scaled_group(tokens: int, channels: int, scale: bytes, what: int) -> Group:
    """A zero group whose stored fp16 scales (`what`: TOKEN_SCALE, CHANNEL_SCALE or
    CHANNEL_OFFSET) all hold `scale`."""
    count = tokens if what == TOKEN_SCALE else channels
    flags = what | (CHANNEL_SCALE if what == CHANNEL_OFFSET else 0)
    side = scale * count
    if what == CHANNEL_OFFSET:
        side = struct.pack("<e", 1.0) * channels + side
    return Group(tokens, 1, channels, side + zero_table(), flags, quantizer=2)


def align8(x: int) -> int:
    return (x + 7) & ~7


def blob(groups: list[Group], *, dtype: int = 1, layout: int = 1, version: int = 3) -> bytes:
    """The blob of `groups` (2 per layer, K then V), CRC32C sealed."""
    side_off = 64 + 40 * len(groups)
    side_total = sum(len(g.side) for g in groups)
    index_off = align8(side_off + side_total)
    num_segments = sum(len(g.segments) for g in groups)
    payload_off = align8(index_off + 4 * num_segments)
    payload = b"".join(s for g in groups for s in g.segments)
    total = payload_off + len(payload) + 4
    out = bytearray(b"CGKV")
    head = (version, 64, total, len(groups) // 2, dtype, layout, 0, 1, num_segments, 0)
    out += struct.pack("<HHQIBBBBII", *head)
    out += struct.pack("<QQQQ", side_off, index_off, payload_off, 0)
    at, first = side_off, 0
    for g in groups:
        out += struct.pack(
            "<IHHIBBBBfIQII",
            g.tokens,
            g.heads,
            g.head_dim,
            g.seg_tokens,
            g.quantizer,
            g.flags,
            g.num_tables,
            g.max_symbol,
            g.param,
            len(g.side),
            at,
            first,
            len(g.segments),
        )
        at += len(g.side)
        first += len(g.segments)
    for g in groups:
        out += g.side
    out += bytes(index_off - len(out))
    for g in groups:
        out += b"".join(struct.pack("<I", len(s)) for s in g.segments)
    out += bytes(payload_off - len(out))
    out += payload
    return bytes(out) + struct.pack("<I", crc32c(bytes(out)))


def layers(n: int, group: Group) -> list[Group]:
    """`n` layers whose K and V are both `group`."""
    return [group] * (2 * n)


_TABLE: list[int] = []


def crc32c(data: bytes) -> int:
    """CRC32C (Castagnoli, reflected), one byte at a time: the format's definition, not fast."""
    if not _TABLE:
        for i in range(256):
            c = i
            for _ in range(8):
                c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
            _TABLE.append(c)
    crc = 0xFFFFFFFF
    table = _TABLE
    for b in data:
        crc = (crc >> 8) ^ table[(crc ^ b) & 0xFF]
    return crc ^ 0xFFFFFFFF


def reseal(blob: bytearray) -> bytes:
    """Fix the trailing checksum so that a mutation reaches the deeper validation."""
    blob[-4:] = struct.pack("<I", crc32c(bytes(blob[:-4])))
    return bytes(blob)


def decode_or_format_error(data: bytes) -> None:
    """Decode `data` (a hostile blob): a FormatError is the only acceptable failure."""
    import cachegen

    try:
        cachegen.decode(data, framework="numpy", max_output_bytes=1 << 24)
    except cachegen.FormatError:
        pass
