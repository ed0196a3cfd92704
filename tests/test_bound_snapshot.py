"""The verdict's numbers do not move: every bound, trace and ratio of fixed networks, bit for bit, against a snapshot.

Speed-ups of the error bound and of the comparison (issue 27) must change no tolerance and no ratio: the
snapshot (``tests/data/bound_snapshot.json``, made as ``tests/bound_snapshot.py`` says) holds
digests of every array and the verdicts' ratios in hexadecimal. numpy's float64 products may round
differently on another CPU or BLAS build, so the comparison runs only on the kind of machine the snapshot
was made on; elsewhere the test says why it is skipped.
"""

from __future__ import annotations

import json

import pytest

from tests.bound_snapshot import SNAPSHOT, compute, made_here


@pytest.mark.skipif(not made_here(), reason="the snapshot was made on an x86-64 AMD CPU with AVX-512 and numpy 2.4.6")
def test_bounds_and_ratios_equal_the_snapshot_bit_for_bit() -> None:
    expected = json.loads(SNAPSHOT.read_text())
    got = json.loads(json.dumps(compute()))
    assert got.keys() == expected.keys()
    differ = [key for key in expected if got[key] != expected[key]]
    assert not differ, f"{len(differ)} of {len(expected)} entries differ from the snapshot, first: {differ[:8]}"
