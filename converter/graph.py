"""Where a Keras model can be cut, and how to rebuild any piece of it.

A model is flattened into `FlatGraph`: every operation call (nested functional and Sequential
sub-models inlined) with integer tensor ids. Cut finding is a pure function over that graph;
rebuilding a head or a tail replays the recorded calls on new inputs, reusing the original
layers (and so their weights).
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Sequence

from splitinfer.errors import SplitInferError


class UnsupportedModelError(SplitInferError, ValueError):
    """The model is not one the converter can cut (subclassed, multi-input, ...)."""


# ---------------------------------------------------------------- pure graph analysis

def single_tensor_cuts(
    node_inputs: Sequence[Sequence[int]],
    node_outputs: Sequence[Sequence[int]],
    source: int,
    sink: int,
) -> list[tuple[int, int]]:
    """Tensors that every source-to-sink path passes through, as (node, tensor), in order.

    Nodes are given in a topological order. Nodes off every source-to-sink path are ignored.
    After pruning, every node is an ancestor or a descendant of a dominating tensor, so in any
    topological order the set of live tensors (produced, still to be consumed) right after its
    producer is exactly that tensor; that is the test. The source itself is the first cut
    (node -1); the sink is excluded (cutting there leaves no tail).
    """
    n = len(node_inputs)
    producers: dict[int, int] = {}
    consumers: dict[int, list[int]] = {}
    for i, (ins, outs) in enumerate(zip(node_inputs, node_outputs)):
        for t in outs:
            producers[t] = i
        for t in set(ins):
            consumers.setdefault(t, []).append(i)

    forward = _reachable(
        start=[i for i in consumers.get(source, [])],
        step=lambda i: (c for t in node_outputs[i] for c in consumers.get(t, [])),
    )
    if sink not in producers or producers[sink] not in forward:
        raise UnsupportedModelError("The model output does not depend on its input.")
    backward = _reachable(
        start=[producers[sink]],
        step=lambda i: (producers[t] for t in node_inputs[i] if t in producers),
    )
    live_nodes = forward & backward

    remaining: dict[int, int] = {}
    for t, cs in consumers.items():
        remaining[t] = sum(1 for c in cs if c in live_nodes)
    live: set[int] = {source} if remaining.get(source, 0) else set()
    cuts = [(-1, source)]
    for i in range(n):
        if i not in live_nodes:
            continue
        for t in set(node_inputs[i]):
            if t in live:
                remaining[t] -= 1
                if remaining[t] == 0:
                    live.discard(t)
        produced = [t for t in node_outputs[i] if remaining.get(t, 0) > 0]
        live.update(produced)
        if len(live) == 1 and len(produced) == 1 and produced[0] in live:
            if produced[0] != sink:
                cuts.append((i, produced[0]))
    return cuts


def ancestors_of(
    node_inputs: Sequence[Sequence[int]],
    node_outputs: Sequence[Sequence[int]],
    tensor: int,
) -> set[int]:
    """Indices of nodes whose outputs `tensor` depends on (its producer included)."""
    producers = {t: i for i, outs in enumerate(node_outputs) for t in outs}
    if tensor not in producers:
        return set()
    return _reachable(
        start=[producers[tensor]],
        step=lambda i: (producers[t] for t in node_inputs[i] if t in producers),
    )


#: Layers whose output carries the same information as their input: an invertible per-channel
#: affine map (the converter keeps its output: a BatchNormalization folds into the head's conv)...
AFFINE_LAYERS = frozenset({"BatchNormalization", "Rescaling", "Normalization"})
#: ...or the same values rearranged, padded with constants or passed through at inference (the
#: converter keeps their input: fewer or equal values, a shorter head).
PASS_THROUGH_LAYERS = frozenset({
    "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D", "Reshape", "Flatten", "Permute", "Identity",
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianDropout",
    "GaussianNoise", "AlphaDropout", "ActivityRegularization",
})


def equivalent_cuts(kinds: Sequence[str], follows_previous: Sequence[bool]) -> dict[int, int]:
    """Cuts that carry the same information as a neighbour, as {dropped: kept}, both indices into
    the cuts in order.

    `kinds[k]` is the layer class that produces cut k (index 0 is the model input), and
    `follows_previous[k]` whether that layer's only input is cut k-1. Sending either tensor of
    such a pair costs the same bytes for the same accuracy (per-channel ranges follow a
    per-channel affine map), so profiling both doubles the work for nothing: conv -> BN -> ReLU
    offers two splits, not three. The input is never dropped (cloud-only)."""
    kept = list(range(len(kinds)))
    dropped: set[int] = set()
    for k in range(1, len(kinds)):
        if not follows_previous[k]:
            continue
        if kinds[k] in AFFINE_LAYERS:
            gone, keep = (k, k - 1) if k - 1 == 0 else (k - 1, k)
        elif kinds[k] in PASS_THROUGH_LAYERS:
            gone, keep = k, k - 1
        else:
            continue
        dropped.add(gone)
        kept[gone] = keep

    def final(i: int) -> int:
        while kept[i] != i:
            i = kept[i]
        return i

    return {i: final(i) for i in sorted(dropped)}


def spread_by_compute(cum_flops: Sequence[int], total: int, count: int,
                      sizes: Sequence[int] | None = None) -> list[int]:
    """Pick `count` positions spread evenly over the model's compute.

    Position 0 (the input: cloud-only) is always kept. With `sizes` (elements of each candidate's
    tensor), each slot of compute keeps its smallest tensor (fewest bytes to send for about the
    same head cost), and the last slot runs to the end of the model, so the smallest late tensor
    (the fewest bytes any split can send) is kept; without it, the position closest to each
    slot's target. Ties go to the later split (post-activation tensors compress better).
    """
    n = len(cum_flops)
    if count >= n:
        return list(range(n))
    slot = total / count
    chosen = {0}
    for k in range(1, count):
        target = slot * k
        closest = min(range(n), key=lambda i: (abs(cum_flops[i] - target), -i))
        if sizes is None:
            chosen.add(closest)
            continue
        upper = math.inf if k == count - 1 else target + slot / 2  # the last slot runs to the end
        window = [i for i in range(1, n) if target - slot / 2 <= cum_flops[i] <= upper] or [closest]
        chosen.add(min(window, key=lambda i: (sizes[i], abs(cum_flops[i] - target), -i)))
    return sorted(chosen)


def _reachable(start, step) -> set[int]:
    seen: set[int] = set()
    queue = deque(start)
    while queue:
        i = queue.popleft()
        if i in seen:
            continue
        seen.add(i)
        queue.extend(j for j in step(i) if j not in seen)
    return seen


# ---------------------------------------------------------------- Keras shell

@dataclass
class FlatNode:
    """One recorded operation call with its inputs and outputs as flat tensor ids."""

    name: str
    operation: Any
    arguments: Any  # keras SymbolicArguments of the original call
    arg_ids: dict[int, int]  # id(original KerasTensor) -> flat tensor id
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    output_shapes: tuple[tuple[int | None, ...], ...] = ()


@dataclass
class FlatGraph:
    nodes: list[FlatNode]
    source: int
    sink: int
    source_shape: tuple[int | None, ...] = ()

    def shapes(self) -> dict[int, tuple[int | None, ...]]:
        """Shape (batch first) of every flat tensor."""
        out = {self.source: self.source_shape}
        for n in self.nodes:
            out.update(zip(n.outputs, n.output_shapes))
        return out

    @property
    def node_inputs(self) -> list[tuple[int, ...]]:
        return [n.inputs for n in self.nodes]

    @property
    def node_outputs(self) -> list[tuple[int, ...]]:
        return [n.outputs for n in self.nodes]


def check_supported(model: Any) -> None:
    """Fail early, with what is supported, for models the converter cannot cut."""
    import keras

    if not isinstance(model, keras.Model):
        raise UnsupportedModelError(
            f"Expected a keras.Model. Received: {type(model).__name__}."
        )
    functional = _as_functional(model)
    if functional is None:
        raise UnsupportedModelError(
            f"Model {model.name!r} is a subclassed keras.Model ({type(model).__name__}); its graph "
            "cannot be inspected. Supported: functional and Sequential models (nested ones too). "
            "Rebuild it with the functional API."
        )
    if len(functional.inputs) != 1 or len(functional.outputs) != 1:
        raise UnsupportedModelError(
            f"Model {model.name!r} has {len(functional.inputs)} inputs and "
            f"{len(functional.outputs)} outputs. Supported: exactly one input and one output."
        )


def flatten(model: Any) -> FlatGraph:
    """Record `model`'s calls with nested sub-models inlined, in topological order."""
    check_supported(model)
    functional = _as_functional(model)
    counter = iter(range(1 << 30))
    source = next(counter)
    nodes: list[FlatNode] = []
    used_names: set[str] = set()
    (sink,) = _inline(functional, [source], nodes, counter, used_names, prefix="")
    return FlatGraph(
        nodes=nodes, source=source, sink=sink, source_shape=tuple(functional.inputs[0].shape)
    )


