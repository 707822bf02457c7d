"""The strict checker: MATH-style normalisation of both answers, then string equality.

This is the rule of the authors' reward and evaluation (src/rewards/math_reward.py, the MATH
benchmark's `strip_string` and `is_equiv`): `\\dfrac` and `\\frac` agree, `\\left(` and `(` agree,
a unit after `\\text{ `, degrees, `\\$`, `\\%` and spaces are dropped, `x = 5` reads as `5`, `0.5`
and `1/2` read as `\\frac{1}{2}`. Nothing is evaluated: `0.50`, `1,000` and `\\frac{2}{4}` stay
different from `\\frac{1}{2}`, `1000` and `\\frac{1}{2}`. math-verify, the default, is more lenient.
"""

from __future__ import annotations

_DROPPED = ("\n", "\\!", "\\left", "\\right", "^{\\circ}", "^\\circ", "\\$", "\\%")


def strict_equal(answer: str, gold: str) -> bool:
    try:
        return normalize(answer) == normalize(gold)
    except ValueError:  # the normalisation refuses (two units, say): compare the raw strings
        return answer == gold


def normalize(text: str) -> str:
    s = text.replace("\\\\", "\\").replace("tfrac", "frac").replace("dfrac", "frac")
    for token in _DROPPED:
        s = s.replace(token, "")
    s = _without_unit(s)
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s.startswith("."):
        s = "0" + s
    sides = s.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:  # "k = 5" -> "5"
        s = sides[1]
    s = _braced_sqrt(s).replace(" ", "")
    s = _braced_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    return _slash_fraction(s)


def _without_unit(s: str) -> str:
    """'5 \\text{ cm}' -> '5 '; more than one such unit is refused."""
    parts = s.split("\\text{ ")
    if len(parts) > 2:
        raise ValueError("more than one unit")
    return parts[0]


def _braced_sqrt(s: str) -> str:
    """\\sqrt3 -> \\sqrt{3} (one character)."""
    head, *parts = s.split("\\sqrt")
    return head + "".join("\\sqrt" + (p if p.startswith("{") or not p else "{" + p[0] + "}" + p[1:]) for p in parts)


def _braced_fracs(s: str) -> str:
    """\\frac12 -> \\frac{1}{2}, \\frac1{72} -> \\frac{1}{72}; a braced numerator is left as it is."""
    head, *parts = s.split("\\frac")
    out = head
    for part in parts:
        if part.startswith("{"):
            out += "\\frac" + part
        elif len(part) < 2:
            return s
        elif part[1] != "{":
            out += "\\frac{" + part[0] + "}{" + part[1] + "}" + part[2:]
        else:
            out += "\\frac{" + part[0] + "}" + part[1:]
    return out


def _slash_fraction(s: str) -> str:
    """'3/4' -> '\\frac{3}{4}' when both sides are plain integers."""
    parts = s.split("/")
    if len(parts) == 2 and all(p.isdigit() and p == str(int(p)) for p in parts):
        return f"\\frac{{{parts[0]}}}{{{parts[1]}}}"
    return s
