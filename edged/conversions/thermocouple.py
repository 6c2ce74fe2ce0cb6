"""NIST ITS-90 thermocouple reference functions and inverses (NIST Monograph 175).

Why this exists: a gateway must turn a raw thermocouple EMF into a temperature the same way
every calibrated instrument does, so the forward functions are the NIST reference polynomials
(type K with its exponential term) and the inverses are the NIST inverse polynomials used only
inside their published ranges, with their published error bands available to callers.

Conventions: temperatures in degrees Celsius (ITS-90), EMF in millivolts against a 0 °C
reference junction. Inverse error is NIST's: ``t_inverse - t_true``. Types E, J, K, N, R, S and
T are supported; type B is left out (its NIST inverse starts at 250 °C and its EMF is ambiguous
near room temperature). The coefficients are the NIST SRD 60 values, cross-checked for exact
equality against two independent transcriptions of the NIST coefficient files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final, Literal, get_args

__all__ = [
    "SUPPORTED_TYPES",
    "InverseSegment",
    "ThermocoupleType",
    "compensated_temperature",
    "emf_mv",
    "emf_range_mv",
    "inverse_error_band",
    "inverse_segment",
    "temperature_c",
    "temperature_range_c",
]

ThermocoupleType = Literal["E", "J", "K", "N", "R", "S", "T"]
SUPPORTED_TYPES: Final[tuple[ThermocoupleType, ...]] = get_args(ThermocoupleType)


# 1 nV: far below any measurement, far above float round-off in the forward polynomials.
_EMF_SLACK_MV: Final = 1e-6


def _horner(coeffs_desc: tuple[float, ...], x: float) -> float:
    acc = 0.0
    for c in coeffs_desc:
        acc = acc * x + c
    return acc


@dataclass(frozen=True, slots=True)
class _Forward:
    """One NIST reference-function range: E = sum(c_i t^i) [+ a0 exp(a1 (t - a2)^2)]."""

    t_min: float
    t_max: float
    coeffs: tuple[float, ...]  # c0..cn, NIST order
    exp_term: tuple[float, float, float] | None = None
    _desc: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_desc", tuple(reversed(self.coeffs)))

    def emf(self, t: float) -> float:
        e = _horner(self._desc, t)
        if self.exp_term is not None:
            a0, a1, a2 = self.exp_term
            e += a0 * math.exp(a1 * (t - a2) ** 2)
        return e


@dataclass(frozen=True, slots=True)
class InverseSegment:
    """One NIST inverse polynomial t = sum(d_i E^i) with its stated validity and error.

    ``error_min_c``/``error_max_c`` are NIST's stated bounds of ``t_inverse - t_true`` over the
    segment; callers that report uncertainty should use them rather than assume 0 K. NIST
    rounds them to the digit shown (type K -200..0 °C is stated +0.04 but reaches +0.041 at
    -200 °C), so allow half a unit in that last digit.
    """

    t_min_c: float
    t_max_c: float
    emf_min_mv: float
    emf_max_mv: float
    error_min_c: float
    error_max_c: float
    coeffs: tuple[float, ...]  # d0..dn, NIST order
    _desc: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_desc", tuple(reversed(self.coeffs)))

    def temperature(self, e: float) -> float:
        return _horner(self._desc, e)


@dataclass(frozen=True, slots=True)
class _Table:
    tc_type: str
    forward: tuple[_Forward, ...]
    inverse: tuple[InverseSegment, ...]
    t_min: float = field(init=False)
    t_max: float = field(init=False)
    e_min: float = field(init=False)
    e_max: float = field(init=False)

    def __post_init__(self) -> None:
        t_min, t_max = self.forward[0].t_min, self.forward[-1].t_max
        object.__setattr__(self, "t_min", t_min)
        object.__setattr__(self, "t_max", t_max)
        # NIST states each inverse range both in °C and in mV rounded to 1 uV; the exact EMF at
        # the temperature limits can lie up to 0.0006 mV outside the rounded mV limits. Accept
        # both so that e.g. temperature_c("K", emf_mv("K", -200.0)) works at the range edge.
        # _EMF_SLACK_MV absorbs round-off in evaluating the forward polynomial at the ends.
        lo, hi = self.inverse[0], self.inverse[-1]
        object.__setattr__(self, "e_min", min(lo.emf_min_mv, self._emf(lo.t_min_c)) - _EMF_SLACK_MV)
        object.__setattr__(self, "e_max", max(hi.emf_max_mv, self._emf(hi.t_max_c)) + _EMF_SLACK_MV)

    def _emf(self, t: float) -> float:
        for seg in self.forward:
            if t <= seg.t_max:
                return seg.emf(t)
        return self.forward[-1].emf(t)  # pragma: no cover - callers check the range first

    def emf(self, t: float) -> float:
        if not self.t_min <= t <= self.t_max:
            raise ValueError(
                f"type {self.tc_type} thermocouple temperature {t!r} °C is outside the NIST "
                f"reference-function range {self.t_min:g}..{self.t_max:g} °C"
            )
        return self._emf(t)

    def segment(self, e: float) -> InverseSegment:
        if not self.e_min <= e <= self.e_max:
            raise ValueError(
                f"type {self.tc_type} thermocouple EMF {e!r} mV is outside the NIST inverse "
                f"range {self.e_min:.3f}..{self.e_max:.3f} mV "
                f"({self.inverse[0].t_min_c:g}..{self.inverse[-1].t_max_c:g} °C)"
            )
        # Scan from the top so that where NIST ranges overlap (R and S, 1064..1200 °C) the
        # higher-range polynomial, which has the tighter stated error, is used.
        inverse = self.inverse
        for i in range(len(inverse) - 1, 0, -1):
            if e >= inverse[i].emf_min_mv:
                return inverse[i]
        return inverse[0]


# Coefficients: NIST ITS-90 Thermocouple Database (SRD 60) / NIST Monograph 175.
# Forward: E(mV) = sum c_i t^i (+ type K exponential), as _Forward(t_min_c, t_max_c, (c0..cn)).
# Inverse: t(°C) = sum d_i E^i, as InverseSegment(t_min_c, t_max_c, E_min_mv, E_max_mv,
# error_min_c, error_max_c, (d0..dn)), ranges and errors exactly as NIST states them.
# fmt: off
_TABLES: Final[dict[str, _Table]] = {
    "E": _Table("E", forward=(
        _Forward(-270.0, 0.0, (
            0.0, 5.8665508708e-02, 4.5410977124e-05, -7.7998048686e-07, -2.5800160843e-08,
            -5.9452583057e-10, -9.3214058667e-12, -1.0287605534e-13, -8.0370123621e-16, -4.3979497391e-18,
            -1.6414776355e-20, -3.9673619516e-23, -5.5827328721e-26, -3.4657842013e-29,
        )),
        _Forward(0.0, 1000.0, (
            0.0, 5.866550871e-02, 4.5032275582e-05, 2.8908407212e-08, -3.3056896652e-10,
            6.502440327e-13, -1.9197495504e-16, -1.2536600497e-18, 2.1489217569e-21, -1.4388041782e-24,
            3.5960899481e-28,
        )),
    ), inverse=(
        InverseSegment(-200.0, 0.0, -8.825, 0.0, -0.01, 0.03, (
            0.0, 1.6977288e+01, -4.351497e-01, -1.5859697e-01, -9.2502871e-02,
            -2.6084314e-02, -4.1360199e-03, -3.403403e-04, -1.156489e-05,
        )),
        InverseSegment(0.0, 1000.0, 0.0, 76.373, -0.02, 0.02, (
            0.0, 1.7057035e+01, -2.3301759e-01, 6.5435585e-03, -7.3562749e-05,
            -1.7896001e-06, 8.4036165e-08, -1.3735879e-09, 1.0629823e-11, -3.2447087e-14,
        )),
    )),
    "J": _Table("J", forward=(
        _Forward(-210.0, 760.0, (
            0.0, 5.0381187815e-02, 3.047583693e-05, -8.568106572e-08, 1.3228195295e-10,
            -1.7052958337e-13, 2.0948090697e-16, -1.2538395336e-19, 1.5631725697e-23,
        )),
        _Forward(760.0, 1200.0, (
            2.9645625681e+02, -1.4976127786e+00, 3.1787103924e-03, -3.1847686701e-06, 1.5720819004e-09,
            -3.0691369056e-13,
        )),
    ), inverse=(
        InverseSegment(-210.0, 0.0, -8.095, 0.0, -0.05, 0.03, (
            0.0, 1.9528268e+01, -1.2286185e+00, -1.0752178e+00, -5.9086933e-01,
            -1.7256713e-01, -2.8131513e-02, -2.396337e-03, -8.3823321e-05,
        )),
        InverseSegment(0.0, 760.0, 0.0, 42.919, -0.04, 0.04, (
            0.0, 1.978425e+01, -2.001204e-01, 1.036969e-02, -2.549687e-04,
            3.585153e-06, -5.344285e-08, 5.09989e-10,
        )),
        InverseSegment(760.0, 1200.0, 42.919, 69.553, -0.04, 0.03, (
            -3.11358187e+03, 3.00543684e+02, -9.9477323e+00, 1.7027663e-01, -1.43033468e-03,
            4.73886084e-06,
        )),
    )),
    "K": _Table("K", forward=(
        _Forward(-270.0, 0.0, (
            0.0, 3.9450128025e-02, 2.3622373598e-05, -3.2858906784e-07, -4.9904828777e-09,
            -6.7509059173e-11, -5.7410327428e-13, -3.1088872894e-15, -1.0451609365e-17, -1.9889266878e-20,
            -1.6322697486e-23,
        )),
        _Forward(0.0, 1372.0, (
            -1.7600413686e-02, 3.8921204975e-02, 1.8558770032e-05, -9.9457592874e-08, 3.1840945719e-10,
            -5.6072844889e-13, 5.6075059059e-16, -3.2020720003e-19, 9.7151147152e-23, -1.2104721275e-26,
        ), exp_term=(1.185976e-01, -1.183432e-04, 1.269686e+02)),
    ), inverse=(
        InverseSegment(-200.0, 0.0, -5.891, 0.0, -0.02, 0.04, (
            0.0, 2.5173462e+01, -1.1662878e+00, -1.0833638e+00, -8.977354e-01,
            -3.7342377e-01, -8.6632643e-02, -1.0450598e-02, -5.1920577e-04,
        )),
        InverseSegment(0.0, 500.0, 0.0, 20.644, -0.05, 0.04, (
            0.0, 2.508355e+01, 7.860106e-02, -2.503131e-01, 8.31527e-02,
            -1.228034e-02, 9.804036e-04, -4.41303e-05, 1.057734e-06, -1.052755e-08,
        )),
        InverseSegment(500.0, 1372.0, 20.644, 54.886, -0.05, 0.06, (
            -1.318058e+02, 4.830222e+01, -1.646031e+00, 5.464731e-02, -9.650715e-04,
            8.802193e-06, -3.11081e-08,
        )),
    )),
    "N": _Table("N", forward=(
        _Forward(-270.0, 0.0, (
            0.0, 2.6159105962e-02, 1.0957484228e-05, -9.3841111554e-08, -4.6412039759e-11,
            -2.6303357716e-12, -2.2653438003e-14, -7.6089300791e-17, -9.3419667835e-20,
        )),
        _Forward(0.0, 1300.0, (
            0.0, 2.5929394601e-02, 1.571014188e-05, 4.3825627237e-08, -2.5261169794e-10,
            6.4311819339e-13, -1.0063471519e-15, 9.9745338992e-19, -6.0863245607e-22, 2.0849229339e-25,
            -3.0682196151e-29,
        )),
    ), inverse=(
        InverseSegment(-200.0, 0.0, -3.99, 0.0, -0.02, 0.03, (
            0.0, 3.8436847e+01, 1.1010485e+00, 5.2229312e+00, 7.2060525e+00,
            5.8488586e+00, 2.7754916e+00, 7.7075166e-01, 1.1582665e-01, 7.3138868e-03,
        )),
        InverseSegment(0.0, 600.0, 0.0, 20.613, -0.02, 0.03, (
            0.0, 3.86896e+01, -1.08267e+00, 4.70205e-02, -2.12169e-06,
            -1.17272e-04, 5.3928e-06, -7.98156e-08,
        )),
        InverseSegment(600.0, 1300.0, 20.613, 47.513, -0.04, 0.02, (
            1.972485e+01, 3.300943e+01, -3.915159e-01, 9.855391e-03, -1.274371e-04,
            7.767022e-07,
        )),
    )),
    "R": _Table("R", forward=(
        _Forward(-50.0, 1064.18, (
            0.0, 5.28961729765e-03, 1.39166589782e-05, -2.38855693017e-08, 3.56916001063e-11,
            -4.62347666298e-14, 5.00777441034e-17, -3.73105886191e-20, 1.57716482367e-23, -2.81038625251e-27,
        )),
        _Forward(1064.18, 1664.5, (
            2.95157925316e+00, -2.52061251332e-03, 1.59564501865e-05, -7.64085947576e-09, 2.05305291024e-12,
            -2.93359668173e-16,
        )),
        _Forward(1664.5, 1768.1, (
            1.52232118209e+02, -2.68819888545e-01, 1.71280280471e-04, -3.45895706453e-08, -9.34633971046e-15,
        )),
    ), inverse=(
        InverseSegment(-50.0, 250.0, -0.226, 1.923, -0.02, 0.02, (
            0.0, 1.889138e+02, -9.383529e+01, 1.3068619e+02, -2.270358e+02,
            3.5145659e+02, -3.89539e+02, 2.8239471e+02, -1.2607281e+02, 3.1353611e+01,
            -3.3187769e+00,
        )),
        InverseSegment(250.0, 1200.0, 1.923, 13.228, -0.005, 0.005, (
            1.334584505e+01, 1.472644573e+02, -1.844024844e+01, 4.031129726e+00, -6.24942836e-01,
            6.468412046e-02, -4.458750426e-03, 1.994710149e-04, -5.31340179e-06, 6.481976217e-08,
        )),
        InverseSegment(1064.0, 1664.5, 11.361, 19.739, -0.0005, 0.001, (
            -8.199599416e+01, 1.553962042e+02, -8.342197663e+00, 4.279433549e-01, -1.19157791e-02,
            1.492290091e-04,
        )),
        InverseSegment(1664.5, 1768.1, 19.739, 21.103, -0.001, 0.002, (
            3.406177836e+04, -7.023729171e+03, 5.582903813e+02, -1.952394635e+01, 2.560740231e-01,
        )),
    )),
    "S": _Table("S", forward=(
        _Forward(-50.0, 1064.18, (
            0.0, 5.40313308631e-03, 1.2593428974e-05, -2.32477968689e-08, 3.22028823036e-11,
            -3.31465196389e-14, 2.55744251786e-17, -1.25068871393e-20, 2.71443176145e-24,
        )),
        _Forward(1064.18, 1664.5, (
            1.32900444085e+00, 3.34509311344e-03, 6.54805192818e-06, -1.64856259209e-09, 1.29989605174e-14,
        )),
        _Forward(1664.5, 1768.1, (
            1.46628232636e+02, -2.58430516752e-01, 1.63693574641e-04, -3.30439046987e-08, -9.43223690612e-15,
        )),
    ), inverse=(
        InverseSegment(-50.0, 250.0, -0.235, 1.874, -0.02, 0.02, (
            0.0, 1.8494946e+02, -8.00504062e+01, 1.0223743e+02, -1.52248592e+02,
            1.88821343e+02, -1.59085941e+02, 8.2302788e+01, -2.34181944e+01, 2.7978626e+00,
        )),
        InverseSegment(250.0, 1200.0, 1.874, 11.95, -0.01, 0.01, (
            1.291507177e+01, 1.466298863e+02, -1.534713402e+01, 3.145945973e+00, -4.163257839e-01,
            3.187963771e-02, -1.2916375e-03, 2.183475087e-05, -1.447379511e-07, 8.211272125e-09,
        )),
        InverseSegment(1064.0, 1664.5, 10.332, 17.536, -0.0002, 0.0002, (
            -8.087801117e+01, 1.621573104e+02, -8.536869453e+00, 4.719686976e-01, -1.441693666e-02,
            2.08161889e-04,
        )),
        InverseSegment(1664.5, 1768.1, 17.536, 18.693, -0.002, 0.002, (
            5.333875126e+04, -1.235892298e+04, 1.092657613e+03, -4.265693686e+01, 6.24720542e-01,
        )),
    )),
    "T": _Table("T", forward=(
        _Forward(-270.0, 0.0, (
            0.0, 3.8748106364e-02, 4.4194434347e-05, 1.1844323105e-07, 2.0032973554e-08,
            9.0138019559e-10, 2.2651156593e-11, 3.6071154205e-13, 3.8493939883e-15, 2.8213521925e-17,
            1.4251594779e-19, 4.8768662286e-22, 1.079553927e-24, 1.3945027062e-27, 7.9795153927e-31,
        )),
        _Forward(0.0, 400.0, (
            0.0, 3.8748106364e-02, 3.329222788e-05, 2.0618243404e-07, -2.1882256846e-09,
            1.0996880928e-11, -3.0815758772e-14, 4.547913529e-17, -2.7512901673e-20,
        )),
    ), inverse=(
        InverseSegment(-200.0, 0.0, -5.603, 0.0, -0.02, 0.04, (
            0.0, 2.5949192e+01, -2.1316967e-01, 7.9018692e-01, 4.2527777e-01,
            1.3304473e-01, 2.0241446e-02, 1.2668171e-03,
        )),
        InverseSegment(0.0, 400.0, 0.0, 20.872, -0.03, 0.03, (
            0.0, 2.5928e+01, -7.602961e-01, 4.637791e-02, -2.165394e-03,
            6.048144e-05, -7.293422e-07,
        )),
    )),
}
# fmt: on


def _table(tc_type: str) -> _Table:
    try:
        return _TABLES[tc_type]
    except (KeyError, TypeError):
        raise ValueError(
            f"unsupported thermocouple type {tc_type!r}; supported: {', '.join(SUPPORTED_TYPES)}"
        ) from None


def emf_mv(tc_type: ThermocoupleType, t_c: float) -> float:
    """EMF in mV of a thermocouple at ``t_c`` °C with its reference junction at 0 °C.

    Raises ValueError outside the NIST reference-function range (e.g. K: -270..1372 °C).
    """
    return _table(tc_type).emf(t_c)


def temperature_c(tc_type: ThermocoupleType, emf_mv: float) -> float:
    """Temperature in °C for an EMF in mV referenced to 0 °C, via the NIST inverse polynomials.

    Accurate to the NIST-stated band of the segment used (see ``inverse_error_band``), e.g.
    -0.05..+0.04 °C for type K from 0 to 500 °C. The inverse range is narrower than the forward
    one (K: -200..1372 °C); outside it this raises ValueError rather than extrapolate.
    """
    return _table(tc_type).segment(emf_mv).temperature(emf_mv)


def compensated_temperature(tc_type: ThermocoupleType, measured_mv: float, cjc_temp_c: float) -> float:
    """Hot-junction °C from the EMF measured across terminals at ``cjc_temp_c`` °C.

    The terminals sit at the cold-junction temperature, so the measured EMF lacks E(cjc);
    adding it back gives the 0 °C-referenced EMF that the inverse polynomials expect. Adding
    EMFs (not temperatures) is what keeps this correct for a non-linear thermocouple.
    """
    table = _table(tc_type)
    e = measured_mv + table.emf(cjc_temp_c)
    if not table.e_min <= e <= table.e_max:
        raise ValueError(
            f"type {tc_type} thermocouple: measured {measured_mv!r} mV + E({cjc_temp_c!r} °C) = "
            f"{e:.4f} mV is outside the NIST inverse range {table.e_min:.3f}..{table.e_max:.3f} mV"
        )
    return table.segment(e).temperature(e)


def inverse_segment(tc_type: ThermocoupleType, emf_mv: float) -> InverseSegment:
    """The NIST inverse segment that ``temperature_c`` uses for ``emf_mv``."""
    return _table(tc_type).segment(emf_mv)


def inverse_error_band(tc_type: ThermocoupleType, emf_mv: float) -> tuple[float, float]:
    """NIST-stated (min, max) of ``t_inverse - t_true`` in °C for the segment used at ``emf_mv``."""
    seg = _table(tc_type).segment(emf_mv)
    return seg.error_min_c, seg.error_max_c


def temperature_range_c(tc_type: ThermocoupleType) -> tuple[float, float]:
    """(min, max) °C accepted by ``emf_mv`` (the NIST reference-function range)."""
    table = _table(tc_type)
    return table.t_min, table.t_max


def emf_range_mv(tc_type: ThermocoupleType) -> tuple[float, float]:
    """(min, max) mV accepted by ``temperature_c`` (the NIST inverse range)."""
    table = _table(tc_type)
    return table.e_min, table.e_max
