"""Tar integrity beyond what `tarfile` reports.

Python's `tarfile` treats a header it cannot read (a bad checksum, a
header cut short, a zeroed block) as the end of the archive and stops
without a word, so the members after the damage would never be seen,
never be counted, and never be missed. ImageNet-21K's per-synset tars
come from old mirrors and partial downloads, so every tar is checked
here after `tarfile` has listed it:

- the archive must end where the last member `tarfile` read ends, in two
  zero blocks (POSIX's end-of-archive marker); a file that stops exactly
  at a header boundary has lost an unknown number of members;
- a non-zero block there is a header `tarfile` refused (its checksum or
  fields are bad, or it is cut short);
- zero blocks followed by more headers are a zeroed header.

What follows a damaged header is scanned for the 512-byte headers that
are still valid (the `ustar` magic and a matching checksum), skipping
their data, to count the members lost. Members before the damage are
read normally; the damage itself is reported as a `Damage`.
"""

from __future__ import annotations

import dataclasses
import tarfile
from typing import Any, BinaryIO

BLOCK = 512
_CHUNK = 1 << 20
_ZERO = bytes(BLOCK)
# Header types that describe the next member rather than being one
# (pax extended/global headers, GNU long names and long link names), and
# directories, which are not entries.
_NOT_MEMBERS = frozenset(b"xgLKD5")


@dataclasses.dataclass(frozen=True)
class Damage:
    """Where and how an archive is damaged.

    Attributes:
      offset: the byte offset of the damage.
      problem: what is wrong, for people.
      members_lost: the members after the damage that could not be read
        (found by scanning for the valid headers that follow), or None
        when the count cannot be known (the file is cut short).
    """

    offset: int
    problem: str
    members_lost: int | None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def member_end(member: tarfile.TarInfo) -> int:
    """The offset just past a member's (padded) data."""
    size = member.size if member.isreg() else 0
    return member.offset_data + _padded(size)


def _is_header(block: bytes) -> bool:
    """A ustar/GNU header whose checksum matches."""
    if len(block) < BLOCK or block[257:262] != b"ustar":
        return False
    try:
        stored = tarfile.nti(block[148:156])
    except tarfile.InvalidHeaderError:
        return False
    return stored in tarfile.calc_chksums(block)


def _header_size(block: bytes) -> int:
    try:
        return max(0, tarfile.nti(block[124:136]))
    except tarfile.InvalidHeaderError:
        return 0


def count_members_after(f: BinaryIO, start: int, size: int) -> int:
    """Counts the valid member headers from `start` to the end of file.

    Args:
      f: the archive, seekable.
      start: a block-aligned offset to scan from.
      size: the file size.

    Returns:
      The number of members (files, links, ...; not directories or
      extended headers) whose header is intact.
    """
    count, pos = 0, start
    chunk_start, chunk = pos, b""
    while pos + BLOCK <= size:
        if not chunk_start <= pos <= chunk_start + len(chunk) - BLOCK:
            f.seek(pos)
            chunk_start, chunk = pos, f.read(_CHUNK)
            if len(chunk) < BLOCK:
                break
        block = chunk[pos - chunk_start : pos - chunk_start + BLOCK]
        if block != _ZERO and _is_header(block):
            kind = block[156:157] or b"0"
            count += kind[0] not in _NOT_MEMBERS
            pos += BLOCK + _padded(_header_size(block))
        else:
            pos += BLOCK
    return count


def _refusal(block: bytes) -> str:
    """Why `tarfile` refused a header block."""
    if len(block) < BLOCK:
        return f"a header cut short ({len(block)} of {BLOCK} bytes)"
    try:
        tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except tarfile.HeaderError as e:
        return f"an unreadable header ({e})"
    return "a header tarfile could not follow (a bad extended header?)"


def check(f: BinaryIO, size: int, end: int) -> Damage | None:
    """Checks what follows the last member `tarfile` read.

    Args:
      f: the archive, seekable.
      size: the file size in bytes.
      end: where the last member read ends (`member_end`), 0 when none
        was read.

    Returns:
      The damage found, or None for a sound archive.
    """
    if size < end:
        return Damage(
            size,
            f"the file ends at byte {size} inside the data of its last "
            f"member, which needs {end} bytes",
            None,
        )
    if size == end:
        return Damage(
            end,
            "no end-of-archive blocks: the file is cut at a header "
            "boundary, so later members may be missing",
            None,
        )
    f.seek(end)
    first = f.read(BLOCK)
    if first == _ZERO:
        second = f.read(BLOCK)
        if len(second) < BLOCK and not second.strip(b"\0"):
            return Damage(
                end,
                "one zero block where the end of archive needs two: the "
                "file is cut short, so later members may be missing",
                None,
            )
        lost = count_members_after(f, end + BLOCK, size)
        if not lost:
            return None
        return Damage(
            end,
            f"a zero block at byte {end} followed by {lost} more members "
            "(a zeroed header)",
            lost,
        )
    if not first.strip(b"\0") and len(first) < BLOCK:
        return Damage(end, "the end-of-archive blocks are cut short", None)
    lost = 1 + count_members_after(f, end + BLOCK, size)
    return Damage(end, f"{_refusal(first)} at byte {end}", lost)
