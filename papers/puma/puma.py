"""PUMA's approximations of GeLU, softmax and LayerNorm, their baselines, and the tiny LM run through them.

PUMA (Dong et al., 2023) evaluates Transformers under 3-party replicated secret sharing (ABY3 in SPU). Its
point is that the non-linear functions can be approximated *accurately and cheaply enough* that a
pretrained model needs no fine-tuning:

* **GeLU** (Section 4.2; official ``hack_gelu``): four segments,

      GeLU(x) ~ 0            for x < -4
                F0(x)        for -4 <= x < -1.95       (cubic)
                F1(x)        for -1.95 <= x <= 3        (even polynomial of degree 6 plus x/2)
                x            for x > 3,

  with the coefficients of :data:`GELU_F0` / :data:`GELU_F1`. Three comparisons pick the segment.
* **softmax** (Section 4.3; official ``hack_softmax``): subtract the row maximum (so every exponent is
  <= 0), compute ``exp`` with the Taylor limit ``(1 + x/2^n)^(2^n)`` (SPU's ``exp_taylor_series``, ``n`` =
  ``fxp_exp_iters``), zero the entries with ``x - max < -14`` (a mask ``b = [x > -14]``, because the
  limit formula is wrong for large negative ``x`` and ``e^-14 ~ 8e-7`` is negligible), and multiply by the
  reciprocal of the row sum (one reciprocal per row instead of one division per entry).
* **LayerNorm** (Section 4.4): ``(x - mu) * rsqrt(var + eps) * gamma + beta``: one inverse square root per
  row instead of a square root and a division. SPU's ``f_rsqrt`` writes ``v = u 2^e`` with ``u`` in
  ``[0.25, 0.5)``, evaluates the degree-4 polynomial :data:`RSQRT_POLY` at ``u`` and multiplies by
  ``2^(-e/2)``.
* **Embedding** (Section 4.1): ``one_hot(token) @ E``: a product of an integer one-hot vector with the
  fixed-point table needs no truncation, so it is exact.

Baselines: the plaintext model (float64, exact functions); **MPCFormer**'s "Quad" GeLU
``0.125 x^2 + 0.25 x + 0.5`` and "2Quad" softmax ``(x + c)^2 / sum (x + c)^2`` (c = 5), which MPCFormer
only uses *after* distillation; and **CrypTen-default** approximations, re-derived from CrypTen's
source and ``configs/default.yaml``: GeLU in tanh form through CrypTen's sigmoid (``exp`` with 9 iterations, 3
Newton steps from 0.75); softmax with CrypTen's ``max(dim)`` (log-reduction tree, pairwise step and the argmax
one-hot it always computes), the same exp without the mask, and CrypTen's 10-step Newton reciprocal started at
``3 e^(1 - 2x) + 0.003``.

Every approximation is written once against a small set of operations (:class:`Float64Ops`,
:class:`FixedOps`, :class:`MPCOps`) so that the same code runs in float64 (approximation error only), in
fixed point over Z_{2^64} (plus truncation), and in the 3-party simulator of :mod:`common.mpc` (plus the
probabilistic truncation of the protocol, with bytes and rounds counted).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import erf

from common.mpc import RSS3, FixedPoint, Shared

#: F0 on [-4, -1.95): coefficients of x^0..x^3 (official ``hack_gelu``; the paper's Section 4.2).
GELU_F0 = (-0.5054031199708174, -0.42226581151983866, -0.11807612951181953, -0.011034134030615728)
#: F1 on [-1.95, 3]: coefficients of x^0, x^1, x^2, x^4, x^6 (odd terms beyond x vanish).
GELU_F1 = {0: 0.008526321541038084, 1: 0.5, 2: 0.3603292692789629, 4: -0.037688200365904236, 6: 0.0018067462606141187}
GELU_BREAKS = (-4.0, -1.95, 3.0)
#: SPU's ``rsqrt_init_guess``: rsqrt(u) on [0.25, 0.5) as a degree-4 polynomial (x^0..x^4).
RSQRT_POLY = (4.14285016, -15.47994394, 38.4714796, -49.86605845, 26.02942339)
SOFTMAX_CLIP = -14.0
EXP_ITERS = 8  # SPU's default fxp_exp_iters (the LLaMA example's config lowers it to 5) and CrypTen's default
RECIPROCAL_ITERS = 2  # SPU's default Goldschmidt iterations for the reciprocal
CRYPTEN_RECIPROCAL_ITERS = 10  # CrypTen's reciprocal_nr_iters (configs/default.yaml)
CRYPTEN_SIGMOID_EXP_ITERS = 9  # CrypTen's sigmoid overrides: exp_iterations 9, reciprocal_nr_iters 3, initial 0.75
CRYPTEN_SIGMOID_NR_ITERS = 3
CRYPTEN_SIGMOID_INITIAL = 0.75
QUAD_C = 5.0  # MPCFormer's 2Quad constant
MASK_FILL = -64.0  # public value placed at causally masked scores before the row maximum


# --------------------------------------------------------------------------------------------------
# Three ways to compute: float64, plaintext fixed point, 3-party replicated secret sharing
# --------------------------------------------------------------------------------------------------
class Float64Ops:
    """Real arithmetic (float64): isolates the approximation error of a method. Bits are 0.0/1.0."""

    name = "float64"

    def enc(self, x):
        return np.asarray(x, dtype=np.float64)

    enc_int = enc

    def dec(self, x):
        return np.asarray(x, dtype=np.float64)

    def add(self, a, b):
        return a + b

    def sub(self, a, b):
        return a - b

    def add_const(self, a, c):
        return a + c

    def add_int(self, a, k):
        return a + k

    def mul(self, a, b):
        return a * b

    def mul_bit(self, a, bit):
        return a * bit

    def mul_const(self, a, c):
        return a * np.asarray(c, dtype=np.float64)

    def mul_int(self, a, k):
        return a * k

    def matmul(self, a, b, truncate: bool = True):
        return a @ b

    def shift(self, a, k: int):
        return a / 2.0**k

    def sum(self, a, axis: int, keepdims: bool = False):
        return a.sum(axis=axis, keepdims=keepdims)

    def ltz(self, a):
        return (a < 0).astype(np.float64)

    def bit_to_fixed(self, a):
        return a

    def cumsum(self, a, axis: int):
        return np.cumsum(a, axis=axis)

    def normalize(self, a, offset: int = 0):
        e = np.floor(np.log2(a)) + 1 - offset
        return 2.0**-e, 2.0 ** (-e / 2)

    def concat(self, xs, axis: int):
        return np.concatenate(xs, axis=axis)

    def swapaxes(self, a, i, j):
        return np.swapaxes(a, i, j)

    def reshape(self, a, *shape):
        return a.reshape(*shape)


class FixedOps:
    """Plaintext fixed point in Z_{2^64} with ``frac_bits`` fractional bits and deterministic (floor) truncation.

    Values are uint64 ring elements (fixed-point encodings; bits are plain integers 0/1).
    """

    name = "fixed"

    def __init__(self, frac_bits: int = 18):
        self.fxp = FixedPoint(frac_bits)

    def enc(self, x):
        return self.fxp.encode(x)

    def enc_int(self, x):
        return np.asarray(x, dtype=np.int64).view(np.uint64)

    def dec(self, x):
        return self.fxp.decode(x)

    def add(self, a, b):
        return a + b

    def sub(self, a, b):
        return a - b

    def add_const(self, a, c):
        return a + self.fxp.encode(c)

    def add_int(self, a, k):
        return a + np.asarray(k, dtype=np.int64).view(np.uint64)

    def mul(self, a, b):
        return self.fxp.truncate(a * b)

    def mul_bit(self, a, bit):
        return a * bit

    def mul_const(self, a, c):
        return self.fxp.truncate(a * self.fxp.encode(c))

    def mul_int(self, a, k):
        return a * np.asarray(k, dtype=np.int64).view(np.uint64)

    def matmul(self, a, b, truncate: bool = True):
        out = np.matmul(a, b)
        return self.fxp.truncate(out) if truncate else out

    def shift(self, a, k: int):
        return self.fxp.truncate(a, k)

    def sum(self, a, axis: int, keepdims: bool = False):
        return a.sum(axis=axis, keepdims=keepdims, dtype=np.uint64)

    def ltz(self, a):
        return (a.view(np.int64) < 0).astype(np.int64).view(np.uint64)

    def bit_to_fixed(self, a):
        return a * np.uint64(1 << self.fxp.frac_bits)

    def cumsum(self, a, axis: int):
        return np.cumsum(a, axis=axis, dtype=np.uint64)

    def normalize(self, a, offset: int = 0):
        value = self.fxp.decode(a)
        e = np.floor(np.log2(value)) + 1 - offset
        return self.fxp.encode(2.0**-e), self.fxp.encode(2.0 ** (-e / 2))

    def concat(self, xs, axis: int):
        return np.concatenate(xs, axis=axis)

    def swapaxes(self, a, i, j):
        return np.swapaxes(a, i, j)

    def reshape(self, a, *shape):
        return a.reshape(*shape)


class MPCOps:
    """The same operations on replicated shares (:class:`common.mpc.RSS3`); communication is counted there."""

    name = "mpc"

    def __init__(self, frac_bits: int = 18, random_state=0):
        self.rss = RSS3(frac_bits, random_state)
        self.fxp = self.rss.fxp

    def enc(self, x):
        return self.rss.share(x)

    def enc_int(self, x):
        return self.rss.share_int(x)

    def dec(self, x):
        return self.rss.decode(x)

    def add(self, a, b):
        return self.rss.add(a, b)

    def sub(self, a, b):
        return self.rss.sub(a, b)

    def add_const(self, a, c):
        return self.rss.add_public(a, c)

    def add_int(self, a, k):
        return self.rss.add_public_ring(a, np.asarray(k, dtype=np.int64).view(np.uint64))

    def mul(self, a, b):
        return self.rss.mul_fx(a, b)

    def mul_bit(self, a, bit):
        return self.rss.mul(a, bit)

    def mul_const(self, a, c):
        return self.rss.mul_const(a, c)

    def mul_int(self, a, k):
        return self.rss.mul_public_ring(a, np.asarray(k, dtype=np.int64).view(np.uint64))

    def matmul(self, a, b, truncate: bool = True):
        out = self.rss.matmul(a, b)
        return self.rss.truncate(out) if truncate else out

    def shift(self, a, k: int):
        return self.rss.truncate(a, k)

    def sum(self, a, axis: int, keepdims: bool = False):
        return self.rss.sum(a, axis, keepdims)

    def ltz(self, a):
        return self.rss.ltz(a)

    def bit_to_fixed(self, a):
        return self.rss.mul_public_ring(a, np.uint64(1 << self.fxp.frac_bits))

    def cumsum(self, a, axis: int):
        axis = axis % len(a.shape) + 1
        return Shared(np.cumsum(a.comps, axis=axis, dtype=np.uint64))

    def normalize(self, a, offset: int = 0):
        return self.rss.normalize(a, offset)

    def concat(self, xs, axis: int):
        axis = axis % len(xs[0].shape) + 1
        return Shared(np.concatenate([x.comps for x in xs], axis=axis))

    def swapaxes(self, a, i, j):
        return a.swapaxes(i, j)

    def reshape(self, a, *shape):
        return a.reshape(*shape)


def make_ops(kind: str, frac_bits: int = 18, random_state=0):
    """``"float64"``, ``"fixed"`` or ``"mpc"``."""
    if kind == "float64":
        return Float64Ops()
    if kind == "fixed":
        return FixedOps(frac_bits)
    if kind == "mpc":
        return MPCOps(frac_bits, random_state)
    raise ValueError(f"unknown arithmetic {kind!r}; choose float64, fixed or mpc")


# --------------------------------------------------------------------------------------------------
# Exact references
# --------------------------------------------------------------------------------------------------
def gelu_exact(x):
    """``x Phi(x) = x/2 (1 + erf(x / sqrt 2))``."""
    x = np.asarray(x, dtype=np.float64)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def softmax_exact(x, mask=None):
    """Row softmax over the last axis; entries with ``mask == 0`` get probability 0."""
    x = np.asarray(x, dtype=np.float64)
    if mask is not None:
        x = np.where(mask, x, -np.inf)
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def layernorm_exact(x, weight, bias, eps: float = 1e-5):
    x = np.asarray(x, dtype=np.float64)
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * weight + bias


# --------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------
def polynomial(ops, x, coeffs: dict, powers: dict | None = None):
    """``sum_k c_k x^k`` for a dict ``{k: c_k}``; each power ``x^k = x^(k//2) x^(k - k//2)`` is computed once
    (``x^6 = x^3 x^3``, ``x^4 = x^2 x^2``), the constants multiply locally and are truncated once per term.
    ``powers`` (a dict ``{1: x}``) lets several polynomials of the same ``x`` share their powers.
    """
    powers = {1: x} if powers is None else powers

    def power(k):
        if k not in powers:
            powers[k] = ops.mul(power(k // 2), power(k - k // 2))
        return powers[k]

    out = None
    for k in sorted(k for k in coeffs if k >= 1):
        term = ops.mul_const(power(k), coeffs[k])
        out = term if out is None else ops.add(out, term)
    return ops.add_const(out, coeffs.get(0, 0.0))


def exp_taylor(ops, x, iters: int = EXP_ITERS):
    """``exp(x) ~ (1 + x / 2^n)^(2^n)``: one shift and ``n`` squarings (SPU ``exp_taylor_series``, CrypTen ``exp``).

    Accurate for ``x <= 0`` of moderate size (relative error about ``x^2 / 2^(n+1)``); wrong once
    ``x < -2^n`` (the base turns negative), which is why PUMA clips the softmax inputs at -14.
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    y = ops.add_const(ops.shift(x, iters), 1.0)
    for _ in range(iters):
        y = ops.mul(y, y)
    return y


def reciprocal_puma(ops, x, iters: int = RECIPROCAL_ITERS):
    """``1/x`` for ``x > 0`` as in SPU: normalise ``u = x 2^-e`` in ``[0.5, 1)``, start at ``w0 = 2.9142 - 2u``
    (|1 - u w0| <= 0.086), ``iters`` Newton steps ``w <- w (2 - u w)``, then ``1/x = w 2^-e``.
    """
    factor, _ = ops.normalize(x, offset=0)
    u = ops.mul(x, factor)
    w = ops.add_const(ops.mul_const(u, -2.0), 2.9142)
    for _ in range(iters):
        w = ops.mul(w, ops.add_const(ops.mul_const(ops.mul(u, w), -1.0), 2.0))
    return ops.mul(w, factor)


def reciprocal_crypten(ops, x, iters: int = CRYPTEN_RECIPROCAL_ITERS, exp_iters: int = EXP_ITERS):
    """CrypTen's default reciprocal: Newton ``y <- y (2 - x y)`` ``iters`` times from ``y0 = 3 e^(1 - 2x) + 0.003``."""
    y = ops.add_const(ops.mul_const(exp_taylor(ops, ops.add_const(ops.mul_const(x, -2.0), 1.0), exp_iters), 3.0), 0.003)
    for _ in range(iters):
        y = ops.mul(y, ops.add_const(ops.mul_const(ops.mul(x, y), -1.0), 2.0))
    return y


def rsqrt_puma(ops, v):
    """``1/sqrt(v)`` for ``v > 0`` as SPU's ``f_rsqrt``: ``v = u 2^e`` with ``u`` in ``[0.25, 0.5)``,
    ``rsqrt(v) = P4(u) 2^(-e/2)`` with :data:`RSQRT_POLY` (relative error <= 8.2e-5 in float64).
    """
    factor, comp = ops.normalize(v, offset=-1)
    u = ops.mul(v, factor)
    r = polynomial(ops, u, dict(enumerate(RSQRT_POLY)))
    return ops.mul(r, comp)


def row_max(ops, x):
    """Maximum over the last axis by a tree of comparisons: ``max(a, b) = b + [b - a < 0] (a - b)``."""
    while x.shape[-1] > 1:
        n = x.shape[-1]
        a, b = x[..., 0 : n - n % 2 : 2], x[..., 1 : n - n % 2 : 2]
        m = ops.add(b, ops.mul_bit(ops.sub(a, b), ops.ltz(ops.sub(b, a))))
        x = ops.concat([m, x[..., n - 1 :]], axis=-1) if n % 2 else m
    return x


def _masked(ops, x, mask):
    """Put the public value :data:`MASK_FILL` at masked positions (local: public 0/1 products)."""
    if mask is None:
        return x
    mask = np.asarray(mask, dtype=np.int64)
    return ops.add_const(ops.mul_int(x, mask), MASK_FILL * (1 - mask))


# --------------------------------------------------------------------------------------------------
# GeLU
# --------------------------------------------------------------------------------------------------
def gelu_puma(ops, x):
    """PUMA's piecewise GeLU (Section 4.2): 0 | F0 | F1 | x on the breaks (-4, -1.95, 3)."""
    b0 = ops.ltz(ops.add_const(x, 4.0))  # x < -4
    b1 = ops.ltz(ops.add_const(x, 1.95))  # x < -1.95
    b2 = ops.ltz(ops.add_const(ops.mul_int(x, -1), 3.0))  # x > 3
    z1 = ops.sub(b1, b0)  # -4 <= x < -1.95
    z2 = ops.add_int(ops.mul_int(ops.add(b1, b2), -1), 1)  # -1.95 <= x <= 3
    powers = {1: x}  # x^2, x^3 shared by F0 and F1; x^4 = x^2 x^2, x^6 = x^3 x^3
    f0 = polynomial(ops, x, dict(enumerate(GELU_F0)), powers)
    f1 = polynomial(ops, x, GELU_F1, powers)
    return ops.add(ops.add(ops.mul_bit(f0, z1), ops.mul_bit(f1, z2)), ops.mul_bit(x, b2))


def gelu_quad(ops, x):
    """MPCFormer's "Quad": ``0.125 x^2 + 0.25 x + 0.5`` (meant to be used with distillation)."""
    return polynomial(ops, x, {0: 0.5, 1: 0.25, 2: 0.125})


def sigmoid_crypten(ops, x, exp_iters: int = CRYPTEN_SIGMOID_EXP_ITERS, nr_iters: int = CRYPTEN_SIGMOID_NR_ITERS,
                    initial: float | None = CRYPTEN_SIGMOID_INITIAL):
    """CrypTen's default sigmoid (``sigmoid_tanh_method: reciprocal``): ``s = 1/(1 + e^-|x|)``, ``1 - s`` for
    negative ``x``. CrypTen overrides its reciprocal defaults here: ``exp`` with 9 iterations and 3 Newton steps
    ``y <- 2y - y^2 d`` started at the public 0.75 (the denominator lies in ``(1, 2]``). ``initial=None`` starts
    from CrypTen's general reciprocal guess ``3 e^(1 - 2d) + 0.003`` instead (with ``nr_iters`` = 10 and
    ``exp_iters`` = 8: the heavier variant this replication first used, kept as a diagnostic).
    """
    neg = ops.ltz(x)
    sign = ops.add_int(ops.mul_int(neg, -2), 1)
    pos = ops.mul_bit(x, sign)
    den = ops.add_const(exp_taylor(ops, ops.mul_int(pos, -1), exp_iters), 1.0)
    if initial is None:
        s = reciprocal_crypten(ops, den, iters=nr_iters, exp_iters=exp_iters)
    else:
        # CrypTen's Newton step y <- 2y - y^2 d; from a public y0 the first step is local: 2 y0 - y0^2 d
        s = ops.add_const(ops.mul_const(den, -initial * initial), 2.0 * initial)
        for _ in range(nr_iters - 1):
            s = ops.sub(ops.add(s, s), ops.mul(ops.mul(s, s), den))
    keep = ops.add_int(ops.mul_int(neg, -1), 1)
    # CrypTen's where(1 - ltz, s, 1 - s): two products with the bit
    return ops.add(ops.mul_bit(s, keep), ops.mul_bit(ops.add_const(ops.mul_int(s, -1), 1.0), neg))


def gelu_crypten(ops, x, **sigmoid_kwargs):
    """Tanh-form GeLU through CrypTen's sigmoid: ``0.5 x (1 + tanh(z)) = x sigma(2z)``,
    ``z = sqrt(2/pi)(x + 0.044715 x^3)`` (CrypTen's ``tanh(z) = 2 sigma(2z) - 1``). ``sigmoid_kwargs`` go to
    :func:`sigmoid_crypten` (defaults: CrypTen's own configuration).
    """
    c = math.sqrt(2.0 / math.pi)
    z2 = polynomial(ops, x, {1: 2 * c, 3: 2 * c * 0.044715})
    return ops.mul(x, sigmoid_crypten(ops, z2, **sigmoid_kwargs))


# --------------------------------------------------------------------------------------------------
# softmax
# --------------------------------------------------------------------------------------------------
def softmax_puma(ops, x, mask=None, exp_iters: int = EXP_ITERS, clip: float = SOFTMAX_CLIP):
    """PUMA's softmax (Section 4.3, official ``hack_softmax``): ``b * exp(x - max) / sum(b * exp(x - max))``,
    ``b = [x - max > clip]``, exp by the Taylor limit, one reciprocal per row.
    """
    x = _masked(ops, x, mask)
    d = ops.sub(x, row_max(ops, x))
    keep = ops.add_int(ops.mul_int(ops.ltz(ops.add_const(d, -clip)), -1), 1)  # [d >= clip]
    e = ops.mul_bit(exp_taylor(ops, d, exp_iters), keep)
    if mask is not None:
        e = ops.mul_int(e, np.asarray(mask, dtype=np.int64))
    return ops.mul(e, reciprocal_puma(ops, ops.sum(e, axis=-1, keepdims=True)))


def weighted_index(ops, bits, random_state=0):
    """CrypTen's ``weighted_index`` along the last axis (its tie-break of an argmax): one of the 1-bits of a 0/1
    vector, chosen uniformly: ``c = cumsum(bits)``, ``r = u c_last`` (``u`` a shared uniform in [0, 1), one product
    per row), ``g = [c > r]`` (one comparison per element), one-hot ``g - shift(g)``. Bits are integer shares.
    """
    c = ops.cumsum(bits, axis=-1)
    u = ops.enc(np.random.default_rng(random_state).uniform(0.0, 1.0, size=c.shape[:-1] + (1,)))
    r = ops.mul_bit(u, c[..., -1:])  # fixed point times an integer: no truncation
    g = ops.ltz(ops.sub(r, ops.bit_to_fixed(c)))  # [c > r]
    zero = ops.mul_int(g[..., :1], 0)
    return ops.sub(g, ops.concat([zero, g[..., :-1]], axis=-1))


def row_max_crypten(ops, x, random_state=0):
    """CrypTen's ``max(dim)`` with its default ``max_method: log_reduction`` (crypten/common/functions/maximum.py):
    ``int(ln n)`` halving steps ``where(a >= b, a, b)``, then the pairwise method on the ``m`` survivors (each
    compared with its ``m - 1`` cyclic shifts, the bits multiplied, ties broken by :func:`weighted_index`, the max
    read as ``sum(x one_hot)``), and, because ``max(dim)`` always returns the argmax too, the one-hot over the whole
    row: ``eq(x, max)`` (two comparisons per element) and another :func:`weighted_index`. The softmax discards the
    argmax; its cost is CrypTen's.
    """
    r = x
    for _ in range(int(math.log(x.shape[-1]))):
        m = r.shape[-1]
        a, b = r[..., : m // 2], r[..., m // 2 : 2 * (m // 2)]
        ge = ops.add_int(ops.mul_int(ops.ltz(ops.sub(a, b)), -1), 1)  # [a >= b]
        mx = ops.add(b, ops.mul_bit(ops.sub(a, b), ge))
        r = ops.concat([mx, r[..., 2 * (m // 2) :]], axis=-1) if m % 2 else mx
    m = r.shape[-1]
    if m > 1:
        onehot = None
        for i in range(1, m):
            shifted = ops.concat([r[..., i:], r[..., :i]], axis=-1)
            ge = ops.add_int(ops.mul_int(ops.ltz(ops.sub(r, shifted)), -1), 1)
            onehot = ge if onehot is None else ops.mul_bit(onehot, ge)
        onehot = weighted_index(ops, onehot, random_state)
        r = ops.sum(ops.mul_bit(r, onehot), axis=-1, keepdims=True)
    d = ops.sub(x, r)
    ne = ops.add(ops.ltz(d), ops.ltz(ops.mul_int(d, -1)))
    weighted_index(ops, ops.add_int(ops.mul_int(ne, -1), 1), random_state + 1)  # the argmax CrypTen also returns
    return r


def softmax_crypten(ops, x, mask=None, exp_iters: int = EXP_ITERS, max_method: str = "crypten"):
    """CrypTen's default softmax: ``exp(x - max)`` (same Taylor limit, no clipping) times the Newton reciprocal of
    the row sum (``reciprocal_all_pos``: no sign). ``max_method="crypten"`` computes the maximum as CrypTen does
    (:func:`row_max_crypten`, argmax included); ``"tree"`` uses PUMA's plain comparison tree (:func:`row_max`), a
    same-max diagnostic that isolates the exp/clip/reciprocal differences.
    """
    if max_method not in ("crypten", "tree"):
        raise ValueError(f"max_method must be 'crypten' or 'tree', got {max_method!r}")
    x = _masked(ops, x, mask)
    d = ops.sub(x, row_max_crypten(ops, x) if max_method == "crypten" else row_max(ops, x))
    e = exp_taylor(ops, d, exp_iters)
    if mask is not None:
        e = ops.mul_int(e, np.asarray(mask, dtype=np.int64))
    return ops.mul(e, reciprocal_crypten(ops, ops.sum(e, axis=-1, keepdims=True), exp_iters=exp_iters))


def softmax_2quad(ops, x, mask=None, c: float = QUAD_C):
    """MPCFormer's "2Quad": ``(x + c)^2 / sum (x + c)^2`` (meant to be used with distillation)."""
    q = ops.add_const(x, c)
    q = ops.mul(q, q)
    if mask is not None:
        q = ops.mul_int(q, np.asarray(mask, dtype=np.int64))
    return ops.mul(q, reciprocal_puma(ops, ops.sum(q, axis=-1, keepdims=True)))


# --------------------------------------------------------------------------------------------------
# LayerNorm
# --------------------------------------------------------------------------------------------------
def layernorm_puma(ops, x, weight, bias, eps: float = 1e-5):
    """PUMA's LayerNorm (Section 4.4): ``(x - mu) rsqrt(var + eps) gamma + beta`` (``weight``, ``bias`` encoded)."""
    n = x.shape[-1]
    mu = ops.mul_const(ops.sum(x, axis=-1, keepdims=True), 1.0 / n)
    xc = ops.sub(x, mu)
    var = ops.mul_const(ops.sum(ops.mul(xc, xc), axis=-1, keepdims=True), 1.0 / n)
    r = rsqrt_puma(ops, ops.add_const(var, eps))
    return ops.add(ops.mul(ops.mul(xc, r), weight), bias)


def layernorm_ops_exact(ops, x, weight, bias, eps: float = 1e-5):
    """Exact LayerNorm for :class:`Float64Ops` (the plaintext reference)."""
    if not isinstance(ops, Float64Ops):
        raise ValueError("the exact LayerNorm is a float64 reference")
    return layernorm_exact(x, weight, bias, eps)


ACTIVATIONS = {"exact": lambda ops, x: gelu_exact(x), "puma": gelu_puma, "quad": gelu_quad, "crypten": gelu_crypten}
SOFTMAXES = {"exact": lambda ops, x, mask=None: softmax_exact(x, mask), "puma": softmax_puma, "2quad": softmax_2quad,
             "crypten": softmax_crypten}
NORMS = {"exact": layernorm_ops_exact, "puma": layernorm_puma}


# --------------------------------------------------------------------------------------------------
# The tiny LM under an arithmetic
# --------------------------------------------------------------------------------------------------
def model_params(model) -> dict:
    """The float64 weights of a :class:`common.tinylm.TinyGPT` by name (weights transposed for ``x @ W``)."""
    params = {}
    for name, p in model.state_dict().items():
        w = p.detach().double().numpy()
        params[name] = w.T.copy() if name.endswith("weight") and w.ndim == 2 and "tok_emb" not in name else w
    return params


def rope_tables(n_positions: int, head_dim: int, base: float = 10000.0) -> tuple[np.ndarray, np.ndarray]:
    """``(cos, sin)`` of the angles ``p base^(-2i/d)`` (the model's half-split RoPE)."""
    inv_freq = base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    angles = np.arange(n_positions, dtype=np.float64)[:, None] * inv_freq[None, :]
    return np.cos(angles), np.sin(angles)


def secure_embedding(ops, tokens, table):
    """``one_hot(tokens) @ E`` (Section 4.1): an integer one-hot times the encoded table, no truncation."""
    onehot = np.zeros((*np.shape(tokens), table.shape[0]), dtype=np.int64)
    np.put_along_axis(onehot, np.asarray(tokens)[..., None], 1, axis=-1)
    return ops.matmul(ops.enc_int(onehot), ops.enc(table), truncate=False)


def forward(ops, params: dict, config, tokens, act="puma", softmax="puma", norm="puma"):
    """Logits ``[B, T, V]`` (decoded to float64) of the TinyGPT on ``tokens [B, T]`` under ``ops``.

    ``act``/``softmax``/``norm`` name the GeLU, softmax and LayerNorm (``exact`` only with float64). The
    client's tokens and the model's weights are both secret under :class:`MPCOps`.
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [B, T], got shape {tokens.shape}")
    act_fn, softmax_fn, norm_fn = ACTIVATIONS[act], SOFTMAXES[softmax], NORMS[norm]
    if "exact" in (act, softmax, norm) and not isinstance(ops, Float64Ops):
        raise ValueError("exact functions are plaintext references: use Float64Ops")
    bsz, t = tokens.shape
    h, dh = config.n_heads, config.head_dim
    enc = {k: ops.enc(v) for k, v in params.items() if k != "tok_emb.weight"}
    emb = params["tok_emb.weight"]
    cos, sin = rope_tables(t, dh, config.rope_base)
    causal = np.tril(np.ones((t, t), dtype=np.int64))
    scale = 1.0 / math.sqrt(dh)

    def linear(x, prefix):
        return ops.add(ops.matmul(x, enc[prefix + ".weight"]), enc[prefix + ".bias"])

    def heads(x):
        return ops.swapaxes(ops.reshape(x, bsz, t, h, dh), 1, 2)

    def rope(x):
        x1, x2 = x[..., : dh // 2], x[..., dh // 2 :]
        return ops.concat([ops.sub(ops.mul_const(x1, cos), ops.mul_const(x2, sin)),
                           ops.add(ops.mul_const(x1, sin), ops.mul_const(x2, cos))], axis=-1)

    def layer_norm(x, prefix):
        return norm_fn(ops, x, enc[prefix + ".weight"], enc[prefix + ".bias"], config.ln_eps)

    x = secure_embedding(ops, tokens, emb)
    for layer in range(config.n_layers):
        p = f"blocks.{layer}."
        n1 = layer_norm(x, p + "ln_1")
        q = rope(heads(ops.mul_const(linear(n1, p + "attn.q_proj"), scale)))
        k = rope(heads(linear(n1, p + "attn.k_proj")))
        v = heads(linear(n1, p + "attn.v_proj"))
        scores = ops.matmul(q, ops.swapaxes(k, -1, -2))
        probs = softmax_fn(ops, scores, causal)
        y = ops.reshape(ops.swapaxes(ops.matmul(probs, v), 1, 2), bsz, t, h * dh)
        x = ops.add(x, linear(y, p + "attn.o_proj"))
        hidden = act_fn(ops, linear(layer_norm(x, p + "ln_2"), p + "mlp.fc_in"))
        x = ops.add(x, linear(hidden, p + "mlp.fc_out"))
    x = layer_norm(x, "ln_f")  # before encoding E^T: MPCOps draws its shares in this order
    logits = ops.matmul(x, enc["head.weight"] if "head.weight" in enc else ops.enc(emb.T))  # untied head, else E^T
    return ops.dec(logits)


def next_token_metrics(logits, ref_logits, targets) -> dict:
    """Top-1 agreement with the reference logits, and both perplexities on ``targets``."""
    logits, ref_logits = np.asarray(logits, dtype=np.float64), np.asarray(ref_logits, dtype=np.float64)

    def nll(lg):
        lg = lg - lg.max(axis=-1, keepdims=True)
        logp = lg - np.log(np.exp(lg).sum(axis=-1, keepdims=True))
        return -np.take_along_axis(logp, targets[..., None], axis=-1).mean()

    ppl, ppl_ref = math.exp(nll(logits)), math.exp(nll(ref_logits))
    return {"agreement": float((logits.argmax(-1) == ref_logits.argmax(-1)).mean()), "ppl": ppl, "ppl_ref": ppl_ref,
            "ppl_ratio": ppl / ppl_ref}


def sample_windows(stream, n: int, length: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random windows of ``length + 1`` tokens from ``stream``: inputs ``[n, length]`` and next tokens."""
    stream = np.asarray(stream)
    if stream.size < length + 2:
        raise ValueError("stream shorter than one window")
    starts = rng.integers(0, stream.size - length - 1, size=n)
    windows = np.stack([stream[s : s + length + 1] for s in starts])
    return windows[:, :-1], windows[:, 1:]


def communication(fn, shape, *args, random_state=0, **kwargs) -> dict:
    """Bytes and rounds of ``fn(ops, x, ...)`` on a shared input of ``shape`` (input-independent counts), and the
    comparisons per input element (``ltz_per_element``) with the bytes they account for (``ltz_bytes``).
    """
    ops = MPCOps(random_state=random_state)
    x = ops.enc(np.random.default_rng(random_state).normal(size=shape))
    before = ops.rss.cost.snapshot()
    ltz_before = list(ops.rss.cost.by_op["ltz"])
    fn(ops, x, *args, **kwargs)
    after = ops.rss.cost.snapshot()
    ltz_after = ops.rss.cost.by_op["ltz"]
    n = math.prod(shape)
    return {"bytes": after[0] - before[0], "rounds": after[1] - before[1], "bytes_per_element": (after[0] - before[0]) / n,
            "ltz_per_element": (ltz_after[1] - ltz_before[1]) / n, "ltz_bytes": ltz_after[2] - ltz_before[2]}
