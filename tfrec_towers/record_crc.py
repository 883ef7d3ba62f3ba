"""TFRecord's masked CRC-32C, in Python: what the readers of untrusted TFRecord files (the training
logs' scan, ``data/reader.py``; a served version's warm-up file, ``serving/warmup.py``) check a frame's
length header with before TensorFlow's reader, which allocates the declared length, sees it.

A frame is ``uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)``; only the
8-byte lengths are checked here (pure Python is fast enough for them), the data CRC stays TensorFlow's.
No TensorFlow import: the serving side uses it too.
"""
from typing import List


__all__ = ["crc32c", "masked_crc32c"]


def _table() -> List[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), table-driven."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked checksum: the CRC rotated right by 15 bits plus 0xa282ead8 (mod 2^32)."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
