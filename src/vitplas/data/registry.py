"""The dataset registry: one small record per dataset family, filled by a decorator.

A dataset name is a family plus its parameters, separated by '/':
    cifar10                  a family without parameters
    cifar10-c/snow/5         family 'cifar10-c', corruption 'snow', severity '5'
    rotten-tomatoes          a text family (modality 'text': items are (str, label))
    domainnet/clipart        family 'domainnet', domain 'clipart'
    photos/12800             family 'photos', length 12800 (the parameter has a default)
    folder:/data/my_images   the generic ImageFolder family, parameter 'path'

Each family registers one reader `reader(source, part) -> records` (see records.py); the
generic wrapper in build.py turns an official part into the paper's train/val/test splits.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vitplas.paths import data_home


class DataError(ValueError):
    """An unknown dataset, a bad parameter or split, or files missing from the expected layout."""


@dataclass(frozen=True)
class Param:
    """One parameter of a dataset family: its name, its allowed values (None: free-form)."""

    name: str
    choices: tuple[str, ...] | None = None
    default: str | None = None
    kind: str = "choice"  # 'choice' | 'int' (a positive integer) | 'path'


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is, where it lives and how it splits. `values` holds the parameters set.
    `modality`: 'image' (items (PIL image, label)) or 'text' (items (str, label), text.py)."""

    name: str
    family: str
    num_classes: int | None  # None: unlabelled, or a folder not scanned yet
    splits: tuple[str, ...]
    split_rule: str  # see splits.RULES
    location: str  # path under the data root, formatted with `values`
    layout: str  # the on-disk layout, for humans and error messages
    source: str  # 'torchvision download', 'zenodo download', 'local root', 'package', ...
    how_to_get: str  # the download flag or URL that fetches it
    description: str
    labelled: bool = True
    image_size: str = "varies"
    channels: int = 3
    params: tuple[Param, ...] = ()
    values: Mapping[str, str] = field(default_factory=dict)
    modality: str = "image"

    @property
    def complete(self) -> bool:
        """True when every parameter has a value: a dataset that can be read."""
        return all(p.name in self.values for p in self.params)

    @property
    def pattern(self) -> str:
        """The family with its parameters as placeholders: 'cifar10-c/<corruption>/<severity>'."""
        if self.family == "folder":
            return "folder:<path>"
        return "/".join([self.family, *(f"<{p.name}>" for p in self.params)])


Reader = Callable[["Source", str], Any]
Locator = Callable[["Source"], tuple[bool, str]]


@dataclass(frozen=True)
class Source:
    """What a reader gets: the dataset record, the data root, the resolved location.
    `skip_unreadable`: image files that cannot be decoded are left out, not an error."""

    info: DatasetInfo
    root: Path
    download: bool = False
    skip_unreadable: bool = False

    @property
    def path(self) -> Path:
        """root / location with the parameters filled in (a family-level name: the fixed prefix)."""
        if self.info.complete:
            return self.root / self.info.location.format(**self.info.values)
        return self.root / self.info.location.split("{", 1)[0]

    def fetch(self, download: Callable[[], object]) -> None:
        """Run `download`; a failure (offline, server gone) is a DataError saying what to do."""
        try:
            download()
        except Exception as err:  # urllib, http and torchvision raise many kinds
            raise DataError(
                f"dataset '{self.info.name}': download failed ({type(err).__name__}: {err}). "
                f"Offline? Put the files under {self.root} as {self.info.layout}"
            ) from err

    def missing(self, path: Path, what: str | None = None, hint: str = "") -> DataError:
        """The error for a file or folder absent from the expected layout."""
        return DataError(
            f"dataset '{self.info.name}': {what or 'expected'} {path} is missing. "
            f"Expected layout under the data root {self.root}: {self.info.layout}. "
            f"To get it: {self.info.how_to_get}{hint}."
        )


@dataclass(frozen=True)
class _Entry:
    info: DatasetInfo
    reader: Reader
    locate: Locator | None
    resolve: Callable[[DatasetInfo], DatasetInfo] | None  # fills info from disk (folder:)


_REGISTRY: dict[str, _Entry] = {}


