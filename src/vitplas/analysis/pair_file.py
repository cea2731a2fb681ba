"""Per-pair ratios on disk (`--save-pairs`): one row per (pair, layer, component).

pairs.parquet columns: pair (int64, the pair's position in the stream), reference_index and
target_index (int64, the two images' indices in their datasets; only when the stream gives
them), layer (int64), component (string), ratio (float64; NaN where x == y at the block's
input, left out of the tables' statistics too). Its mean per (layer, component) is the
plasticity table's mean.

Layout while a run goes: the ratios of each chunk of batches between two saves of the
resumable statistics go to pairs/part-NNNNN.parquet (NNNNN = the chunk's first batch), written
before the statistics at the chunk's end are saved. A resumed run deletes every part that
starts at or past its resume point, so no pair is written twice or lost. At the end the parts
are streamed one at a time into pairs.parquet (a temp name, then a rename); the parts folder
is deleted once the run is DONE. Memory holds one chunk, never all the pairs.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from vitplas.deletion import link_out
from vitplas.runs import temp_beside

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
    folder `parts` (module doc); a run folder's are pairs.parquet and pairs/."""

    def __init__(self, path: str | Path, components: Sequence[str], parts: str | Path):
        self.path = Path(path)
        self.parts = Path(parts)
        self.components = list(components)
        self.batches = self.pairs = 0
        self._pending: list[tuple[torch.Tensor, tuple[torch.Tensor, ...]]] = []
        self._first_batch = self._first_pair = 0

    def resume(self, batches: int, pairs: int) -> None:
        """Continue after `batches` batches (`pairs` pairs): parts from there on are dropped."""
        self.parts.mkdir(parents=True, exist_ok=True)
        if (link := link_out(self.path.parent, self.parts / PAIRS_FILE)) is not None:
            raise ValueError(
                f"{link} is a symlink out of the run folder (to {link.resolve()}): a resume "
                "deletes the parts past its resume point, and vitplas deletes nothing outside "
                f"a run folder; replace the link by a folder, or delete {self.path.parent}"
            )
        for path in self.parts.iterdir():
            if path.name.endswith(".tmp") or _first_batch(path) >= batches:
                path.unlink()
        self.batches = self._first_batch = batches
        self.pairs = self._first_pair = pairs
        self._pending = []

    def add(self, ratios: torch.Tensor, indices: Sequence[torch.Tensor] = ()) -> None:
        """One batch: ratios (B, L, C) on any device; indices () or (reference, target) (B,)."""
        self._pending.append((ratios.detach(), tuple(indices)))
        self.batches += 1
        self.pairs += ratios.shape[0]

    def flush(self) -> None:
        """Write the batches added since the last flush as one part (nothing when none)."""
        if not self._pending:
            return
        self.parts.mkdir(parents=True, exist_ok=True)
        table = self._table()
        path = self.parts / f"part-{self._first_batch:05d}.parquet"
        _replace_with(path, lambda tmp: pq.write_table(table, tmp))
        self._pending = []
        self._first_batch, self._first_pair = self.batches, self.pairs

    def finish(self) -> Path:
        """Flush, then stream the parts in order into pairs.parquet; returns its path."""
        self.flush()
        parts = sorted(self.parts.glob("part-*.parquet"), key=_first_batch)
        if not parts:
            raise ValueError(f"no pair ratios were written under {self.parts}")

        def merge(tmp: str) -> None:
            with pq.ParquetWriter(tmp, _read_part(pq.read_schema, parts[0])) as writer:
                for part in parts:
                    writer.write_table(_read_part(pq.read_table, part))

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


def _read_part(read, part: Path):
    """read(part) (its schema or table); a part that cannot be read is a ValueError naming it
    and what to do: its pairs are already counted in the saved statistics, so only a run from
    the start gives them again."""
    try:
        return read(part)
    except (pa.ArrowException, OSError) as err:
        folder = part.parent.parent
        raise ValueError(
            f"{part} is damaged ({err}): a part of the per-pair ratios (--save-pairs) that the "
            f"saved statistics already count; delete the run folder {folder} and rerun the same "
            "command to measure the pairs again"
        ) from err


def _first_batch(path: Path) -> int:
    """The first batch of part file `path` (part-NNNNN.parquet); any other name counts as
    past every resume point (a resume deletes it)."""
    stem = path.name.removeprefix("part-").removesuffix(".parquet")
    return int(stem) if stem.isdigit() else 1 << 62
