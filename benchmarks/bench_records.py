"""Encode and decode of 10,000 device records: ``python benchmarks/bench_records.py``.

Records are the example NIC's preserved state (``NicRecord``, its current version): the payload
alone (deterministic CBOR via cattrs) and sealed in its record envelope.
Decoding includes the strict well-formedness scan that runs before cbor2.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import TypeVar

from luo_example_nic import NicRecord

from luo_core.abi import decode_record, decode_state, encode_record, encode_state, schema_of

T = TypeVar("T")


def best(fn: Callable[[], T], repeat: int) -> tuple[float, T]:
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    assert out is not None
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5, help="best of")
    args = parser.parse_args()
    n = args.records
    states = [
        NicRecord(mac=0x0200_0000_0000 | i, tx_tail=i % 256, tx_packets=i * 7) for i in range(n)
    ]
    schema = schema_of(NicRecord)
    schemas = {schema.compatible: NicRecord}

    def report(label: str, seconds: float) -> None:
        print(f"{label:<36} {n / seconds:>10,.0f} records/s {seconds / n * 1e6:7.2f} µs/record")

    t, payloads = best(lambda: [encode_state(s) for s in states], args.repeat)
    report("encode_state", t)
    t, decoded = best(
        lambda: [decode_state(NicRecord, p, schema.version) for p in payloads], args.repeat
    )
    assert decoded == states
    report("decode_state (scan + cbor2 + cattrs)", t)
    t, blobs = best(lambda: [encode_record(s) for s in states], args.repeat)
    report("encode_record (state + envelope)", t)
    t, records = best(lambda: [decode_record(b, schemas) for b in blobs], args.repeat)
    assert records == states
    report("decode_record (envelope + state)", t)
    print(f"record: {len(blobs[0])} bytes sealed, payload {len(payloads[0])} bytes")


if __name__ == "__main__":
    main()
