"""Every row of a CSV has as many fields as its header, or the read stops naming the line.

pandas' C parser checks this only without `usecols`, and never for a short row (it pads it with
empty cells), so an unquoted separator inside a value (`1,American President, The (1995),Comedy`)
would shift that row's cells silently. `FieldCheckedStream` sits between the decompressed file and
pandas and counts each row's fields as the bytes pass, with numpy per block of bytes, following the
C parser's quoting rules (a quote opens a quoted field only at the start of a field; `""` inside
one is a quote), so the check costs one scan of the bytes pandas reads anyway.

It also says when a file is compressed twice, or compressed under a plain name, instead of letting
the compressed bytes reach the parser as text that is "not UTF-8".
"""

from __future__ import annotations

import codecs
import io
from pathlib import Path
from typing import BinaryIO

import numpy as np

from recsys_lightning.errors import ConfigError, DataError, quote

QUOTE, NEWLINE, CARRIAGE_RETURN = ord('"'), ord("\n"), ord("\r")
MAGIC = {  # the first bytes of each compressed format pandas reads, and the suffix that names it
    b"\x1f\x8b": ("gzip", ".gz"),
    b"\xfd7zXZ\x00": ("xz", ".xz"),
    b"PK\x03\x04": ("zip", ".zip"),
    b"\x28\xb5\x2f\xfd": ("zstd", ".zst"),
}
BZIP2 = (b"BZh", b"1AY&SY")  # "BZh", a block-size digit, then the first block's magic


def compression_of(head: bytes) -> tuple[str, str] | None:
    """(format, suffix) when `head` starts like a compressed file, else None."""
    if head[:3] == BZIP2[0] and head[3:4].isdigit() and head[4:10] == BZIP2[1]:
        return "bzip2", ".bz2"
    return next((found for magic, found in MAGIC.items() if head.startswith(magic)), None)


def separator_byte(sep: str) -> int:
    """The byte the scan looks for: `data.sep` must be one character other than a quote or line break."""
    if len(sep) != 1 or sep in '"\r\n' or len(sep.encode("utf-8")) != 1:
        raise ConfigError(f"data.sep={quote(sep)} must be one ASCII character other than a quote or line break, e.g. ',' ';' or '\\t'")
    return ord(sep)


def scans_bytes(encoding: str) -> bool:
    """Whether separators, quotes and line breaks of text in `encoding` are those ASCII bytes and no
    byte of another character can look like them: UTF-8 and the one-byte ASCII supersets (latin-1,
    cp1252). Other encodings (UTF-16, Shift-JIS) are turned into UTF-8 before the scan."""
    if codecs.lookup(encoding).name in ("utf-8", "utf-8-sig", "ascii"):
        return True
    ascii_bytes = bytes(range(128))
    every_byte = bytes(range(256)).decode(encoding, errors="replace")
    return len(every_byte) == 256 and every_byte[:128] == ascii_bytes.decode("ascii")


