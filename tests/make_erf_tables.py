"""Generates gpuconv/ops/_erf_tables.py, the coefficient tables of gpuconv.ops.special.

Run from the repository root: ``python tests/make_erf_tables.py`` (needs mpmath,
which PyTorch's dependency sympy brings along; gpuconv itself never imports it).

The approximation (see gpuconv/ops/special.py for how it is evaluated):

- ``erfc(a) = exp(R(a) - a*a)`` for ``a >= 0``, where ``R(a) = log(exp(a*a) * erfc(a))``
  is smooth and slowly varying. ``[0, inf)`` is cut into intervals that are uniform in
  ``log1p(a / LOG_C)`` (width 0.25 at 0, growing with ``a``, so the relative width
  stays bounded); on each interval ``R`` is interpolated at Chebyshev points in
  40-digit arithmetic and written as a polynomial in ``v = a - centre``. One global
  degree per dtype: the smallest at which every interval's neglected Chebyshev
  coefficients are below ``TOL[dtype]``.
- ``erf(a) = a * P(a*a)`` for ``a < SMALL``, where ``P(u) = erf(sqrt(u)) / sqrt(u)``
  (relative accuracy near 0, where ``1 - erfc`` would lose it), the same way on
  ``u`` in ``[0, SMALL**2]``.

Chebyshev interpolation is near-minimax; the float64 tables' truncation error is
below 1e-17, so the rounding of the float64 evaluation dominates.

- float32 GELU (``special._gelu32_block``): ``S(u) = exp(a*a/2) * Phi(-a) =
  erfcx(a / sqrt(2)) / 2`` for ``a >= 0`` as one polynomial of degree
  ``GELU32_DEGREE`` in ``u = k a / (1 + k a)`` (``k = GELU32_K``), which maps
  ``[0, GELU32_A_MAX]`` onto ``[0, u_max]`` and makes ``S`` smooth enough for a
  low degree over the whole range (``S ~ 1 / (a sqrt(2 pi))`` for large ``a`` is
  analytic in ``u`` near 1); ``S(0) = 1/2`` is fixed, and ``u`` rather than
  ``1 - u`` is the variable because it is exact near ``a = 0``, where Phi changes
  fastest. The coefficients minimise the maximum *relative* error (a Remez
  exchange on a grid, in 40-digit arithmetic: 1.0e-8, a sixth of a float32 ulp).
"""
from __future__ import annotations

import pathlib

import mpmath as mp

mp.mp.dps = 40

LOG_C = 4.0        # interval k is [LOG_C*expm1(k/PER_UNIT), LOG_C*expm1((k+1)/PER_UNIT))
PER_UNIT = 16
A_MAX = 27.5       # erfc(27.5) underflows to 0 in float64: larger arguments are clamped here
SMALL = 0.5        # erf uses the odd series below this
TOL = {"float64": 1e-17, "float32": 1e-8}
GELU32_K = 0.3359375   # 43/128, exact in float32; chosen by scanning k for the smallest error
GELU32_DEGREE = 9
GELU32_A_MAX = 14.0    # Phi(-a) underflows float32 (denormals included) just beyond
GELU32_GRID = 1500
GELU32_ITERATIONS = 8
NODES = 28
OUT = pathlib.Path(__file__).resolve().parent.parent / "gpuconv" / "ops" / "_erf_tables.py"


def chebyshev(f, lo, hi, n: int = NODES) -> list:
    """Coefficients c_j of the degree n-1 Chebyshev interpolant of f on [lo, hi]."""
    xs = [mp.cos(mp.pi * (k + mp.mpf(1) / 2) / n) for k in range(n)]
    ys = [f(lo + (hi - lo) * (x + 1) / 2) for x in xs]
    c = [2 * sum(ys[k] * mp.cos(mp.pi * j * (k + mp.mpf(1) / 2) / n) for k in range(n)) / n
         for j in range(n)]
    c[0] /= 2
    return c


def needed_degree(c: list, tol: float) -> int:
    return next(d for d in range(len(c)) if all(abs(x) < tol for x in c[d + 1:]))


def to_monomial(c: list, degree: int, half_width) -> list:
    """sum_j c_j T_j(v / h) for j <= degree as monomial coefficients in v (exact, mpmath)."""
    # T_0 = 1, T_1 = s, T_{j+1} = 2 s T_j - T_{j-1}: coefficient lists in s
    t_prev, t_cur = [mp.mpf(1)], [mp.mpf(0), mp.mpf(1)]
    polys = [t_prev, t_cur]
    for _ in range(2, degree + 1):
        nxt = [mp.mpf(0)] * (len(t_cur) + 1)
        for i, a in enumerate(t_cur):
            nxt[i + 1] += 2 * a
        for i, a in enumerate(t_prev):
            nxt[i] -= a
        t_prev, t_cur = t_cur, nxt
        polys.append(t_cur)
    mono = [mp.mpf(0)] * (degree + 1)
    for j in range(degree + 1):
        for i, a in enumerate(polys[j]):
            mono[i] += c[j] * a
    return [m / half_width ** i for i, m in enumerate(mono)]


def log_erfcx(a):
    return mp.log(mp.erfc(a) * mp.exp(a * a))


def erf_over_x(u):
    return mp.erf(mp.sqrt(u)) / mp.sqrt(u) if u > 0 else 2 / mp.sqrt(mp.pi)


