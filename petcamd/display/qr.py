"""QR codes for the pairing URL: one matrix, rendered for terminals, PNG files and framebuffers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import qrcode
import qrcode.constants

QUIET_ZONE = 2  # modules; the standard asks for 4, but 2 scans reliably on screens and saves space


@dataclass(frozen=True, slots=True)
class QrMatrix:
    version: int
    modules: tuple[tuple[bool, ...], ...]  # includes the quiet zone; True = dark

    @property
    def size(self) -> int:
        return len(self.modules)


def make_qr(text: str) -> QrMatrix:
    """Medium error correction: survives a smudged small screen, keeps the code small."""
    qr = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, border=QUIET_ZONE)
    qr.add_data(text)
    qr.make(fit=True)
    rows = tuple(tuple(bool(cell) for cell in row) for row in qr.get_matrix())
    return QrMatrix(version=int(qr.version), modules=rows)


def render_terminal(matrix: QrMatrix) -> str:
    """Two modules per character cell with half blocks, dark-on-light regardless of terminal theme."""
    upper, lower, full, empty = "\u2580", "\u2584", "\u2588", " "
    lines: list[str] = []
    rows = matrix.modules
    for y in range(0, matrix.size, 2):
        top = rows[y]
        bottom = rows[y + 1] if y + 1 < matrix.size else (False,) * matrix.size
        # light modules are drawn (the terminal background is taken as dark), so the code stays readable
        chars = [
            full if not t and not b else upper if not t else lower if not b else empty
            for t, b in zip(top, bottom, strict=True)
        ]
        lines.append("".join(chars))
    return "\n".join(lines)


def render_png(matrix: QrMatrix, path: Path, *, module_px: int = 8) -> None:
    """A PNG for sharing or printing (`petcamctl pair --png`)."""
    from PIL import Image, ImageDraw

    size = matrix.size * module_px
    image = Image.new("1", (size, size), 1)
    draw = ImageDraw.Draw(image)
    for y, row in enumerate(matrix.modules):
        for x, dark in enumerate(row):
            if dark:
                draw.rectangle(
                    (x * module_px, y * module_px, (x + 1) * module_px - 1, (y + 1) * module_px - 1), fill=0
                )
    image.save(path, format="PNG")
