"""Numeric bounds in JSON schemas (`minimum`, `maximum`, `exclusiveMinimum`, `exclusiveMaximum`),
checked character by character: a digit is allowed while some number that starts with the text
written so far lies within the bounds, and the number may end only inside them.

Bounded numbers are written without an exponent (an exponent reaches any magnitude, so what a
prefix can still become would be everything). Decimal arithmetic keeps every comparison exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

_MAX_EXTRA_DIGITS = 400  # integer digits looked ahead: past the bounds' own length nothing changes


@dataclass(frozen=True, slots=True)
class Bounds:
    low: Decimal | None = None
    low_strict: bool = False
    high: Decimal | None = None
    high_strict: bool = False

    def holds(self, value: Decimal) -> bool:
        if self.low is not None and (value < self.low or (self.low_strict and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.high_strict and value == self.high)))

    def allows_end(self, text: str) -> bool:
        """Whether the number written as `text` (whole) is within the bounds."""
        return self.holds(Decimal(text))

    def reachable(self, text: str, integer: bool) -> bool:
        """Whether some number whose JSON text starts with `text` (no exponent) is in bounds."""
        negative = text.startswith("-")
        body = text[1:] if negative else text
        if not body:  # the sign alone, or nothing yet: any magnitude of that sign
            return self._overlaps(Decimal(0), None, negative, integer, closed_top=True)
        whole, dot, fraction = body.partition(".")
        if dot or whole == "0":  # the integer part is done: [x, x + 10^-m)
            start = Decimal(body if not body.endswith(".") else whole)
            width = Decimal(1).scaleb(-len(fraction)) if not (whole == "0" and not dot) else Decimal(1)
            if integer:
                return self._overlaps(start, start, negative, True, closed_top=True)
            return self._overlaps(start, start + width, negative, False, closed_top=False)
        # More integer digits may follow: [a 10^k, (a + 1) 10^k) for k = 0, 1, ...
        a = int(whole)
        limit = max((abs(b) for b in (self.low, self.high) if b is not None), default=Decimal(0))
        for k in range(_MAX_EXTRA_DIGITS):
            start, top = Decimal(a).scaleb(k), Decimal(a + 1).scaleb(k)
            if integer:
                if self._overlaps(start, top - 1, negative, True, closed_top=True):
                    return True
            elif self._overlaps(start, top, negative, False, closed_top=False):
                return True
            if start > limit:  # larger magnitudes only leave the bounds further behind...
                return self._unbounded_side(negative)  # ...unless that side has no bound
        return False

    def _unbounded_side(self, negative: bool) -> bool:
        return (self.low is None) if negative else (self.high is None)

    def _overlaps(self, start: Decimal, top: Decimal | None, negative: bool, integer: bool, closed_top: bool) -> bool:
        """Whether magnitudes in [start, top] (top open unless closed_top; None: no top) with the
        given sign meet the bounds."""
        low: Decimal | None
        high: Decimal | None
        if negative:  # values in [-top, -start]
            low, low_closed = (None, True) if top is None else (-top, closed_top)
            high, high_closed = -start, True
        else:
            low, low_closed = start, True
            high, high_closed = top, closed_top
        return _meet(low, low_closed, high, high_closed, self, integer)


def _meet(
    low: Decimal | None, low_closed: bool, high: Decimal | None, high_closed: bool, bounds: Bounds, integer: bool
) -> bool:
    """Whether the interval (of decimals, or of integers) meets the bounds."""
    if bounds.low is not None and (low is None or bounds.low > low or (bounds.low == low and bounds.low_strict)):
        low, low_closed = bounds.low, not bounds.low_strict
    if bounds.high is not None and (high is None or bounds.high < high or (bounds.high == high and bounds.high_strict)):
        high, high_closed = bounds.high, not bounds.high_strict
    if low is None or high is None:
        return True
    if integer:
        first = int(low.to_integral_value(rounding="ROUND_CEILING"))
        if Decimal(first) == low and not low_closed:
            first += 1
        last = int(high.to_integral_value(rounding="ROUND_FLOOR"))
        if Decimal(last) == high and not high_closed:
            last -= 1
        return first <= last
    return low < high or (low == high and low_closed and high_closed)
