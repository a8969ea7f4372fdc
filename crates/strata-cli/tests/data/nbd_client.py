# Drives strata's NBD server through libnbd (what nbdsh runs): structured
# replies and base:allocation negotiated, many requests in flight, replies
# completing out of order, data and block status checked.
# Usage: python3 nbd_client.py URI
import sys

import nbd

h = nbd.NBD()
h.add_meta_context("base:allocation")
h.connect_uri(sys.argv[1])
assert h.get_structured_replies_negotiated(), "structured replies"
assert h.can_meta_context("base:allocation"), "base:allocation"
assert h.can_multi_conn() and h.can_flush() and h.can_zero() and h.can_trim()
size = h.get_size()
assert size == 64 << 20, size

# Distinct data in 32 chunks of 64 KiB, then a zeroed range.
for i in range(32):
    h.pwrite(bytes([i + 1]) * 65536, i * 65536)
h.zero(4 << 20, 1 << 20)  # count, offset: 1..5 MiB
h.flush()

out_of_order = False
for attempt in range(5):
    done = []
    bufs = {}
    # Fresh dirty data, then a flush (which must write it out) followed by
    # small reads, which may overtake it.
    h.pwrite(bytes([99]) * (8 << 20), 16 << 20)
    h.aio_flush(completion=lambda err, k="flush": done.append(k) or 1)
    for i in range(32):
        b = nbd.Buffer(65536)
        bufs[i] = b
        h.aio_pread(b, i * 65536, completion=lambda err, k=i: done.append(k) or 1)
    while h.aio_in_flight() > 0:
        h.poll(-1)
    assert len(done) == 33, done
    for i, b in bufs.items():
        want = bytes([i + 1]) if i < 16 else b"\0"  # 1 MiB on was zeroed
        assert b.to_bytearray() == want * 65536, i
    if done[0] != "flush":
        out_of_order = True
assert out_of_order, "every reply came in order"

# Block status: data in the first MiB, the zeroed range reads as zero.
seen = []
def extent(metacontext, offset, entries, err):
    seen.append((metacontext, offset, list(entries)))
    return 0
h.block_status(8 << 20, 0, extent)
assert seen and seen[0][0] == "base:allocation", seen
ents = seen[0][2]
total = sum(ents[0::2])
assert total >= 8 << 20, ents
assert ents[1] & 2 == 0, "the first extent holds data"
# Somewhere in 1..5 MiB the zeroed range reads as zero.
at, zero_seen = 0, False
for length, flags in zip(ents[0::2], ents[1::2]):
    if at >= (1 << 20) and at < (5 << 20) and flags & 2:
        zero_seen = True
    at += length
assert zero_seen, ents

# Errors come back as errors: a read past the end.
try:
    h.pread(512, size)
    raise SystemExit("read past the end succeeded")
except nbd.Error as e:
    assert e.errno is not None, e
h.shutdown()
print("ok")
