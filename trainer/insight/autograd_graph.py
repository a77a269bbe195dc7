"""The backward graph autograd records during a forward pass, walked and drawn as text.

`loss.grad_fn` is the root; each node's `next_functions` lead to the nodes that made its inputs,
down to `AccumulateGrad` nodes, one per leaf tensor that requires grad, which add the incoming
gradient into that leaf's `.grad`. Walking them shows the chain rule `backward()` will run, e.g.
`SumBackward0 <- SubBackward0 <- PowBackward0 <- x` for the lecture's `(x**2 - 5).sum()`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

ACCUMULATE_GRAD = "AccumulateGrad"
# Enough for any model this project builds; a bigger graph is cut off, not walked for minutes.
MAX_NODES = 5000


@dataclass
class GraphNode:
    """One node of the backward graph.

    `leaf` names the tensor of an AccumulateGrad node. A node reached again along another path
    (the graph is a DAG) is `shared`: its inputs are listed where it was first reached.
    """

    name: str
    leaf: str | None = None
    children: list[GraphNode] = field(default_factory=list)
    shared: bool = False

    @property
    def label(self) -> str:
        if self.leaf is not None:
            return self.leaf
        return f"{self.name} (shared, inputs shown above)" if self.shared else self.name

    def walk(self) -> list[GraphNode]:
        """Every node of the tree, in depth-first order (shared nodes once as `shared`)."""
        nodes, stack = [], [self]
        while stack:
            node = stack.pop()
            nodes.append(node)
            stack.extend(reversed(node.children))
        return nodes


@dataclass(frozen=True)
class BackwardGraph:
    root: GraphNode
    truncated: bool  # more than MAX_NODES nodes: the rest is not shown

    def node_counts(self) -> Counter[str]:
        """How many distinct nodes of each type the graph has."""
        counts = Counter(n.name for n in self.root.walk() if not n.shared and n.leaf is None)
        counts[ACCUMULATE_GRAD] = len(self.leaves())
        return counts

    def leaves(self) -> list[str]:
        """The names of the leaves gradients reach, each once, in the order first reached."""
        names = [node.leaf for node in self.root.walk() if node.leaf is not None]
        return list(dict.fromkeys(names))

    def render(self) -> str:
        return "\n".join(render_tree(self.root))


def walk_backward_graph(loss: Tensor, leaf_names: Mapping[str, Tensor]) -> BackwardGraph:
    """The graph behind `loss`, as a tree of `GraphNode`s.

    Args:
        loss: a tensor produced by a forward pass with grad enabled.
        leaf_names: name -> tensor for the leaves to name (a model's `named_parameters()`).
    """
    if loss.grad_fn is None:
        raise ValueError("the loss has no grad_fn: nothing it was computed from requires grad")
    names = {id(tensor): name for name, tensor in leaf_names.items()}
    # Node objects are kept alive here so that their ids cannot be reused during the walk.
    seen: dict[int, Any] = {}
    root = GraphNode(type(loss.grad_fn).__name__)
    stack: list[tuple[Any, GraphNode]] = [(loss.grad_fn, root)]
    truncated = False
    while stack:
        function, node = stack.pop()
        if id(function) in seen and node.name != ACCUMULATE_GRAD:
            node.shared = True
            continue
        seen[id(function)] = function
        if node.name == ACCUMULATE_GRAD:
            variable = function.variable
            node.leaf = names.get(id(variable), f"leaf{tuple(variable.shape)}")
            continue
        if len(seen) > MAX_NODES:
            truncated = True
            continue
        # None marks an input that needs no gradient (data, constants): nothing to walk.
        inputs = [f for f, _ in function.next_functions if f is not None]
        node.children = [GraphNode(type(f).__name__) for f in inputs]
        stack.extend(reversed(list(zip(inputs, node.children, strict=True))))
    return BackwardGraph(root, truncated)


# ------------------------------------------------------------------------------------ rendering
# One line per chain `A <- B <- C` of single-input nodes; at a node with several inputs, one `├─`
# branch per input. The biggest input comes last (`└─`) and continues the main path; a stack of
# equal layers makes that path a run of identical blocks, drawn once and then counted.


def render_tree(root: GraphNode) -> list[str]:
    sizes: dict[int, int] = {}
    for node in reversed(root.walk()):  # children before their parents
        sizes[id(node)] = 1 + sum(sizes[id(child)] for child in node.children)
    lines: list[str] = []
    _render_path(root, "", "", sizes, lines)
    return lines


@dataclass(frozen=True)
class _Segment:
    """A chain of nodes along the main path, up to a node with several inputs or a leaf."""

    chain: list[GraphNode]
    sides: list[GraphNode]  # inputs of the chain's last node that leave the main path
    next: GraphNode | None  # the input that continues it

    def signature(self) -> str:
        """The block's structure without leaf names: equal for every layer of a stack."""
        chain = " <- ".join("leaf" if node.leaf else node.name for node in self.chain)
        return chain + " | " + ", ".join(_structure(side) for side in self.sides)

    def leaves(self) -> list[str]:
        nodes = [*self.chain, *(node for side in self.sides for node in side.walk())]
        return [node.leaf for node in nodes if node.leaf is not None]


def _render_path(
    node: GraphNode, first: str, rest: str, sizes: dict[int, int], lines: list[str]
) -> None:
    """Draw the main path from `node`; `first` prefixes its first line, `rest` the others."""
    segments = _main_path(node, sizes)
    index = 0
    while index < len(segments):
        segment = segments[index]
        lines.append(first + " <- ".join(node.label for node in segment.chain))
        for side in segment.sides:
            _render_path(side, rest + "├─ ", rest + "│  ", sizes, lines)
        first, rest = rest + "└─ ", rest + "   "
        repeats = _identical_blocks(segments, index)
        if repeats > 1:
            folded = segments[index + 1 : index + repeats]
            leaves = [leaf for block in folded for leaf in block.leaves()]
            times = f"{len(folded)} more time" + ("s" if len(folded) > 1 else "")
            lines.append(f"{first}... the same block {times}{_leaf_note(leaves)}")
            first, rest = rest + "└─ ", rest + "   "
        index += repeats


def _main_path(node: GraphNode, sizes: dict[int, int]) -> list[_Segment]:
    segments = []
    current: GraphNode | None = node
    while current is not None:
        chain = [current]
        while len(chain[-1].children) == 1:
            chain.append(chain[-1].children[0])
        inputs = chain[-1].children
        # The last of equally big inputs wins, so small graphs keep next_functions order.
        main = max(reversed(inputs), key=lambda n: sizes[id(n)]) if inputs else None
        segments.append(_Segment(chain, [n for n in inputs if n is not main], main))
        current = main
    return segments


def _identical_blocks(segments: list[_Segment], index: int) -> int:
    """How many segments from `index` on are the same block (the path's end is never folded)."""
    signature = segments[index].signature()
    count = 1
    while index + count < len(segments) - 1 and segments[index + count].signature() == signature:
        count += 1
    return count


def _structure(node: GraphNode) -> str:
    if node.leaf is not None:
        return "leaf"
    inputs = ", ".join(_structure(child) for child in node.children)
    return f"{node.name}({inputs})" if inputs else node.name


def _leaf_note(leaves: list[str]) -> str:
    if len(leaves) > 6:
        leaves = [*leaves[:3], "...", *leaves[-2:]]
    return f" (leaves {', '.join(leaves)})" if leaves else ""