def gelu32_target(u):
    """``erfcx(a / sqrt 2) / 2`` at ``a = u / (k (1 - u))``."""
    a = u / (GELU32_K * (1 - u))
    return mp.erfc(a / mp.sqrt(2)) * mp.exp(a * a / 2) / 2


def gelu32_polynomial() -> list:
    """Coefficients of u^DEGREE .. u^1 (Horner order; the constant is 1/2): relative
    minimax fit of :func:`gelu32_target` on [0, u_max] by a Remez exchange on a grid."""
    k, deg = mp.mpf(GELU32_K), GELU32_DEGREE
    u_max = k * GELU32_A_MAX / (1 + k * GELU32_A_MAX)
    grid = [u_max * (1 - mp.cos(mp.pi * i / (GELU32_GRID - 1))) / 2
            for i in range(1, GELU32_GRID)]               # u = 0 is exact by construction
    values = [gelu32_target(u) for u in grid]
    n = deg + 1                                           # deg coefficients and the level E
    ref = [round((GELU32_GRID - 2) * (1 - mp.cos(mp.pi * (i + 0.5) / n)) / 2) for i in range(n)]
    for _ in range(GELU32_ITERATIONS):
        matrix = mp.matrix([[grid[i] ** p for p in range(deg, 0, -1)] + [(-1) ** j * values[i]]
                            for j, i in enumerate(ref)])
        solution = mp.lu_solve(matrix, mp.matrix([values[i] - mp.mpf(1) / 2 for i in ref]))
        coefficients = [solution[p] for p in range(deg)]

        def relative_error(i):
            p = mp.mpf(0)
            for c in coefficients:
                p = (p + c) * grid[i]
            return (p + mp.mpf(1) / 2 - values[i]) / values[i]

        err = [relative_error(i) for i in range(len(grid))]
        # new reference: the largest |error| of each run of one sign, n of them (alternating)
        runs: list = []
        for i, e in enumerate(err):
            if runs and (e >= 0) == (err[runs[-1]] >= 0):
                if abs(e) > abs(err[runs[-1]]):
                    runs[-1] = i
            else:
                runs.append(i)
        while len(runs) > n:
            runs.pop(0 if abs(err[runs[0]]) < abs(err[runs[-1]]) else -1)
        if len(runs) < n:
            break
        ref = runs
    return coefficients


def build() -> dict:
    n_intervals = int(mp.floor(mp.log1p(mp.mpf(A_MAX) / LOG_C) * PER_UNIT)) + 1
    bounds = [LOG_C * mp.expm1(mp.mpf(k) / PER_UNIT) for k in range(n_intervals + 1)]
    cheb = [chebyshev(log_erfcx, bounds[k], bounds[k + 1]) for k in range(n_intervals)]
    small = chebyshev(erf_over_x, mp.mpf(0), mp.mpf(SMALL) ** 2)
    tables = {"centres": [float((bounds[k] + bounds[k + 1]) / 2) for k in range(n_intervals)]}
    for dtype, tol in TOL.items():
        degree = max(needed_degree(c, tol) for c in cheb)
        rows = [to_monomial(c, degree, (bounds[k + 1] - bounds[k]) / 2)
                for k, c in enumerate(cheb)]
        # stored highest power first (Horner order), one row per power, one column per interval
        tables[f"log_erfcx_{dtype}"] = [[float(rows[k][j]) for k in range(n_intervals)]
                                        for j in range(degree, -1, -1)]
        # P(u) on [0, SMALL^2]: Chebyshev in s = 2u/SMALL^2 - 1, then monomial in u
        sdeg = needed_degree(small, tol)
        half = mp.mpf(SMALL) ** 2 / 2
        mono_v = to_monomial(small, sdeg, half)          # in v = u - half
        mono_u = [mp.mpf(0)] * (sdeg + 1)                 # expand (u - half)^i
        for i, m in enumerate(mono_v):
            for j in range(i + 1):
                mono_u[j] += m * mp.binomial(i, j) * (-half) ** (i - j)
        tables[f"erf_small_{dtype}"] = [float(m) for m in reversed(mono_u)]
    tables["gelu32_poly"] = [float(c) for c in gelu32_polynomial()]
    return tables


def render(tables: dict) -> str:
    lines = ['"""Coefficient tables of gpuconv.ops.special (generated by tests/make_erf_tables.py;',
             'do not edit). Numbers only: see the generator for what they approximate."""',
             "", f"LOG_C = {LOG_C!r}", f"PER_UNIT = {PER_UNIT!r}", f"A_MAX = {A_MAX!r}",
             f"SMALL = {SMALL!r}", f"GELU32_K = {GELU32_K!r}", f"GELU32_A_MAX = {GELU32_A_MAX!r}",
             ""]
    def numbers(row: list, indent: str) -> list:
        return [indent + ", ".join(repr(v) for v in row[i:i + 4]) + ","
                for i in range(0, len(row), 4)]

    for name, value in tables.items():
        lines.append(f"{name.upper()} = (")
        if value and isinstance(value[0], list):
            for row in value:
                lines += ["    ("] + numbers(row, "        ") + ["    ),"]
        else:
            lines += numbers(value, "    ")
        lines += [")", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    OUT.write_text(render(build()))
    print(f"wrote {OUT}")
