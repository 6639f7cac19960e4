"""Subject ids: one person or enterprise, one id (docs/content-hash.md, "Subject ids").

Every subject id is normalised before it is hashed, looked up, compared or forwarded, by the hub,
the adapters and the SDK alike:

1. Unicode NFKC (full-width digits and letters such as ``３３０１`` become ASCII ``3301``; the
   ideographic space becomes a space);
2. every whitespace character removed, wherever it is (``"3301 0219…"`` is ``"33010219…"``);
3. ASCII letters upper-cased (the resident ID number's check character ``x`` is ``X``; credit
   codes are upper case).

Then the material type's declared scheme is checked (``SubjectIdScheme``): by default an id is a
mainland resident ID number (GB 11643: 6-digit area, birth date, 3-digit sequence, ISO 7064
MOD 11-2 check character) or a unified social credit code (GB 32100: 18 characters of its
alphabet, area digits, MOD 31 check character). A material type about something else declares
``OPAQUE``: normalised only, 1-128 characters without control characters.
"""

from __future__ import annotations

import datetime as dt
import enum
import unicodedata

MAX_LENGTH = 128

# GB 11643-1999 weights: 2^(17-i) mod 11 for positions 1..17; check = (12 - sum mod 11) mod 11.
_RESIDENT_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_RESIDENT_CHECK = "10X98765432"  # indexed by sum mod 11
# GB 32100-2015: the 31-character alphabet (no I, O, S, V, Z) and the weights 3^(i-1) mod 31.
USCC_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_USCC_WEIGHTS = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)
_EARLIEST_BIRTH_YEAR = 1800


class SubjectIdScheme(enum.Enum):
    """Which ids a material type's subjects carry (the contract's ``SubjectIdScheme``)."""

    CN_MAINLAND = "CN_MAINLAND"  # a resident ID number or a unified social credit code
    CN_RESIDENT_ID = "CN_RESIDENT_ID"
    CN_USCC = "CN_USCC"
    OPAQUE = "OPAQUE"


class SubjectIdError(ValueError):
    """A subject id that is not an id of the declared scheme.

    The message names what is wrong, never the id (it is personal data).
    """


def normalise(subject_id: str) -> str:
    """The normal form of ``subject_id``: NFKC, no whitespace, ASCII letters upper case.

    Total (never raises): whether the result is an acceptable id is ``check``'s question.
    """
    text = unicodedata.normalize("NFKC", subject_id)
    text = "".join(c for c in text if not c.isspace())
    if text.isascii():  # the common case: ID numbers and credit codes
        return text.upper()
    return "".join(c.upper() if c.isascii() else c for c in text)


def is_normal(subject_id: str) -> bool:
    """Whether ``subject_id`` is already in normal form."""
    return normalise(subject_id) == subject_id


def resident_check_character(first17: str) -> str:
    """The GB 11643 (ISO 7064 MOD 11-2) check character of 17 digits."""
    total = sum(int(d) * w for d, w in zip(first17, _RESIDENT_WEIGHTS, strict=True))
    return _RESIDENT_CHECK[total % 11]


def uscc_check_character(first17: str) -> str:
    """The GB 32100 check character of the first 17 characters of a credit code."""
    total = sum(USCC_ALPHABET.index(c) * w for c, w in zip(first17, _USCC_WEIGHTS, strict=True))
    return USCC_ALPHABET[(31 - total % 31) % 31]


def resident_id_problem(text: str) -> str | None:
    """Why normalised ``text`` is not a valid resident ID number, or None if it is."""
    if len(text) != 18:
        return "a resident ID number has 18 characters"
    if not text[:17].isdigit() or not (text[17].isdigit() or text[17] == "X"):
        return "a resident ID number is 17 digits and a digit or X"
    try:
        born = dt.date(int(text[6:10]), int(text[10:12]), int(text[12:14]))
    except ValueError:
        return "a resident ID number's characters 7-14 must be a calendar date"
    if born.year < _EARLIEST_BIRTH_YEAR:
        return "a resident ID number's birth date is too early"
    if resident_check_character(text[:17]) != text[17]:
        return "the resident ID number's check character does not match"
    return None


def uscc_problem(text: str) -> str | None:
    """Why normalised ``text`` is not a valid unified social credit code, or None if it is."""
    if len(text) != 18:
        return "a unified social credit code has 18 characters"
    if any(c not in USCC_ALPHABET for c in text):
        return "a unified social credit code uses digits and letters other than I, O, S, V, Z"
    if not text[2:8].isdigit():
        return "a unified social credit code's characters 3-8 are an area code (digits)"
    if uscc_check_character(text[:17]) != text[17]:
        return "the unified social credit code's check character does not match"
    return None


def check(subject_id: str, scheme: SubjectIdScheme = SubjectIdScheme.CN_MAINLAND) -> str:
    """The normal form of ``subject_id`` if it is an id of ``scheme``.

    Raises SubjectIdError saying what is wrong (never quoting the id).
    """
    text = normalise(subject_id)
    if not text:
        raise SubjectIdError("is required")
    if len(text) > MAX_LENGTH:
        raise SubjectIdError(f"is longer than {MAX_LENGTH} characters")
    if any(unicodedata.category(c).startswith("C") for c in text):
        raise SubjectIdError("must not contain control or unassigned characters")
    problem: str | None
    if scheme is SubjectIdScheme.CN_RESIDENT_ID:
        problem = resident_id_problem(text)
    elif scheme is SubjectIdScheme.CN_USCC:
        problem = uscc_problem(text)
    elif scheme is SubjectIdScheme.CN_MAINLAND:
        problem = resident_id_problem(text)
        if problem is not None and uscc_problem(text) is None:
            problem = None
        elif problem is not None and len(text) == 18 and not text[:17].isdigit():
            problem = uscc_problem(text)
        elif problem is not None:
            problem = f"is neither a resident ID number nor a credit code ({problem})"
    else:
        problem = None
    if problem is not None:
        raise SubjectIdError(problem)
    return text