def replay(graph: FlatGraph, start: int, new_input: Any, stop: int) -> Any:
    """Rebuild the piece of `graph` from tensor `start` to tensor `stop` on `new_input`.

    Only nodes that `stop` depends on are called, in recorded order. A node that needs a
    tensor not computed from `start` means the piece is not a single-tensor cut.
    """
    needed = ancestors_of(graph.node_inputs, graph.node_outputs, stop)
    needed -= ancestors_of(graph.node_inputs, graph.node_outputs, start)
    values: dict[int, Any] = {start: new_input}
    for i, node in enumerate(graph.nodes):
        if i not in needed:
            continue
        missing = [t for t in node.inputs if t not in values]
        if missing:
            raise UnsupportedModelError(
                f"Cannot rebuild from tensor {start}: node {node.name!r} needs tensors {missing} "
                "that are not computed from it (not a single-tensor cut)."
            )
        tensor_dict = {orig: values[flat] for orig, flat in node.arg_ids.items()}
        args, kwargs = node.arguments.fill_in(tensor_dict)
        outputs = node.operation(*args, **kwargs)
        for t, value in zip(node.outputs, _flat(outputs)):
            values[t] = value
    if stop not in values:
        raise UnsupportedModelError(f"Tensor {stop} is not reachable from tensor {start}.")
    return values[stop]


