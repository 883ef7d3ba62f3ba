"""The framing of a version's warm-up file (TF Serving's ``assets.extra/tf_serving_warmup_requests``),
checked in Python before TensorFlow's record reader sees it.

A TFRecord is ``uint64 length | uint32 masked crc32c(length) | data | uint32 masked crc32c(data)``,
little-endian. TensorFlow's reader allocates ``length`` bytes as soon as the length's checksum matches:
a record declaring 2^40 bytes killed the whole server (SIGSEGV), with every version it served, on each
load attempt, restarts included. ``check_record_framing`` walks the headers only (12 bytes each, the
data is skipped), so it costs nothing however large the file, and refuses, naming the file and the
record, a header that is cut short or whose checksum does not match, a record over the size limit or
past the end of the file, and more records than allowed. The data checksums stay TensorFlow's to check
(a mismatch there is an ordinary DataLossError, not a crash).

No TensorFlow (the CRC is ``tfrec_towers.record_crc``'s, over the 8-byte lengths only).
"""
import os
import struct
from tfrec_towers.record_crc import masked_crc32c

_HEADER = struct.Struct("<QI")  # length, masked crc32c of the length's 8 bytes
_FOOTER_BYTES = 4  # masked crc32c of the data


class MalformedRecordFile(ValueError):
    """A TFRecord file whose framing is invalid; the message names the file and the record."""


def check_record_framing(path: str, max_record_bytes: int, max_records: int) -> int:
    """Check every record header of the (uncompressed) TFRecord file ``path``; the number of records.

    Raises ``MalformedRecordFile`` naming ``path`` and the record (1-based) and its byte offset when a
    header is cut short, its length checksum does not match (a corrupt or non-TFRecord file), a record
    declares more than ``max_record_bytes`` or more bytes than the file has left, or the file holds
    more than ``max_records`` records. Reads 12 bytes per record and seeks over the data.
    """
    size = os.path.getsize(path)
    count = offset = 0
    with open(path, "rb") as f:
        while offset < size:
            count += 1
            where = f"{path}: record {count} (byte {offset})"
            if count > max_records:
                raise MalformedRecordFile(f"{path} holds more than {max_records} records")
            header = f.read(_HEADER.size)
            if len(header) < _HEADER.size:
                raise MalformedRecordFile(f"{where}: the header is cut short ({len(header)} of {_HEADER.size} "
                                          f"bytes): a truncated file")
            length, length_crc = _HEADER.unpack(header)
            if masked_crc32c(header[:8]) != length_crc:
                raise MalformedRecordFile(f"{where}: the length header's checksum does not match: "
                                          f"a corrupt file, or not a TFRecord file")
            if length > max_record_bytes:
                raise MalformedRecordFile(f"{where} declares {length:,} bytes, over the limit of "
                                          f"{max_record_bytes:,} bytes per record")
            left = size - offset - _HEADER.size
            if length + _FOOTER_BYTES > left:
                raise MalformedRecordFile(f"{where} declares {length:,} bytes (+{_FOOTER_BYTES} of checksum) but "
                                          f"only {left:,} bytes are left: a truncated file")
            offset += _HEADER.size + length + _FOOTER_BYTES
            f.seek(offset)
    return count
