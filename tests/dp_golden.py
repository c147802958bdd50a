"""Reading the golden diffusion-pipe logs (tests/golden/dp_logs): each output line follows a '# ' comment citing the
statement that prints it. Shared by the parser's unit tests and the fake checkout's output test."""

from __future__ import annotations

import re
from pathlib import Path

GOLDEN = Path(__file__).resolve().parent / "golden" / "dp_logs"
_STAMP = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\]")
_BAR = re.compile(r"^(?:(?P<desc>[\w ()=]+): )?\s*\d{1,3}%\|[^|]*\|\s*\d+/\d+ \[[^\]]*\]")
_PATH = re.compile(r"/[\w./-]+")
_HEX = re.compile(r"\b[0-9a-f]{16}\b")
_NUMBER = re.compile(r"\d+(?:\.\d+)?(?:e-?\d+)?")


def cited_lines(name: str) -> list[tuple[str, str]]:
    """(citation comment, output line) pairs of a golden file, header comments left out."""
    pairs, cite = [], None
    with open(GOLDEN / name, encoding="utf-8", newline="") as f:  # keep tqdm's \r inside its line
        text = f.read()
    for line in text.split("\n"):
        if line == "#":
            cite = None
        elif line.startswith("# "):
            cite = line[2:]
        elif line:
            pairs.append((cite, line))
            cite = None
    return pairs


def pieces(text: str) -> list[str]:
    """Console text split as the supervisor splits it: at \\n and at tqdm's \\r; blank pieces dropped."""
    return [p for p in re.split(r"\r\n|\r|\n", text) if p.strip()]


def shape(piece: str) -> str:
    """A piece with what varies from run to run (time stamps, paths, fingerprints, numbers) blanked out, and a tqdm
    state reduced to ``BAR(desc)`` followed by whatever was printed after it on the same line."""
    piece = _STAMP.sub("[T]", piece.rstrip())
    if m := _BAR.match(piece):
        piece = f"BAR({m['desc'] or ''})" + piece[m.end():]
    return _NUMBER.sub("N", _HEX.sub("H", _PATH.sub("P", piece)))


def shapes(all_pieces: list[str]) -> list[str]:
    """Shapes in order, with the repeated states of one tqdm bar counted once."""
    out: list[str] = []
    for piece in all_pieces:
        s = shape(piece)
        if not (out and s == out[-1] and s.startswith("BAR(")):
            out.append(s)
    return out