def _as_functional(model: Any) -> Any | None:
    """The functional graph behind a model: itself, a built Sequential's, or None."""
    import keras
    from keras.src.models.functional import Functional

    if isinstance(model, keras.Sequential):
        functional = getattr(model, "_functional", None)
        if functional is None:
            raise UnsupportedModelError(
                f"Sequential model {model.name!r} is not built: give its first layer an "
                "input shape (keras.Input) or call it once before converting."
            )
        return functional
    if isinstance(model, Functional):
        return model
    return None


def _inline(functional, input_ids, nodes, counter, used_names, prefix) -> list[int]:
    """Append `functional`'s calls to `nodes`; returns the flat ids of its outputs."""
    import keras

    ids: dict[int, int] = {id(t): f for t, f in zip(functional.inputs, input_ids)}
    depth_keys = sorted(functional._nodes_by_depth.keys(), reverse=True)
    for depth in depth_keys:
        for node in functional._nodes_by_depth[depth]:
            if not node.operation or node.is_input:
                continue
            op = node.operation
            in_flat = [ids[id(t)] for t in node.arguments.keras_tensors]
            inner = _as_functional(op) if isinstance(op, keras.Model) else None
            if isinstance(op, keras.Model) and inner is None:
                raise UnsupportedModelError(
                    f"Nested model {op.name!r} is subclassed; only functional or Sequential "
                    "sub-models can be inlined."
                )
            if inner is not None:
                if len(in_flat) != len(inner.inputs):
                    raise UnsupportedModelError(
                        f"Nested model {op.name!r} is called with {len(in_flat)} tensors but has "
                        f"{len(inner.inputs)} inputs."
                    )
                out_flat = _inline(inner, in_flat, nodes, counter, used_names, f"{op.name}/")
            else:
                out_flat = [next(counter) for _ in node.outputs]
                nodes.append(
                    FlatNode(
                        name=_unique_name(op.name, prefix, used_names),
                        operation=op,
                        arguments=node.arguments,
                        arg_ids={id(t): f for t, f in zip(node.arguments.keras_tensors, in_flat)},
                        inputs=tuple(in_flat),
                        outputs=tuple(out_flat),
                        output_shapes=tuple(tuple(t.shape) for t in node.outputs),
                    )
                )
            for t, f in zip(node.outputs, out_flat):
                ids[id(t)] = f
    return [ids[id(t)] for t in functional.outputs]


def _unique_name(name: str, prefix: str, used: set[str]) -> str:
    candidate = name if name not in used else f"{prefix.replace('/', '.')}{name}"
    k = 1
    base = candidate
    while candidate in used:
        k += 1
        candidate = f"{base}_{k}"
    used.add(candidate)
    return candidate


def _flat(outputs: Any) -> list[Any]:
    from keras.src import tree

    return tree.flatten(outputs)
