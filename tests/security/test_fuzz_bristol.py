"""Fuzzing the Bristol Fashion loader: random and mutated circuits either load
into a consistent circuit or fail with a ValueError naming the file and line."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import pytest
from fuzzing import edits, fuzz, mutate
from hypothesis import given
from hypothesis import strategies as st

from pie import gc

BRISTOL = Path(__file__).resolve().parents[1] / "data" / "bristol"
ERROR = re.compile(r"^fuzz\.txt:\d+: ")


@st.composite
def random_circuit(draw: st.DrawFn) -> str:
    """A syntactically plausible circuit: valid most of the time, with wire
    indices drawn a little beyond what is written (reads before writes,
    out-of-range wires, double writes, cycles through later gates)."""
    n_in = draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))
    n_out = draw(st.lists(st.integers(1, 3), min_size=1, max_size=2))
    in_bits = sum(n_in)
    gates = draw(st.integers(max(sum(n_out), 1), 12))
    wires = in_bits + gates
    lines = []
    for g in range(gates):
        out = in_bits + g if draw(st.integers(0, 9)) else draw(st.integers(0, wires + 2))
        reach = in_bits + g + (2 if not draw(st.integers(0, 7)) else 0)
        a, b = draw(st.integers(0, reach - 1)), draw(st.integers(0, reach - 1))
        op = draw(st.sampled_from(["XOR", "AND", "INV", "NOT", "EQW", "EQ", "OR", "MAND"]))
        if op in ("XOR", "AND", "OR"):
            lines.append(f"2 1 {a} {b} {out} {op}")
        elif op == "EQ":
            lines.append(f"1 1 {draw(st.integers(0, 2))} {out} EQ")
        elif op == "MAND":
            lines.append(f"4 2 {a} {b} {a} {b} {out} {out + 1} MAND")
        else:
            lines.append(f"1 1 {a} {out} {op}")
    header = f"{gates} {wires}\n{len(n_in)} {' '.join(map(str, n_in))}\n"
    header += f"{len(n_out)} {' '.join(map(str, n_out))}\n\n"
    return header + "\n".join(lines) + "\n"


def check_load(text: str) -> None:
    try:
        circuit = gc.Circuit.from_bristol_text(text, "fuzz.txt")
    except ValueError as exc:
        assert ERROR.match(str(exc)), f"error without a line number: {exc}"
        return
    # A circuit that loads is consistent: it evaluates, and its widths add up.
    widths = circuit.input_widths
    outs = circuit.evaluate([(1 << w) - 1 for w in widths])
    assert len(outs) == len(circuit.output_widths)
    assert all(0 <= v < (1 << w) for v, w in zip(outs, circuit.output_widths))


@fuzz()
@given(random_circuit())
def test_random_circuits(text: str) -> None:
    check_load(text)


@fuzz()
@given(st.data())
def test_mutated_random_circuits(data: st.DataObject) -> None:
    text = data.draw(random_circuit())
    check_load(mutate(text.encode(), data.draw(edits())).decode("latin-1"))


@pytest.fixture(scope="module")
def aes_text() -> bytes:
    return gzip.decompress((BRISTOL / "aes_128.txt.gz").read_bytes())


@fuzz(0.5)
@given(st.data())
def test_mutated_aes_circuit(aes_text: bytes, data: st.DataObject) -> None:
    # Edits near the header (counts, widths) and anywhere in the gate list.
    check_load(mutate(aes_text, data.draw(edits()), focus=64).decode("latin-1"))


NUMBERS = st.sampled_from(["0", "1", "2", "4294967293", "4294967294", "4294967295",
                           "99999999999", "18446744073709551616", "-1", "1e9", "0x10", ""])


@fuzz()
@given(NUMBERS, NUMBERS, NUMBERS, NUMBERS)
def test_huge_and_odd_counts(gates: str, wires: str, inputs: str, width: str) -> None:
    """Counts at and past the 32-bit limits load nothing big: the parser
    refuses them (or the text that cannot back them) before allocating."""
    check_load(f"{gates} {wires}\n{inputs} {width}\n1 1\n2 1 0 0 1 AND\n")
    check_load(f"1 3\n1 {width}\n1 1\n2 1 0 {wires} 2 AND\n")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1 4294967290\n1 1\n1 1\n2 1 0 0 1 AND\n", "num_wires"),
        ("4294967290 3\n1 1\n1 1\n2 1 0 0 1 AND\n", "num_gates"),
        ("1 4000000\n2 1 1\n1 1\n2 1 0 1 2 AND\n", "num_wires"),
    ],
)
def test_counts_beyond_the_text_are_refused_before_allocation(text: str, message: str) -> None:
    # These once sized a 16 GiB wire map / a 64 GiB gate reservation.
    with pytest.raises(ValueError, match=rf"^fuzz\.txt:\d+: {message}"):
        gc.Circuit.from_bristol_text(text, "fuzz.txt")
