"""Every read of a run's record goes through the run-folder layer's one reader
(vitplas.runs.read_record, parsed by vitplas.records), which checks the seal of a finished run
and refuses an unfinished one unless asked for on purpose.

The scan below walks the syntax tree of every module of src/vitplas and flags each call that
opens a file by itself (open, Path.read_text / read_bytes / open, pandas / pyarrow readers,
json / pickle / torch / numpy / safetensors loaders, PIL's open) unless it reads bytes already
in memory (io.BytesIO, io.StringIO, pyarrow.BufferReader). Outside the run-folder layer, a
flagged call must sit in a place of ALLOWED, each for a reason that says why what it opens is
no run's record. Adding a bare read of a run file anywhere else fails this test.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "vitplas"

OPENERS = {"open", "read_text", "read_bytes", "read_csv", "read_parquet", "read_table"}
OPENERS |= {"read_schema", "ParquetFile", "load", "load_file", "safe_open", "fromfile"}
IN_MEMORY = {"BytesIO", "StringIO", "BufferReader"}  # a reader of bytes already read

# where a module may open files itself: "path" (a module or a package folder/) or
# "path:function", relative to src/vitplas, with the reason it reads no run's record
ALLOWED = {
    "runs.py": "the run-folder layer: read_record, the one reader, and the seal",
    "records.py": "the run-folder layer: parses what read_record returns",
    "data/": "dataset files and their listings",
    "models/checkpoints.py:read_state_dict": "a user's weights file (ARCH@FILE); a run used "
    "as a model is read by models.finetuned through the reader",
    "models/hf.py": "a Hugging Face model folder (config.json, preprocessor_config.json)",
    "models/dinov2_onnx.py": "the offline DINOv2 weights in the cache",
    "models/onnx_graph.py:load_graph": "the offline DINOv2 ONNX graph in the cache",
    "config.py:read_yaml": "a user's config or spec file (a run's config.yaml: runs.RunDir)",
    "training/config.py:is_finetune_preset": "the first line of a user's preset file",
    "locks.py": "lock files: the holder record, no record of a run",
    "experiments/store.py:read_json": "a sweep's bookkeeping (status.json, sweep.json, "
    "failed.json, progress.json): rewritten after DONE, never sealed",
    "experiments/store.py:failure_reason": "a failed run's error.txt (bookkeeping)",
    "experiments/store.py:traceback_of": "a failed run's error.txt (bookkeeping)",
    "experiments/store.py:_pid_alive": "/proc/PID/stat",
    "experiments/published/__init__.py": "the published numbers shipped in the package",
    "experiments/report.py:tables_digest": "the study's tables and vitplas's own source, "
    "hashed to know whether to redraw",
    "experiments/report.py:write_report": "the report's own digest marker",
    "experiments/aggregate.py:read_tables": "the study's tables folder (aggregate's output)",
}


LAYER = ("vitplas.runs", "vitplas.records")  # the run-folder layer's readers are no bare read


def _layer_names(tree: ast.AST) -> set[str]:
    """Names a module imports from the run-folder layer (`from vitplas.records import ...`)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in LAYER:
            names |= {alias.asname or alias.name for alias in node.names}
        if isinstance(node, ast.ImportFrom) and node.module == "vitplas":
            names |= {a.asname or a.name for a in node.names if f"vitplas.{a.name}" in LAYER}
    return names


def _opens_a_file(call: ast.Call, layer: set[str] = frozenset()) -> bool:
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name not in OPENERS:
        return False
    if isinstance(func, ast.Name) and name in layer:
        return False  # vitplas.records.read_table & co.
    if isinstance(func, ast.Attribute) and getattr(func.value, "id", None) in layer:
        return False  # records.read_table(...)
    first = call.args[0] if call.args else None
    if isinstance(first, ast.Call):
        inner = first.func
        inner_name = inner.attr if isinstance(inner, ast.Attribute) else getattr(inner, "id", "")
        return inner_name not in IN_MEMORY
    return True


def _functions(tree: ast.AST):
    """(function name, node) of every top-level function and method; '' for module code."""
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node.name, node


@functools.cache
def file_opens() -> list[tuple[str, str, int]]:
    """(module path, enclosing function, line) of every call that opens a file in src/."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        tree = ast.parse(path.read_text())
        layer = _layer_names(tree)
        owner: dict[int, str] = {}
        for name, node in _functions(tree):
            for child in ast.walk(node):
                owner.setdefault(id(child), name)  # the outermost function wins
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _opens_a_file(node, layer):
                found.append((rel, owner.get(id(node), ""), node.lineno))
    return found


def _covers(key: str, module: str, function: str) -> bool:
    folder = key.endswith("/") and module.startswith(key)
    return folder or key in (module, f"{module}:{function}")


def test_no_module_outside_the_run_folder_layer_opens_a_run_file():
    bare = [
        f"{m}:{line} (in {f or 'module code'})"
        for m, f, line in file_opens()
        if not any(_covers(key, m, f) for key in ALLOWED)
    ]
    assert not bare, "read these through vitplas.records / runs.read_record:\n" + "\n".join(bare)


def test_the_allow_list_is_short_and_every_entry_is_used():
    used = {key for key in ALLOWED for m, f, _ in file_opens() if _covers(key, m, f)}
    assert set(ALLOWED) - used == set()  # a stale entry would let a new bare read in
    assert len(ALLOWED) <= 18


@pytest.mark.parametrize(
    "code",
    [
        "import pandas as pd\ndef f(run):\n    return pd.read_csv(run / 'plasticity.csv')\n",
        "def f(run):\n    return (run / 'result.json').read_text()\n",
        "import torch\ndef f(p):\n    return torch.load(p, weights_only=True)\n",
        "def f(p):\n    with open(p) as h:\n        return h.read()\n",
    ],
)
def test_the_scan_sees_a_bare_read(code):
    tree = ast.parse(code)
    assert any(isinstance(n, ast.Call) and _opens_a_file(n) for n in ast.walk(tree))


def test_the_scan_lets_bytes_already_read_through():
    code = "import io, pandas as pd\ndef f(data):\n    return pd.read_csv(io.BytesIO(data))\n"
    assert not any(isinstance(n, ast.Call) and _opens_a_file(n) for n in ast.walk(ast.parse(code)))
