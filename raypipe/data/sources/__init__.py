"""Source adapters: real on-disk data layouts -> the canonical manifest (``raypipe.data.manifest``).

Each adapter is one function ``Path -> DataFrame`` registered with ``@register_source(name)``, one
module per layout, and returns ``manifest.normalise(...)`` output. Adapters check what a person can
fix (columns, values, missing images, label files) and raise ``InputError`` naming file, row and
field, so a bad row stops ``raypipe data check`` with one line instead of surfacing as a NaN three
epochs into training. Every image gets the cheap header check of ``images.check_file`` (missing,
empty, truncated, not an image, under 8 bits); decoding the pixels is left to the image cache, which
does it once anyway.

Detection tries the adapters in the order they are imported below: the two published layouts
first, the catch-all plain CSV last.
"""

from __future__ import annotations

from raypipe.data.sources.common import parse_yolo
from raypipe.data.sources.registry import _DETECT, SOURCES, detect_kind, load_source, register_source

# Imported for their registration, in detection order.
from raypipe.data.sources.grazpedwri import _graz_csv, load_grazpedwri  # noqa: E402  isort: skip
from raypipe.data.sources.mura import load_mura  # noqa: E402  isort: skip
from raypipe.data.sources.plain import load_csv  # noqa: E402  isort: skip

__all__ = ["SOURCES", "_DETECT", "_graz_csv", "detect_kind", "load_csv", "load_grazpedwri", "load_mura",
           "load_source", "parse_yolo", "register_source"]
