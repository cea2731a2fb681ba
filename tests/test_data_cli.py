"""`vitplas datasets`: the table and its JSON, presence checked under a given root."""

from __future__ import annotations

import json

from typer.testing import CliRunner

import vitplas.cli.catalog  # noqa: F401  (registers the command)
from vitplas.cli.app import app
from vitplas.data import list_datasets


def test_datasets_json_lists_every_family_with_presence(tmp_path):
    (tmp_path / "CIFAR-10-C").mkdir()
    result = CliRunner().invoke(app, ["datasets", "--json", "--root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert list(rows) == [info.pattern for info in list_datasets()]
    cifar_c = rows["cifar10-c/<corruption>/<severity>"]
    assert cifar_c["present"] is True and cifar_c["where"] == str(tmp_path / "CIFAR-10-C")
    assert cifar_c["choices"]["severity"] == ["1", "2", "3", "4", "5"]
    assert len(cifar_c["choices"]["corruption"]) == 19
    assert rows["cifar10"]["present"] is False
    assert rows["cifar10"]["where"] == str(tmp_path / "cifar-10-batches-py")
    assert rows["domainnet/<domain>"]["num_classes"] == 345
    assert rows["photos/<length>"]["choices"] == {"length": "<int>, default 10000"}
    assert rows["digits"]["present"] is True


def test_datasets_table_names_families_and_choices(tmp_path):
    result = CliRunner().invoke(app, ["datasets", "--root", str(tmp_path)], env={"COLUMNS": "220"})
    assert result.exit_code == 0, result.output
    for text in ("cifar10-c/<corruption>/<severity>", "domainnet/<domain>", "severity: 1-5"):
        assert text in result.output
    assert "unlabelled" in result.output and "flowers102" in result.output
