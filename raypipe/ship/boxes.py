"""Text boxes for an image at inference, found where users keep them, read as training reads them.

Training masks the YOLO class-8 (text) boxes that ``data/sources/`` finds; a champion trained on
masked films must see masked films in production too, or it meets the very burned-in markers that
masking hid from it. ``predict`` looks, in this order:

1. the ``text_boxes`` cell of the ``--csv`` row (``cx cy w h;cx cy w h``, the manifest's format);
2. ``<stem>.txt`` in the ``--labels`` folder (YOLO labels, as GRAZPEDWRI-DX and YOLO tools write them);
3. the GRAZPEDWRI-DX layout around the image: ``<base>/folder_structure/yolov5/labels/<stem>.txt`` or
   ``<base>/labels/<stem>.txt``, where ``<base>`` holds the image's ``images*`` folder (or the image).

The first place that has the image's boxes answers (a label file whose lines hold no text box
answers "no text boxes"). Label files are parsed by ``sources.common.parse_yolo`` (its one-line errors name
file, line and field) and filtered to ``sources.grazpedwri.TEXT_CLASS``, as training does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from raypipe.data.manifest import format_boxes, parse_boxes
from raypipe.data.sources.common import parse_yolo
from raypipe.data.sources.grazpedwri import LABEL_DIRS as GRAZ_LABEL_DIRS
from raypipe.data.sources.grazpedwri import TEXT_CLASS
from raypipe.errors import InputError


@dataclass(frozen=True)
class Boxes:
    text: str  # manifest format: "cx cy w h;..." ("" = none)
    source: str  # where they came from ("csv", "labels", "grazpedwri") or "none"

    @property
    def count(self) -> int:
        return len(parse_boxes(self.text))


def from_label_file(path: Path) -> str:
    """The text (class-8) boxes of a YOLO label file, in the manifest's format."""
    return format_boxes([box for cls, box in parse_yolo(path) if cls == TEXT_CLASS])


def check_cell(text: str, where: str | Path, row: int) -> str:
    """A ``text_boxes`` cell, checked: blank, or ``cx cy w h`` quadruples in 0-1 joined by ``;``."""
    text = text.strip()
    try:
        boxes = parse_boxes(text)
    except ValueError:
        boxes = None
    if boxes is None or any(len(b) != 4 or not all(0.0 <= v <= 1.0 for v in b) for b in boxes):
        raise InputError(where, f"expected 'cx cy w h;cx cy w h' in 0-1, got {text[:60]!r}", row=row,
                         field="text_boxes")
    return text


def find(image: Path, cell: str | None = None, labels_dir: Path | None = None) -> Boxes:
    """The image's text boxes from the first place that has them (module docstring), else none."""
    if cell:
        return Boxes(cell, "csv")
    if labels_dir is not None and (label := labels_dir / f"{image.stem}.txt").is_file():
        return Boxes(from_label_file(label), "labels")
    parent = image.parent
    bases = [parent.parent, parent] if parent.name.startswith("images") else [parent]
    for base in bases:
        for sub in GRAZ_LABEL_DIRS:
            if (label := base / sub / f"{image.stem}.txt").is_file():
                return Boxes(from_label_file(label), "grazpedwri")
    return Boxes("", "none")