class FieldCheckedStream(io.RawIOBase):
    """The decompressed bytes of `path`, unchanged (or re-encoded as UTF-8, see `parser_encoding`),
    raising DataError as soon as a row whose field count differs from the header's has passed.

    Rows are counted as the parser sees them: a quoted field may hold separators and line breaks,
    so a row can span several lines; messages give the line (as an editor counts) where it starts.
    Blank lines are left to the reader (pandas skips them or reads empty cells).
    """

    def __init__(self, raw: BinaryIO, path: Path, sep: str, encoding: str, compressed: str | None) -> None:
        super().__init__()
        self.raw, self.path, self.sep_text = raw, path, sep
        self.sep = separator_byte(sep)
        self.decoder = None if scans_bytes(encoding) else codecs.getincrementaldecoder(encoding)()
        self.parser_encoding = encoding if self.decoder is None else "utf-8"
        self.pending = b""  # bytes after the last line break, not scanned yet
        self.inside = False  # within a quoted field where `pending` starts
        self.line = 1  # the line `pending` starts on
        self.row_line = 1  # the line the row that `pending` continues started on
        self.row_separators = 0  # separators of that row already scanned
        self.row_bytes = 0  # its bytes already scanned (0: nothing yet, so far a blank line)
        self.header_fields: int | None = None
        self.rows = 0  # rows ended so far, the header included
        self.longer_rows: list[np.ndarray] = []  # per line break inside quotes, the row it lies in
        self.done = False
        self._refuse_compressed_content(compressed)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:
        data = self._read_raw(size if size is not None and size >= 0 else -1)
        if self.decoder is not None:
            data = self.decoder.decode(data, final=not data).encode("utf-8")
        if data:
            self._scan(data, final=False)
        elif not self.done:
            self.done = True
            self._scan(b"", final=True)
        return data

    def _read_raw(self, size: int) -> bytes:
        """The next bytes of the file, starting with the ones read to look for compression magic."""
        if not self.head:
            return self.raw.read(size)
        wanted = len(self.head) if size < 0 else size
        data, self.head = self.head[:wanted], self.head[wanted:]
        return data + self.raw.read(-1 if size < 0 else size - len(data))

    def line_of_row(self, row: int) -> int:
        """The line (as an editor counts, header = line 1) where data row `row` (0-based, as pandas numbers
        rows read with skip_blank_lines=False) starts: row + 2, plus the line breaks inside quoted fields before it."""
        record = row + 1
        return record + 1 + sum(int(np.count_nonzero(rows < record)) for rows in self.longer_rows)

    def _refuse_compressed_content(self, compressed: str | None) -> None:
        """The content starts like a compressed file: compressed twice, or compressed under a plain name."""
        self.head = self.raw.read(10)
        found = compression_of(self.head)
        if found is None:
            return
        kind, suffix = found
        if compressed:
            raise DataError(
                f"{self.path}: after decompressing {compressed} the content is still {kind} data (compressed twice?); "
                f"decompress it once more yourself and read the result"
            )
        raise DataError(f"{self.path}: is {kind}-compressed but its name does not say so; rename it to end in {suffix}")

    def _scan(self, data: bytes, final: bool) -> None:
        """Scan every complete line of `pending + data` (all of it when `final`), keep the rest."""
        text = self.pending + data
        cut = len(text) if final else max(text.rfind(b"\n"), text.rfind(b"\r", 0, len(text) - 1)) + 1
        self.pending = text[cut:]
        if cut:
            self._scan_lines(text, cut)
        if final:
            if self.inside:
                raise DataError(
                    f"{self.path}: the row starting on line {self.row_line} opens a quoted field that is never closed; "
                    'close the quote (a quote inside a quoted field is written twice: "")'
                )
            if self.row_bytes and self.header_fields is not None and self.row_separators + 1 != self.header_fields:
                self._refuse(self.row_separators + 1, self.row_line)  # a last line without a line break

    def _scan_lines(self, text: bytes, cut: int) -> None:
        """Count the fields of the rows ending in `text[:cut]`; bytes.find (memchr) skips the quote and
        carriage-return work for blocks without them, and row lengths and lines are computed only for a bad row."""
        block = np.frombuffer(text, np.uint8, count=cut)
        inside_at = self._inside_quotes(block) if self.inside or text.find(b'"', 0, cut) >= 0 else None
        line_break = block == NEWLINE
        if text.find(b"\r", 0, cut) >= 0:  # a block ends after a line break, so a final \r is one (never half of \r\n)
            line_break |= (block == CARRIAGE_RETURN) & np.append(block[1:] != NEWLINE, True)
        separator = block == self.sep
        if inside_at is not None:
            row_ends, separators = np.flatnonzero(line_break & ~inside_at), np.flatnonzero(separator & ~inside_at)
            quoted_breaks = np.flatnonzero(line_break & inside_at)
            if len(quoted_breaks):
                self.longer_rows.append(self.rows + np.searchsorted(row_ends, quoted_breaks))
        else:
            row_ends, separators = np.flatnonzero(line_break), np.flatnonzero(separator)
        if len(row_ends):
            before_end = np.searchsorted(separators, row_ends)
            fields = np.diff(before_end, prepend=0) + 1
            fields[0] += self.row_separators
            self._check_rows(fields, block, row_ends, line_break)
            self.row_separators = len(separators) - int(before_end[-1])
            self.row_bytes = len(block) - int(row_ends[-1]) - 1
            breaks_before = len(row_ends) if inside_at is None else int(np.count_nonzero(line_break[: row_ends[-1] + 1]))
            self.row_line = self.line + breaks_before
            self.rows += len(row_ends)
        else:
            self.row_separators += len(separators)
            self.row_bytes += len(block)
        self.line += len(row_ends) if inside_at is None else int(np.count_nonzero(line_break))

    def _inside_quotes(self, block: np.ndarray) -> np.ndarray | None:
        """Per byte, whether it lies inside a quoted field (None: no quote in the block and none open).

        Only runs of an odd number of quotes change the state (`""` is an escaped quote, or an empty
        field). Inside a quoted field such a run closes it; outside, it opens one only at the start of
        a field, else it is a literal quote (`12" vinyl`). Assuming every odd run toggles is exact
        unless a literal quote occurs, which is then resolved run by run.
        """
        is_quote = block == QUOTE
        if not is_quote.any():
            return np.full(len(block), True) if self.inside else None
        edges = np.diff(np.concatenate(([False], is_quote, [False])).astype(np.int8))
        run_starts, run_ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        odd_runs = run_starts[(run_ends - run_starts) % 2 == 1]
        previous = block[np.maximum(odd_runs - 1, 0)]
        field_start = (odd_runs == 0) | (previous == self.sep) | (previous == NEWLINE) | (previous == CARRIAGE_RETURN)
        opens = (np.arange(len(odd_runs)) % 2 == 0) != self.inside
        if field_start[opens].all():
            toggles = odd_runs
        else:  # a literal quote: follow the state run by run (only odd quote runs of this block)
            state, kept = self.inside, []
            for position, at_field_start in zip(odd_runs.tolist(), field_start.tolist()):
                if state or at_field_start:
                    kept.append(position)
                    state = not state
            toggles = np.asarray(kept, dtype=np.int64)
        marks = np.zeros(len(block), np.int32)
        marks[toggles] = 1
        inside_at = ((np.cumsum(marks) + self.inside) % 2).astype(bool)
        self.inside = bool((len(toggles) + self.inside) % 2)
        return inside_at

    def _check_rows(self, fields: np.ndarray, block: np.ndarray, row_ends: np.ndarray, line_break: np.ndarray) -> None:
        """Refuse the first row (the first row of the file is the header) whose field count differs, blank lines aside."""
        first = 0
        if self.header_fields is None:
            self.header_fields, first = int(fields[0]), 1
        wrong = np.flatnonzero(fields[first:] != self.header_fields) + first
        if not len(wrong):
            return
        starts = np.append(0, row_ends[:-1] + 1)[wrong]
        ends = row_ends[wrong]
        lengths = ends - starts - ((block[ends] == NEWLINE) & (block[np.maximum(ends - 1, 0)] == CARRIAGE_RETURN))
        lengths[wrong == 0] += self.row_bytes
        bad = wrong[(fields[wrong] != 1) | (lengths > 0)]
        if len(bad):
            row = int(bad[0])
            start = int(starts[np.searchsorted(wrong, row)])
            line = self.row_line if row == 0 else self.line + int(np.count_nonzero(line_break[:start]))
            self._refuse(int(fields[row]), line)

    def _refuse(self, count: int, line: int) -> None:
        expected = self.header_fields
        plural = "field" if count == 1 else "fields"
        if count == 1:
            advice = f"the separator is {self.sep_text!r}: set data.sep if the file uses another (e.g. data.sep=';' or data.sep='\\t')"
        elif count > expected:
            advice = f'quote each field that contains the separator {self.sep_text!r} ("Smith, John")'
        else:
            advice = "add the missing fields (an empty field still needs its separator)"
        raise DataError(f"{self.path}: line {line} has {count} {plural}, the header has {expected}; {advice}")
