"""skip_unreadable: corrupt image files in an ImageFolder are an error by default; with the
option they are left out, counted in the manifest and named in one warning."""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from vitplas.cli import app
from vitplas.data import DataError, get_dataset, skipped_report

PER_CLASS = 6  # readable images per class


def _encoded(kind: str, shade: int) -> bytes:
    buffer = io.BytesIO()
    pixels = np.full((16, 16, 3), shade, np.uint8)
    pixels[::2, ::3] = 255 - shade  # some texture, so the JPEG has real entropy-coded data
    Image.fromarray(pixels).save(buffer, kind)
    return buffer.getvalue()


def corrupt_folder(root) -> tuple[list, dict]:
    """cat/ and dog/ with PER_CLASS real images each, plus three corrupt files: a JPEG cut in
    half, a PNG with a flipped byte in its pixel data (CRC mismatch), text named .jpg.
    Returns (corrupt paths, {class: readable count})."""
    for c, name in enumerate(("cat", "dog")):
        (root / name).mkdir(parents=True)
        for i in range(PER_CLASS):
            kind = "PNG" if i % 2 else "JPEG"
            (root / name / f"{i}.{kind.lower()}").write_bytes(_encoded(kind, 40 * c + 10 * i))
    jpeg = _encoded("JPEG", 90)
    png = bytearray(_encoded("PNG", 120))
    at = png.index(b"IDAT") + 8  # a byte inside the compressed pixel data
    png[at] ^= 0xFF
    bad = [root / "cat" / "truncated.jpeg", root / "dog" / "flipped.png", root / "dog" / "x.jpg"]
    bad[0].write_bytes(jpeg[: len(jpeg) // 2])
    bad[1].write_bytes(bytes(png))
    bad[2].write_bytes(b"not an image")
    return bad, {"cat": PER_CLASS, "dog": PER_CLASS}


def test_the_corrupt_files_really_fail_to_decode(tmp_path):
    bad, _ = corrupt_folder(tmp_path / "imgs")
    for path in bad:
        with pytest.raises((OSError, SyntaxError, ValueError)), Image.open(path) as img:
            img.load()


def test_default_is_an_error_that_names_the_option(tmp_path):
    bad, _ = corrupt_folder(tmp_path / "imgs")
    hint = r"\(finetune and probe: skip_unreadable=true leaves them out\)"
    with pytest.raises(DataError, match=r"images cannot be read: .*" + hint) as err:
        get_dataset(f"folder:{tmp_path / 'imgs'}", "train")
    assert str(bad[2]) in str(err.value) and str(bad[1]) in str(err.value)


def test_skipping_leaves_out_exactly_the_corrupt_files(tmp_path):
    bad, counts = corrupt_folder(tmp_path / "imgs")
    name = f"folder:{tmp_path / 'imgs'}"
    splits = {s: get_dataset(name, s, skip_unreadable=True) for s in ("train", "val", "test")}
    total = sum(len(d) for d in splits.values())
    assert total == sum(counts.values()) == 12
    labels = np.concatenate([d.labels for d in splits.values()])
    assert np.bincount(labels).tolist() == [PER_CLASS, PER_CLASS]  # labels not shifted
    for data in splits.values():
        assert sorted(data.skipped) == sorted(bad)
        for i in range(len(data)):  # every image left in decodes
            assert data[i][0].size == (16, 16)
    with pytest.warns(UserWarning, match=r"^skip_unreadable: left out 3 image file\(s\)"):
        report = skipped_report([*splits.values(), None])
    assert report["skipped_unreadable"] == 3  # the three splits share one pool: counted once
    assert sorted(report["skipped_unreadable_files"]) == sorted(map(str, bad))


def test_nothing_to_skip_reports_zero_without_a_warning(tmp_path):
    root = tmp_path / "imgs"
    corrupt_folder(root)
    for path in [*root.rglob("truncated*"), *root.rglob("flipped*"), *root.rglob("x.jpg")]:
        path.unlink()
    data = get_dataset(f"folder:{root}", "test", skip_unreadable=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert skipped_report([data]) == {"skipped_unreadable": 0, "skipped_unreadable_files": []}


def test_a_folder_of_only_corrupt_files_is_an_error(tmp_path):
    for name in ("a", "b"):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        (tmp_path / "imgs" / name / "x.png").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"none of the 2 images in .* can be read"):
        get_dataset(f"folder:{tmp_path / 'imgs'}", "train", skip_unreadable=True)


TINY = ["--model", "tiny-random", "img_size=32", "num_workers=0", "device=cpu"]


def _invoke(args):
    with pytest.warns(UserWarning, match=r"skip_unreadable: left out 3 image file\(s\)"):
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return result


def test_finetune_with_skip_unreadable_records_the_count(tmp_path):
    bad, _ = corrupt_folder(tmp_path / "imgs")
    out = tmp_path / "run"
    args = ["finetune", *TINY, "random_init=true", f"dataset=folder:{tmp_path / 'imgs'}"]
    args += ["steps=2", "warmup_steps=0", "batch_size=4", "skip_unreadable=true"]
    _invoke([*args, "--out", str(out)])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["skipped_unreadable"] == 3
    assert sorted(manifest["skipped_unreadable_files"]) == sorted(map(str, bad))
    # evaluate reads the run's test split as training drew it: the same files left out
    from vitplas.jobs.runners import run_evaluate
    from vitplas.training.config import EvaluateConfig

    with warnings.catch_warnings():  # the one warning may have been given already
        warnings.simplefilter("ignore")
        table = run_evaluate(EvaluateConfig(run=str(out), device="cpu", num_workers=0))
    result = json.loads((out / "result.json").read_text())
    assert table["acc"].iloc[0] == pytest.approx(result["test_acc"])


def test_probe_with_skip_unreadable_records_the_count(tmp_path):
    corrupt_folder(tmp_path / "imgs")
    out = tmp_path / "probe"
    args = ["probe", *TINY, "--dataset", f"folder:{tmp_path / 'imgs'}", "layers=[0]"]
    args += ["components=[mha]", "skip_unreadable=true"]
    _invoke([*args, "--out", str(out)])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["skipped_unreadable"] == 3
