"""Erasure coding over GF(256): K parity volumes that let any K lost volumes of a group be rebuilt.

The field is GF(2^8) with the Reed-Solomon polynomial x^8 + x^4 + x^3 + x^2 + 1 (0x11d); adding is
XOR. A group has G data volumes (rows 0 .. G-1) and K parity volumes (rows G .. G+K-1). Parity p
at byte offset x is  sum over i of coefficient(p, i) * data_i[x]  (a data volume shorter than
the others counts as zero-padded), so it can be built one data volume at a time, in any order.

The coefficients form a Cauchy matrix 1 / (x_p + y_i) with x_p = 255 - p and y_i = i, scaled so
that parity 0 is the plain XOR of the data and data volume 0 enters every parity unchanged
(scaling rows and columns keeps every square submatrix invertible, the property that makes any
G of the G+K volumes enough to rebuild the others). The coefficients depend only on (p, i), not
on the group's size, so a group that ends early (the end of the stream) needs no other code.

Byte buffers are multiplied by a constant with bytes.translate (a table lookup in C, ~3 GB/s)
and added into numpy arrays with bitwise_xor (memory speed). Python ints (int.from_bytes) did the
adding before: three conversion passes at ~1.4 GB/s each made parity cost two thirds of
split-span's throughput. zfec and similar libraries are not used: they encode a stripe with all
data blocks at hand, while split-span must fold in one data volume at a time, as the volumes
stream past and are burned and deleted.
"""

import functools

POLYNOMIAL = 0x11D
FIELD_SIZE = 256
MAX_PARITY = 16
# y_i = i and x_p = 255 - p must not meet: data rows stay below 256 - MAX_PARITY.
MAX_DATA = FIELD_SIZE - MAX_PARITY
CODE_ID = "gf256-0x11d-cauchy-normalized"


def _exp_log_tables():
    exp = [0] * (2 * (FIELD_SIZE - 1))
    log = [0] * FIELD_SIZE
    value = 1
    for power in range(FIELD_SIZE - 1):
        exp[power] = exp[power + FIELD_SIZE - 1] = value
        log[value] = power
        value <<= 1
        if value & FIELD_SIZE:
            value ^= POLYNOMIAL
    return exp, log


_EXP, _LOG = _exp_log_tables()


def multiply(a, b):
    if a == 0 or b == 0:
        return 0
    return _EXP[_LOG[a] + _LOG[b]]


def inverse(a):
    if a == 0:
        raise ZeroDivisionError("0 has no inverse in GF(256)")
    return _EXP[(FIELD_SIZE - 1 - _LOG[a]) % (FIELD_SIZE - 1)]


def divide(a, b):
    return multiply(a, inverse(b))


@functools.lru_cache(maxsize=FIELD_SIZE)
def multiplication_table(constant):
    """The bytes.translate table that multiplies every byte by constant."""
    return bytes(multiply(constant, value) for value in range(FIELD_SIZE))


def scale(constant, buffer):
    """constant * buffer, bytewise (a bytes or bytearray; returned as is for 1)."""
    return buffer if constant == 1 else buffer.translate(multiplication_table(constant))


def add_scaled(total, constant, buffer):
    """total += constant * buffer, in place: total is a numpy uint8 array at least as long as
    the buffer (any bytes-like object), whose first len(buffer) bytes take the sum."""
    if not constant:
        return
    import numpy    # here, not at the top: importing it takes ~90 ms, and only parity work needs it
    if constant != 1 and not isinstance(buffer, (bytes, bytearray)):
        buffer = bytes(buffer)   # translate is a method of bytes and bytearray only (copy: cheap)
    values = numpy.frombuffer(scale(constant, buffer), numpy.uint8)
    part = total[:len(values)]
    numpy.bitwise_xor(part, values, out=part)


def combine(terms, length):
    """sum of constant * buffer over the (constant, buffer) terms, as `length` bytes; a buffer
    shorter than length counts as zero-padded.

    The code's definition as one sum, kept as its reference: the engine folds one volume at a
    time (parity.ParityAccumulator, Rebuilder), and the tests check those folds, and doc/format.md's
    worked example, against this."""
    import numpy
    total = numpy.zeros(length, numpy.uint8)
    for constant, buffer in terms:
        add_scaled(total, constant, buffer)
    return total.tobytes()


