"""Fixed-point arithmetic over the ring Z_{2^64} and an in-process 3-party replicated-secret-sharing simulator.

This is the arithmetic layer of secure-inference papers (PUMA, MPCFormer, CrypTen) in the setting of
ABY3 (Mohassel and Rindal, CCS 2018): three parties, honest majority, semi-honest.

**Fixed point** (:class:`FixedPoint`). A real ``x`` is encoded as the ring element ``round(x * 2^f) mod 2^64``
(two's complement for negatives); decoding reads the element as a signed 64-bit integer and divides by
``2^f``. A product of two encodings carries ``2f`` fractional bits and must be *truncated* (arithmetic shift
right by ``f``).

**Replicated secret sharing** (:class:`RSS3`). ``x = x_0 + x_1 + x_2 (mod 2^64)``; party ``i`` holds the pair
``(x_i, x_{i+1})`` (indices mod 3), so any two parties reconstruct and any single one sees two uniform
elements. A :class:`Shared` value stores the three additive components ``x_0, x_1, x_2`` (axis 0); the
simulator plays all three parties in one process and *counts* every message.

* addition, subtraction, multiplication by a public integer, adding a public constant: local, free;
* multiplication (ABY3 section 3.1): party ``i`` computes ``z_i = x_i y_i + x_i y_{i+1} + x_{i+1} y_i + a_i``
  with a zero-sharing ``a_0 + a_1 + a_2 = 0`` (from pairwise PRF keys; here NumPy generators), then sends
  ``z_i`` to party ``i-1``: **one round, three ring elements per product** (a matrix product costs three
  ring elements per *output* entry);
* truncation: probabilistic truncation with a correct top bit (Escudero et al. 2020, SPU's ABY3 ``TruncAPr``):
  open ``c = x + 2^62 + r`` for a dealer's mask ``r`` (one round, three elements), correct the wrap with the
  shared top bit of ``r``; off by at most one unit in the last place whenever ``|x| < 2^62`` (ABY3's plain
  Pi_trunc2 instead fails with probability about ``|x| / 2^63``, which at f = 18 breaks a LayerNorm of values
  near 100 once in about 10^4). :attr:`RSS3.large_trunc_errors` counts errors beyond one unit. The dealer's
  material is offline and not counted;
* comparison (``ltz``, the sign bit) and normalisation (the power of two of a positive value, which
  reciprocal and inverse square root start from) are **ideal functionalities**: the simulator reconstructs,
  computes in the clear and re-shares with fresh randomness, and *counts the cost of the ABY3 circuit that
  would compute them* (:data:`COST_MODEL`). Their outputs are exact, so these steps add no error.

Costs are machine-independent (bytes and rounds of the online phase), never wall time. A round is one
batched protocol call: the simulator runs element-wise operations on whole arrays, so ``n`` comparisons done
together count one comparison's rounds and ``n`` times its bytes.

Sanity checks, not a security proof: ``reconstruct(share(x)) == x`` exactly; one party's view is uniform.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

RING_BITS = 64
ELEMENT_BYTES = RING_BITS // 8
_LOG_L = int(math.log2(RING_BITS))

#: Online cost per element of each protocol: (bits sent in total by the three parties, rounds).
#: ``mul``/``trunc``/``open``: three ring elements, one round (ABY3 sections 3.1, 5.1).
#: ``ltz`` (ideal; the ABY3 circuit): a full adder reduces the three shares to two (``l`` AND gates, one
#: round), a Kogge-Stone carry network gives the carry into the top bit (``2 l log2 l`` AND gates,
#: ``log2 l`` rounds), a bit injection turns the bit into an arithmetic share (two products, two rounds);
#: an AND gate costs three bits.
#: ``normalize`` (ideal): a full A2B conversion (``l + 2 l log2 l`` ANDs, ``1 + log2 l`` rounds), a prefix-OR
#: (``l log2 l`` ANDs, ``log2 l`` rounds) and a B2A of the one-hot word (``l + 2 l log2 l`` ANDs,
#: ``1 + log2 l`` rounds), the circuit behind SPU's ``highestOneBit``.
COST_MODEL = {
    "mul": (3 * RING_BITS, 1),
    "trunc": (3 * RING_BITS, 1),
    "open": (3 * RING_BITS, 1),
    "ltz": (3 * (RING_BITS + 2 * RING_BITS * _LOG_L) + 2 * 3 * RING_BITS, 1 + _LOG_L + 2),
    "normalize": (3 * (2 * (RING_BITS + 2 * RING_BITS * _LOG_L) + RING_BITS * _LOG_L), 2 * (1 + _LOG_L) + _LOG_L),
}


class FixedPoint:
    """Encode reals as ring elements with ``frac_bits`` fractional bits (two's complement in Z_{2^64})."""

    def __init__(self, frac_bits: int = 18):
        if not 0 <= frac_bits < RING_BITS // 2:
            raise ValueError(f"frac_bits must be in [0, {RING_BITS // 2}), got {frac_bits}")
        self.frac_bits = frac_bits
        self.scale = float(2**frac_bits)

    def encode(self, x) -> np.ndarray:
        """``round(x 2^f) mod 2^64`` as uint64; raises ``ValueError`` if a value does not fit in 63 bits."""
        x = np.asarray(x, dtype=np.float64)
        if not np.all(np.isfinite(x)):
            raise ValueError("cannot encode a non-finite value")
        scaled = np.rint(x * self.scale)
        if np.any(np.abs(scaled) >= 2.0**62):
            raise ValueError(f"value out of the fixed-point range (|x| < 2^{62 - self.frac_bits})")
        return scaled.astype(np.int64).view(np.uint64)

    def decode(self, u) -> np.ndarray:
        """Read ring elements as signed integers and divide by ``2^f``."""
        return np.asarray(u, dtype=np.uint64).view(np.int64).astype(np.float64) / self.scale

    def truncate(self, u, bits: int | None = None) -> np.ndarray:
        """Deterministic truncation (arithmetic shift right, floor) of plaintext ring elements."""
        bits = self.frac_bits if bits is None else bits
        return (np.asarray(u, dtype=np.uint64).view(np.int64) >> np.int64(bits)).view(np.uint64)


def _align(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Insert axes behind the share axis so that NumPy broadcasting applies to the shared shapes."""
    while a.ndim < b.ndim:
        a = a[:, None]
    while b.ndim < a.ndim:
        b = b[:, None]
    return a, b


def _ring(x) -> np.ndarray:
    return np.asarray(x, dtype=np.uint64)


@dataclass
class Shared:
    """A replicated sharing: ``comps[i]`` is the additive component ``x_i``; party ``i`` holds ``x_i, x_{i+1}``."""

    comps: np.ndarray  # uint64, shape (3, *shape)

    @property
    def shape(self) -> tuple:
        return self.comps.shape[1:]

    def party_view(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """What party ``i`` holds: ``(x_i, x_{i+1})``."""
        return self.comps[i % 3], self.comps[(i + 1) % 3]

    def __getitem__(self, key) -> Shared:
        key = key if isinstance(key, tuple) else (key,)
        return Shared(self.comps[(slice(None), *key)])

    def reshape(self, *shape) -> Shared:
        return Shared(self.comps.reshape(3, *shape))

    def transpose(self, *axes) -> Shared:
        return Shared(self.comps.transpose(0, *[a + 1 for a in axes]))

    def swapaxes(self, a: int, b: int) -> Shared:
        a, b = (a % len(self.shape)) + 1, (b % len(self.shape)) + 1
        return Shared(np.swapaxes(self.comps, a, b))


@dataclass
class CostCounter:
    """Online communication: total bytes and rounds, and per protocol ``{name: [calls, elements, bytes, rounds]}``."""

    bytes: int = 0
    rounds: int = 0
    by_op: dict = field(default_factory=lambda: defaultdict(lambda: [0, 0, 0, 0]))

    def add(self, op: str, n_elements: int) -> None:
        bits, rounds = COST_MODEL[op]
        nbytes = bits * int(n_elements) // 8
        self.bytes += nbytes
        self.rounds += rounds
        entry = self.by_op[op]
        entry[0] += 1
        entry[1] += int(n_elements)
        entry[2] += nbytes
        entry[3] += rounds

    def snapshot(self) -> tuple[int, int]:
        return self.bytes, self.rounds


class RSS3:
    """Three-party replicated secret sharing over Z_{2^64} with fixed point and counted communication.

    ``random_state`` seeds the sharing randomness, the zero-sharings of the multiplications and the
    truncation pairs; every result is a deterministic function of it.
    """

    def __init__(self, frac_bits: int = 18, random_state=0):
        self.fxp = FixedPoint(frac_bits)
        self.f = frac_bits
        self.rng = np.random.default_rng(random_state)
        self.cost = CostCounter()
        self.n_truncations = 0
        self.large_trunc_errors = 0

    # -- randomness --------------------------------------------------------------------------------
    def _random_ring(self, shape) -> np.ndarray:
        return self.rng.integers(0, 2**64, size=shape, dtype=np.uint64, endpoint=False)

    def _zero_sharing(self, shape) -> np.ndarray:
        """``a_0 + a_1 + a_2 = 0``: ``a_i = k_i - k_{i+1}`` from three pairwise keys (ABY3 section 2.2)."""
        k = self._random_ring((3, *shape))
        return k - np.roll(k, -1, axis=0)

    # -- sharing -----------------------------------------------------------------------------------
    def share_ring(self, u) -> Shared:
        """Share ring elements: two uniform components, the third fixes the sum."""
        u = _ring(u)
        c0, c1 = self._random_ring(u.shape), self._random_ring(u.shape)
        return Shared(np.stack([c0, c1, u - c0 - c1]))

    def share(self, x) -> Shared:
        """Encode reals in fixed point and share them."""
        return self.share_ring(self.fxp.encode(x))

    def share_int(self, x) -> Shared:
        """Share integers (e.g. a one-hot vector) without a fixed-point scale."""
        return self.share_ring(np.asarray(x, dtype=np.int64).view(np.uint64))

    def reconstruct(self, x: Shared) -> np.ndarray:
        """The shared ring elements (no communication counted: this is the simulator looking, not a party)."""
        return x.comps[0] + x.comps[1] + x.comps[2]

    def decode(self, x: Shared) -> np.ndarray:
        return self.fxp.decode(self.reconstruct(x))

    def open(self, x: Shared) -> np.ndarray:
        """Reveal to all parties: each sends the component its successor lacks (counted)."""
        self.cost.add("open", math.prod(x.shape))
        return self.reconstruct(x)

    # -- local operations ----------------------------------------------------------------------------
    def add(self, x: Shared, y: Shared) -> Shared:
        a, b = _align(x.comps, y.comps)
        return Shared(a + b)

    def sub(self, x: Shared, y: Shared) -> Shared:
        a, b = _align(x.comps, y.comps)
        return Shared(a - b)

    def neg(self, x: Shared) -> Shared:
        return Shared(np.uint64(0) - x.comps)

    def add_public_ring(self, x: Shared, u) -> Shared:
        """Add a public ring element (component 0 absorbs it)."""
        comps = x.comps.copy()
        comps[0] = comps[0] + _ring(u)
        return Shared(comps)

    def add_public(self, x: Shared, c) -> Shared:
        """Add a public real (fixed-point encoded)."""
        return self.add_public_ring(x, self.fxp.encode(c))

    def mul_public_ring(self, x: Shared, u) -> Shared:
        """Multiply by public ring elements (local; a fixed-point constant leaves 2f fractional bits)."""
        return Shared(x.comps * _ring(u))

    def sum(self, x: Shared, axis: int, keepdims: bool = False) -> Shared:
        axis = axis % len(x.shape) + 1
        return Shared(x.comps.sum(axis=axis, keepdims=keepdims, dtype=np.uint64))

    # -- interactive operations -----------------------------------------------------------------------
    def _reshare(self, z: np.ndarray) -> Shared:
        """Party ``i`` holds ``z_i``; adding a zero-sharing and sending ``z_i`` to party ``i-1`` re-replicates."""
        self.cost.add("mul", math.prod(z.shape[1:]))
        return Shared(z + self._zero_sharing(z.shape[1:]))

    def mul(self, x: Shared, y: Shared) -> Shared:
        """Element-wise product of shares (broadcasting), no truncation (ABY3 section 3.1)."""
        a, b = _align(x.comps, y.comps)
        a1, b1 = np.roll(a, -1, axis=0), np.roll(b, -1, axis=0)
        return self._reshare(a * b + a * b1 + a1 * b)

    def matmul(self, x: Shared, y: Shared) -> Shared:
        """Matrix product of shares (one resharing per output entry), no truncation."""
        a, b = _align(x.comps, y.comps)
        a1, b1 = np.roll(a, -1, axis=0), np.roll(b, -1, axis=0)
        return self._reshare(np.matmul(a, b) + np.matmul(a, b1) + np.matmul(a1, b))

    def truncate(self, x: Shared, bits: int | None = None) -> Shared:
        """Probabilistic truncation with a correct top bit (Escudero et al., CRYPTO 2020, section 5.1; the
        ``TruncAPr`` of SPU's ABY3): exact up to +-1 ulp for every ``|x| < 2^62``, no rare large failure.

        With ``x' = x + 2^62`` in ``[0, 2^63)`` and a dealer's ``r = b 2^63 + r'`` (``b`` a bit, ``r' < 2^63``),
        open ``c = x' + r``; writing ``c = c_b 2^63 + c'`` gives ``x' + r' = c' + (c_b xor b) 2^63`` with
        ``c_b xor b = c_b + b - 2 c_b b`` linear in the shared ``b``, so
        ``x' >> f ~ (c' >> f) - (r' >> f) + (c_b xor b) 2^(63 - f)`` and ``x >> f = x' >> f - 2^(62 - f)``.
        The dealer's shares (of ``r``, ``b`` and ``r' >> f``) are offline material, not counted; opening ``c``
        costs one round and three ring elements per value, booked as ``trunc``.
        """
        bits = self.f if bits is None else bits
        n = math.prod(x.shape)
        top = np.uint64(1) << np.uint64(RING_BITS - 1)
        r_low = self._random_ring(x.shape) & (top - np.uint64(1))
        b = self.rng.integers(0, 2, size=x.shape, dtype=np.uint64)
        shift = np.uint64(bits)
        c = self.reconstruct(self.add_public_ring(self.add(x, self.share_ring(b * top + r_low)), top >> np.uint64(1)))
        self.cost.add("trunc", n)
        c_b, c_low = c >> np.uint64(RING_BITS - 1), c & (top - np.uint64(1))
        b_sh, s_sh = self.share_ring(b), self.share_ring(r_low >> shift)
        v = Shared(b_sh.comps * (np.uint64(1) - np.uint64(2) * c_b))  # b or 1 - b (the 1 added below)
        v = self.add_public_ring(v, c_b)
        out = self.sub(Shared(v.comps * (np.uint64(1) << np.uint64(RING_BITS - 1 - bits))), s_sh)
        out = self.add_public_ring(out, (c_low >> shift) - (np.uint64(1) << np.uint64(RING_BITS - 2 - bits)))
        # bookkeeping (the simulator looking): errors beyond one unit, possible only when |x| >= 2^62
        exact = self.fxp.truncate(self.reconstruct(x), bits).view(np.int64)
        got = self.reconstruct(out).view(np.int64)
        self.n_truncations += n
        self.large_trunc_errors += int(np.count_nonzero(np.abs(got - exact) > 1))
        return out

    def mul_fx(self, x: Shared, y: Shared) -> Shared:
        """Fixed-point product: multiply, then truncate by ``f``."""
        return self.truncate(self.mul(x, y))

    def matmul_fx(self, x: Shared, y: Shared) -> Shared:
        return self.truncate(self.matmul(x, y))

    def mul_const(self, x: Shared, c) -> Shared:
        """Multiply by a public real constant (local product, then one truncation)."""
        return self.truncate(self.mul_public_ring(x, self.fxp.encode(c)))

    # -- ideal functionalities (counted, computed in the clear) ----------------------------------------
    def ltz(self, x: Shared) -> Shared:
        """Arithmetic share of the bit ``[x < 0]`` (integer 0/1, no fixed-point scale). Ideal, cost counted."""
        self.cost.add("ltz", math.prod(x.shape))
        bit = (self.reconstruct(x).view(np.int64) < 0).astype(np.int64)
        return self.share_int(bit)

    def normalize(self, x: Shared, offset: int = 0) -> tuple[Shared, Shared]:
        """For ``x > 0`` write ``x = u 2^e`` with ``u`` in ``[2^(offset-1), 2^offset)``; return shares of the
        fixed-point factor ``2^-e`` and of ``2^(-e/2)`` (the inverse-square-root compensation). Ideal, cost counted.
        """
        self.cost.add("normalize", math.prod(x.shape))
        value = self.fxp.decode(self.reconstruct(x))
        if np.any(value <= 0):
            raise ValueError("normalize needs a positive input")
        e = np.floor(np.log2(value)) + 1 - offset
        return self.share(2.0**-e), self.share(2.0 ** (-e / 2))
