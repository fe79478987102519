"""Regenerate the broken image files of the bad-input corpus: ``python tests/data/bad/files/make_files.py``.

Each file is tiny and broken in one way a real data set can be (see tests/e2e/test_bad_input.py).
"""

from __future__ import annotations

import zlib
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).parent


def png16(h: int = 48, w: int = 32) -> bytes:
    img = (np.random.default_rng(0).random((h, w)) * 20000 + 10000).astype(np.uint16)
    ok, data = cv2.imencode(".png", img)
    assert ok
    return data.tobytes()


def chunk(kind: bytes, body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")


def main() -> None:
    (HERE / "empty.png").write_bytes(b"")
    good = png16()
    (HERE / "truncated.png").write_bytes(good[: len(good) // 2])  # a copy that stopped half-way
    (HERE / "not_an_image.png").write_bytes(b"<html><body><h1>404 Not Found</h1></body></html>\n")
    # 1-bit grayscale: OpenCV would silently widen it to 8 bits with two grey levels.
    ihdr = chunk(b"IHDR", (32).to_bytes(4, "big") + (48).to_bytes(4, "big") + bytes([1, 0, 0, 0, 0]))
    rows = b"".join(b"\x00" + bytes([0b10101010] * 4) for _ in range(48))
    (HERE / "one_bit.png").write_bytes(b"\x89PNG\r\n\x1a\n" + ihdr + chunk(b"IDAT", zlib.compress(rows))
                                       + chunk(b"IEND", b""))
    # Header and end intact, pixel stream garbage: only decoding finds it.
    ihdr16 = chunk(b"IHDR", (32).to_bytes(4, "big") + (48).to_bytes(4, "big") + bytes([16, 0, 0, 0, 0]))
    (HERE / "corrupt_pixels.png").write_bytes(b"\x89PNG\r\n\x1a\n" + ihdr16 + chunk(b"IDAT", b"\x78\x9c" + bytes(range(200)))
                                              + chunk(b"IEND", b""))
    ok, tiff = cv2.imencode(".tiff", np.random.default_rng(1).random((48, 32)).astype(np.float32))
    assert ok
    (HERE / "float32.tiff").write_bytes(tiff.tobytes())

    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["raypipe-bad-corpus"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.ViewPosition, ds.PatientName = "DX", "AP", "Corpus^NoPixels"
    ds.save_as(HERE / "no_pixels.dcm", enforce_file_format=True)


if __name__ == "__main__":
    main()