def invert(matrix):
    """The inverse of a square matrix over GF(256) (lists of ints), by Gauss-Jordan elimination;
    ValueError when it is singular."""
    size = len(matrix)
    rows = [list(row) + [int(i == j) for j in range(size)] for i, row in enumerate(matrix)]
    for column in range(size):
        pivot = next((r for r in range(column, size) if rows[r][column]), None)
        if pivot is None:
            raise ValueError("singular matrix")
        rows[column], rows[pivot] = rows[pivot], rows[column]
        factor = inverse(rows[column][column])
        rows[column] = [multiply(factor, value) for value in rows[column]]
        for r in range(size):
            if r != column and rows[r][column]:
                factor = rows[r][column]
                rows[r] = [value ^ multiply(factor, pivot_value)
                           for value, pivot_value in zip(rows[r], rows[column])]
    return [row[size:] for row in rows]


def _cauchy(parity, data):
    return inverse((FIELD_SIZE - 1 - parity) ^ data)


@functools.lru_cache(maxsize=None)
def coefficient(parity, data):
    """What data volume `data` is multiplied by in parity volume `parity` (both from 0)."""
    if not (0 <= parity < MAX_PARITY and 0 <= data < MAX_DATA):
        raise ValueError(f"parity {parity} or data {data} is outside the code")
    by_column = divide(_cauchy(parity, data), _cauchy(0, data))
    return divide(by_column, divide(_cauchy(parity, 0), _cauchy(0, 0)))


class NotEnoughVolumes(Exception):
    """Too few rows are known to rebuild the ones wanted."""


class Code:
    """The code of one group: data_count data rows, then parity_count parity rows."""

    def __init__(self, data_count, parity_count):
        if not 1 <= data_count <= MAX_DATA:
            raise ValueError(f"{data_count} data volumes: a group holds 1 to {MAX_DATA}")
        if not 1 <= parity_count <= MAX_PARITY:
            raise ValueError(f"{parity_count} parity volumes: 1 to {MAX_PARITY}")
        self.data_count = data_count
        self.parity_count = parity_count
        self.rows = data_count + parity_count

    def is_parity(self, row):
        return row >= self.data_count

    def generator_row(self, row):
        """The row's coefficients over the data rows."""
        if self.is_parity(row):
            return [coefficient(row - self.data_count, i) for i in range(self.data_count)]
        return [int(i == row) for i in range(self.data_count)]

    def recovery(self, wanted, known):
        """How to rebuild the rows `wanted` from the rows `known`: {row: {source row: constant}},
        each wanted row being the sum of constant * source. NotEnoughVolumes when `known` holds
        fewer rows than the data rows it leaves unknown need."""
        known_data = [i for i in range(self.data_count) if i in known]
        unknown_data = [i for i in range(self.data_count) if i not in known]
        parity_rows = sorted(r for r in known if self.is_parity(r))[:len(unknown_data)]
        if len(parity_rows) < len(unknown_data):
            raise NotEnoughVolumes(f"{len(unknown_data)} data rows unknown, "
                                   f"{len(parity_rows)} parity rows known")
        # Each used parity row minus the known data's share is a sum over the unknown data:
        # solve that small system once, then express every wanted row over the known rows.
        solved = {i: {i: 1} for i in known_data}
        if unknown_data:
            system = [[coefficient(p - self.data_count, i) for i in unknown_data] for p in parity_rows]
            solution = invert(system)
            for b, row in enumerate(unknown_data):
                terms = {}
                for a, p in enumerate(parity_rows):
                    weight = solution[b][a]
                    _add_term(terms, p, weight)
                    for i in known_data:
                        _add_term(terms, i, multiply(weight, coefficient(p - self.data_count, i)))
                solved[row] = terms
        plans = {}
        for row in wanted:
            if row in known:
                plans[row] = {row: 1}
            elif not self.is_parity(row):
                plans[row] = {s: c for s, c in solved[row].items() if c}
            else:
                terms = {}
                for i, weight in enumerate(self.generator_row(row)):
                    for source, constant in solved[i].items():
                        _add_term(terms, source, multiply(weight, constant))
                plans[row] = {s: c for s, c in terms.items() if c}
        return plans


def _add_term(terms, row, constant):
    terms[row] = terms.get(row, 0) ^ constant
