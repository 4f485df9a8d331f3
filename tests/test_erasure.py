"""The GF(256) arithmetic and the erasure code: field laws, matrix inversion, and that any K lost
rows of a group (and no more) can be rebuilt from the others."""

import itertools
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import parity_rows
from mirrorpipe.sets import erasure

byte = st.integers(0, 255)
nonzero = st.integers(1, 255)


def slow_multiply(a, b):
    """Carry-less multiplication reduced by the polynomial: an oracle independent of the tables."""
    product = 0
    while b:
        if b & 1:
            product ^= a
        b >>= 1
        a <<= 1
        if a & 0x100:
            a ^= erasure.POLYNOMIAL
    return product


def test_multiply_matches_carry_less_multiplication_for_every_pair():
    for a in range(256):
        table = erasure.multiplication_table(a)
        for b in range(256):
            assert erasure.multiply(a, b) == slow_multiply(a, b) == table[b]


@given(byte, byte, byte)
def test_field_laws(a, b, c):
    mul = erasure.multiply
    assert mul(a, b) == mul(b, a)
    assert mul(mul(a, b), c) == mul(a, mul(b, c))
    assert mul(a, b ^ c) == mul(a, b) ^ mul(a, c)
    assert mul(a, 1) == a and mul(a, 0) == 0


@given(nonzero, byte)
def test_inverse_and_divide(a, b):
    assert erasure.multiply(a, erasure.inverse(a)) == 1
    assert erasure.multiply(erasure.divide(b, a), a) == b


def test_zero_has_no_inverse():
    with pytest.raises(ZeroDivisionError):
        erasure.inverse(0)


def test_scale_and_combine_work_bytewise_and_zero_pad_short_buffers():
    a, b = os.urandom(1000), os.urandom(700)
    assert erasure.scale(1, a) is a
    assert erasure.scale(7, a) == bytes(erasure.multiply(7, x) for x in a)
    combined = erasure.combine([(3, a), (9, b), (0, os.urandom(1000))], 1000)
    padded = b + bytes(300)
    assert combined == bytes(erasure.multiply(3, x) ^ erasure.multiply(9, y) for x, y in zip(a, padded))
    assert erasure.combine([], 5) == bytes(5)


def test_the_worked_example_of_the_format_document():
    """doc/format.md 4.6, byte for byte: the parity volumes and both rebuilds."""
    data = [bytes.fromhex(h) for h in ("01020304", "10203040", "a0b0c0d0")]
    rows = encode(data)[:5]
    assert rows[3:] == [bytes.fromhex("b192f394"), bytes.fromhex("7e71aade")]
    code = erasure.Code(3, 2)
    plan = code.recovery([1], {0, 2, 4})[1]
    assert plan == {4: 241, 0: 241, 2: 142}
    assert erasure.combine([(c, rows[s]) for s, c in plan.items()], 4) == data[1]
    plans = code.recovery([0, 1], {2, 3, 4})
    assert plans == {0: {3: 227, 4: 226, 2: 28}, 1: {3: 226, 4: 226, 2: 29}}
    assert [erasure.combine([(c, rows[s]) for s, c in plans[r].items()], 4) for r in (0, 1)] == data[:2]


def matrix_product(a, b):
    return [[_dot(row, column) for column in zip(*b)] for row in a]


def _dot(row, column):
    total = 0
    for x, y in zip(row, column):
        total ^= erasure.multiply(x, y)
    return total


@given(st.integers(1, 6).flatmap(lambda n: st.lists(st.lists(byte, min_size=n, max_size=n),
                                                     min_size=n, max_size=n)))
def test_invert_gives_the_inverse_or_refuses_a_singular_matrix(matrix):
    size = len(matrix)
    identity = [[int(i == j) for j in range(size)] for i in range(size)]
    try:
        inverse = erasure.invert(matrix)
    except ValueError:
        # Singular: some nonzero combination of the rows is zero. Show it by elimination rank.
        assert _rank(matrix) < size
        return
    assert matrix_product(matrix, inverse) == identity
    assert matrix_product(inverse, matrix) == identity


def _rank(matrix):
    rows = [list(r) for r in matrix]
    rank = 0
    for column in range(len(rows[0])):
        pivot = next((r for r in range(rank, len(rows)) if rows[r][column]), None)
        if pivot is None:
            continue
        rows[rank], rows[pivot] = rows[pivot], rows[rank]
        for r in range(len(rows)):
            if r != rank and rows[r][column]:
                factor = erasure.divide(rows[r][column], rows[rank][column])
                rows[r] = [x ^ erasure.multiply(factor, y) for x, y in zip(rows[r], rows[rank])]
        rank += 1
    return rank


def test_parity_0_is_plain_xor_and_data_0_enters_every_parity_unchanged():
    assert all(erasure.coefficient(0, i) == 1 for i in range(erasure.MAX_DATA))
    assert all(erasure.coefficient(p, 0) == 1 for p in range(erasure.MAX_PARITY))
    assert all(erasure.coefficient(p, i) for p in range(erasure.MAX_PARITY) for i in range(erasure.MAX_DATA))


def test_every_square_submatrix_of_the_coefficients_is_invertible():
    """The MDS property: any K lost rows of a group can be rebuilt. Exhaustive for 4 parity rows
    over 12 data rows, and for pairs over the whole width of the code."""
    for parity_count, data_count in ((4, 12), (2, erasure.MAX_DATA)):
        for size in range(1, parity_count + 1):
            for parity_indices in itertools.combinations(range(parity_count), size):
                for data_rows in itertools.combinations(range(data_count), size):
                    erasure.invert([[erasure.coefficient(p, i) for i in data_rows] for p in parity_indices])


def encode(data):
    """The data rows followed by 3 parity rows, each the coefficient-weighted sum of the data."""
    return list(data) + parity_rows(data, 3)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_any_k_lost_rows_are_rebuilt_and_more_are_refused(draw):
    data_count = draw.draw(st.integers(1, 20), "data_count")
    parity_count = draw.draw(st.integers(1, 3), "parity_count")
    length = draw.draw(st.integers(1, 64), "length")
    data = [draw.draw(st.binary(min_size=length, max_size=length)) for _ in range(data_count)]
    rows = encode(data)[:data_count + parity_count]
    code = erasure.Code(data_count, parity_count)
    lost = draw.draw(st.sets(st.integers(0, code.rows - 1), max_size=parity_count + 1), "lost")
    known = set(range(code.rows)) - lost
    if len(lost) > parity_count:
        with pytest.raises(erasure.NotEnoughVolumes):
            code.recovery(sorted(lost), known)
        return
    for row, plan in code.recovery(sorted(lost), known).items():
        assert set(plan) <= known
        assert erasure.combine([(c, rows[s]) for s, c in plan.items()], length) == rows[row]


def test_code_limits():
    with pytest.raises(ValueError):
        erasure.Code(0, 1)
    with pytest.raises(ValueError):
        erasure.Code(erasure.MAX_DATA + 1, 1)
    with pytest.raises(ValueError):
        erasure.Code(3, erasure.MAX_PARITY + 1)
    with pytest.raises(ValueError):
        erasure.coefficient(erasure.MAX_PARITY, 0)