def register(
    family: str,
    *,
    locate: Locator | None = None,
    resolve: Callable[[DatasetInfo], DatasetInfo] | None = None,
    **fields: Any,
) -> Callable[[Reader], Reader]:
    """Decorator: register `reader` for `family` with the DatasetInfo `fields` (stackable)."""

    def decorate(reader: Reader) -> Reader:
        if family in _REGISTRY:
            raise ValueError(f"dataset family '{family}' is registered twice")
        info = DatasetInfo(name=family, family=family, **fields)
        _REGISTRY[family] = _Entry(info, reader, locate, resolve)
        return reader

    return decorate


def _ensure_registered() -> None:
    # The families live in modules that register on import (in this order) on first use.
    for module in (
        "vitplas.data.paper_sets",
        "vitplas.data.offline_sets",
        "vitplas.data.text_sets",
    ):
        importlib.import_module(module)


def list_datasets() -> list[DatasetInfo]:
    """Every registered family (parametrised ones with their parameters unset), in order."""
    _ensure_registered()
    return [entry.info for entry in _REGISTRY.values()]


def _known() -> str:
    return ", ".join(info.pattern for info in list_datasets())


def _entry(family: str, name: str) -> _Entry:
    _ensure_registered()
    if family not in _REGISTRY:
        close = difflib.get_close_matches(family, list(_REGISTRY), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise DataError(f"dataset '{name}' is unknown{hint}; known: {_known()}")
    return _REGISTRY[family]


def parse_name(name: str) -> tuple[str, list[str]]:
    """'cifar10-c/snow/5' -> ('cifar10-c', ['snow', '5']); 'folder:/x' -> ('folder', ['/x'])."""
    if name.startswith("folder:"):
        return "folder", [name[len("folder:") :]]
    family, *rest = name.strip().split("/")
    return family, rest


def dataset_info(name: str) -> DatasetInfo:
    """The record of `name`; a family name alone gives the family (parameters unset)."""
    family, given = parse_name(name)
    entry = _entry(family, name)
    info = entry.info
    if len(given) > len(info.params):
        raise DataError(f"dataset '{name}' has too many parts; write it as {info.pattern}")
    values: dict[str, str] = {}
    for param, value in zip(info.params, given, strict=False):
        values[param.name] = _check_value(name, info, param, value)
    for param in info.params[len(given) :]:
        if param.default is not None:
            values[param.name] = param.default
        elif given:  # some parameters given, not all: an error rather than a family
            raise DataError(
                f"dataset '{name}' lacks <{param.name}>; write it as {info.pattern}"
                + _choices_text(param)
            )
    if not values and info.params:
        return info
    info = replace(info, name=_canonical(info, values), values=values)
    return entry.resolve(info) if entry.resolve else info


def _canonical(info: DatasetInfo, values: Mapping[str, str]) -> str:
    if info.family == "folder":
        return f"folder:{values['path']}"
    return "/".join([info.family, *(values[p.name] for p in info.params)])


def _choices_text(param: Param) -> str:
    return f"; {param.name} is one of: {', '.join(param.choices)}" if param.choices else ""


def _check_value(name: str, info: DatasetInfo, param: Param, value: str) -> str:
    if param.kind == "int":
        if not value.isdigit() or int(value) < 1:
            raise DataError(f"dataset '{name}': <{param.name}> must be a positive integer")
        return str(int(value))
    if param.kind == "path":
        if not value:
            raise DataError(f"dataset '{name}': write it as folder:<path to an ImageFolder>")
        return value
    if param.choices is not None and value not in param.choices:
        raise DataError(
            f"dataset '{name}': {param.name} '{value}' is unknown{_choices_text(param)}"
        )
    return value


def entry_reader(info: DatasetInfo) -> Reader:
    return _entry(info.family, info.name).reader


def resolve_root(root: str | Path | None = None) -> Path:
    """The data root: explicit `root` > $VITPLAS_DATA > vitplas_home()/'data'."""
    return data_home(root)


def is_available(name: str, root: str | Path | None = None) -> tuple[bool, str]:
    """(present here?, where it is or where it was looked for). Reads no image."""
    info = dataset_info(name)
    source = Source(info, resolve_root(root))
    entry = _entry(info.family, name)
    if entry.locate is not None:
        return entry.locate(source)
    path = source.path
    return path.exists(), str(path)
