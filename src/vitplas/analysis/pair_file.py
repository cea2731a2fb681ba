"""Per-pair ratios on disk (`--save-pairs`): one row per (pair, layer, component).

pairs.parquet columns: pair (int64, the pair's position in the stream), reference_index and
target_index (int64, the two images' indices in their datasets; only when the stream gives
them), layer (int64), component (string), ratio (float64; NaN where x == y at the block's
input, left out of the tables' statistics too). Its mean per (layer, component) is the
plasticity table's mean.

Layout while a run goes: the ratios of each chunk of batches between two saves of the
resumable statistics go to pairs/part-NNNNN.parquet (NNNNN = the chunk's first batch), written
before the statistics at the chunk's end are saved; the saved statistics list the parts they
cover (`parts`: name, first batch, batches, pairs, sha256). A resumed run checks that those
parts cover exactly the batches before its resume point, each with its recorded sha256 (a
missing or changed one is an error naming it: the pairs it held are lost), and deletes every
other part, so no pair is written twice or lost. At the end the listed parts are streamed one
at a time into pairs.parquet (a temp name, then a rename), which must then hold every pair;
the parts folder is deleted once the run is DONE. Memory holds one chunk, never all the pairs.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from vitplas.deletion import link_out
from vitplas.runs import DamagedRecordError, atomic_write_bytes, read_record, temp_beside

PAIRS_FILE = "pairs.parquet"
PARTS_DIR = "pairs"


def _replace_with(path: Path, write) -> Path:
    """Call write(tmp) on a temp name in path's folder, then rename it to `path`."""
    tmp = temp_beside(path)  # a plain open()'s mode: the group may read a shared study
    try:
        write(str(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class PairWriter:
    """Streams (B, L, C) ratio batches into the Parquet file `path` through part files in the
    folder `parts` (module doc); a run folder's are pairs.parquet and pairs/. `fix` says what to
    do when the parts a resume needs are lost."""

    def __init__(
        self, path: str | Path, components: Sequence[str], parts: str | Path, fix: str = ""
    ):
        self.path = Path(path)
        self.parts = Path(parts)
        self.components = list(components)
        self.fix = fix or f"delete {self.parts} and the saved statistics to start over"
        self.batches = self.pairs = 0
        self.written: list[dict] = []  # the parts flushed: what a saved state covers
        self._pending: list[tuple[torch.Tensor, tuple[torch.Tensor, ...]]] = []
        self._first_batch = self._first_pair = 0

    def resume(self, batches: int, pairs: int, parts: Sequence[dict] = ()) -> None:
        """Continue after `batches` batches (`pairs` pairs), whose ratios the part files
        `parts` (the saved state's list) hold: checked, kept; every other part is deleted."""
        self._check_cover(list(parts), batches, pairs)
        for part in parts:
            self._part_bytes(part)
        keep = {part["name"] for part in parts}
        self.parts.mkdir(parents=True, exist_ok=True)
        if (link := link_out(self.path.parent, self.parts / PAIRS_FILE)) is not None:
            raise ValueError(
                f"{link} is a symlink out of the run folder (to {link.resolve()}): a resume "
                "deletes the parts past its resume point, and vitplas deletes nothing outside "
                f"a run folder; replace the link by a folder, or delete {self.path.parent}"
            )
        for path in self.parts.iterdir():
            if path.name not in keep:
                path.unlink()
        self.written = [dict(part) for part in parts]
        self.batches = self._first_batch = batches
        self.pairs = self._first_pair = pairs
        self._pending = []

    def _check_cover(self, parts: list[dict], batches: int, pairs: int) -> None:
        """The parts must follow each other from batch 0 to `batches` (`pairs` pairs)."""
        edge = counted = 0
        for part in parts:
            if part["first_batch"] != edge:
                break
            edge, counted = edge + part["batches"], counted + part["pairs"]
        if (edge, counted) != (batches, pairs):
            raise DamagedRecordError(
                self.path.parent, self.parts.name, f"its parts hold the first {edge} batches "
                f"({counted} pairs) in a row, not the {batches} batches ({pairs} pairs) that the "
                "saved statistics count", self.fix)  # fmt: skip

    def _part_bytes(self, part: dict) -> bytes:
        """Part `part` (a record of `written`) as written: a missing or changed one is a
        DamagedRecordError naming it, the batches it held, and `fix`."""
        name = (self.parts / part["name"]).relative_to(self.path.parent).as_posix()
        span = f"batches {part['first_batch']}-{part['first_batch'] + part['batches'] - 1}"
        try:
            data = read_record(self.path.parent, name, unfinished=True)
        except FileNotFoundError:
            problem = f"the file is missing (it held the ratios of {span}, which the saved " \
                "statistics count)"  # fmt: skip
            raise DamagedRecordError(self.path.parent, name, problem, self.fix) from None
        if hashlib.sha256(data).hexdigest() != part["sha256"]:
            problem = f"its content changed since it was written (the ratios of {span})"
            raise DamagedRecordError(self.path.parent, name, problem, self.fix)
        return data

    def add(self, ratios: torch.Tensor, indices: Sequence[torch.Tensor] = ()) -> None:
        """One batch: ratios (B, L, C) on any device; indices () or (reference, target) (B,)."""
        self._pending.append((ratios.detach(), tuple(indices)))
        self.batches += 1
        self.pairs += ratios.shape[0]

    def flush(self) -> None:
        """Write the batches added since the last flush as one part (nothing when none)."""
        if not self._pending:
            return
        buffer = io.BytesIO()
        pq.write_table(self._table(), buffer)
        data = buffer.getvalue()
        name = f"part-{self._first_batch:05d}.parquet"
        atomic_write_bytes(self.parts / name, data)
        self.written.append({
            "name": name, "first_batch": self._first_batch, "pairs": self.pairs - self._first_pair,
            "batches": self.batches - self._first_batch,
            "sha256": hashlib.sha256(data).hexdigest(),
        })  # fmt: skip
        self._pending = []
        self._first_batch, self._first_pair = self.batches, self.pairs

    def finish(self) -> Path:
        """Flush, then stream the parts in order into pairs.parquet (read through the run
        folder's reader); returns its path. It must hold every pair added."""
        self.flush()
        if not self.written:
            raise ValueError(f"no pair ratios were written under {self.parts}")
        self._check_cover(self.written, self.batches, self.pairs)

        def merge(tmp: str) -> None:
            writer = None
            try:
                for part in self.written:
                    table = pq.read_table(pa.BufferReader(self._part_bytes(part)))
                    writer = writer or pq.ParquetWriter(tmp, table.schema)
                    writer.write_table(table)
            finally:
                if writer is not None:
                    writer.close()

        return _replace_with(self.path, merge)

    def remove_parts(self) -> None:
        shutil.rmtree(self.parts, ignore_errors=True)

    def _table(self) -> pa.Table:
        ratios = torch.cat([r for r, _ in self._pending]).cpu().numpy()  # (P, L, C)
        n, depth, width = ratios.shape
        cells = depth * width
        columns = {"pair": np.repeat(np.arange(self._first_pair, self._first_pair + n), cells)}
        if self._pending[0][1]:
            for k, name in enumerate(("reference_index", "target_index")):
                index = torch.cat([ix[k] for _, ix in self._pending]).cpu().numpy()
                columns[name] = np.repeat(index.astype(np.int64), cells)
        columns["layer"] = np.tile(np.repeat(np.arange(depth, dtype=np.int64), width), n)
        columns["component"] = np.tile(np.array(self.components, dtype=object), n * depth)
        columns["ratio"] = ratios.reshape(-1).astype(np.float64)
        return pa.table({k: pa.array(v) for k, v in columns.items()})
