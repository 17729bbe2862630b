"""The DARTS (NASNet-style) cell search space and the RobustDARTS spaces S1–S4.

A cell has two input nodes (the outputs of the two previous cells, numbered 0 and 1)
and ``NUM_NODES = 4`` intermediate nodes (2..5). Intermediate node ``2 + i`` may take
input from every node before it, so a cell has ``2 + 3 + 4 + 5 = 14`` edges, ordered
as in the DARTS code: node 2's edges from 0, 1, then node 3's from 0, 1, 2, and so on
(:data:`EDGES`). The cell's output concatenates the intermediate nodes. There is a
normal cell and a reduction cell (stride 2 on the edges leaving the input nodes), each
with its own architecture parameters.

A discrete cell is a :class:`Genotype`: for every intermediate node, two
``(op, input_node)`` pairs. Its text form is exactly the ``repr`` of the DARTS code's
``namedtuple``::

    Genotype(normal=[('sep_conv_3x3', 0), ...], normal_concat=[2, 3, 4, 5],
             reduce=[...], reduce_concat=[2, 3, 4, 5])

so published genotypes can be pasted in (:func:`parse`) and out (:func:`format_genotype`).

The RobustDARTS spaces (Zela et al., ICLR 2020, Sec. 3 and the ``src/spaces.py`` of
``automl/RobustDARTS``) restrict the candidate ops:

* S1: two ops per edge, a different pair on every edge of the normal and the
  reduction cell (the paper's "pre-optimised" choice: the two strongest ops per edge of
  a DARTS search). Here the op axis is the union of the pairs and a boolean mask
  (:func:`edge_mask`) says which ops each edge may use.
* S2: ``skip_connect``, ``sep_conv_3x3`` on every edge.
* S3: ``none``, ``skip_connect``, ``sep_conv_3x3`` on every edge.
* S4: ``noise`` (a fresh standard-normal tensor, ignoring its input), ``sep_conv_3x3``.

References:
  Liu, Simonyan & Yang, "DARTS: Differentiable Architecture Search", ICLR 2019.
  Zela, Elsken, Saikia, Marrakchi, Brox & Hutter, "Understanding and Robustifying
  Differentiable Architecture Search", ICLR 2020.
  Xu et al., "PC-DARTS: Partial Channel Connections for Memory-Efficient
  Architecture Search", ICLR 2020.
"""

from __future__ import annotations

import ast
import dataclasses
from typing import NamedTuple

import numpy as np

# The DARTS candidate ops, in the order of the reference PRIMITIVES list.
OPS: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)
NOISE = "noise"
# Every op a genotype may name: the DARTS ops plus RobustDARTS' noise op (S4).
KNOWN_OPS: tuple[str, ...] = OPS + (NOISE,)
PARAMETER_FREE_OPS: tuple[str, ...] = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", NOISE)

NUM_INPUTS = 2
NUM_NODES = 4  # intermediate nodes per cell
# (source, target) of every edge, targets numbered 2..5, in the DARTS order.
EDGES: tuple[tuple[int, int], ...] = tuple(
    (source, NUM_INPUTS + node) for node in range(NUM_NODES) for source in range(NUM_INPUTS + node)
)
NUM_EDGES = len(EDGES)  # 14
# The slice of EDGES that enters each intermediate node.
NODE_EDGES: tuple[slice, ...] = tuple(
    slice(sum(NUM_INPUTS + k for k in range(node)), sum(NUM_INPUTS + k for k in range(node + 1)))
    for node in range(NUM_NODES)
)
CONCAT: tuple[int, ...] = tuple(range(NUM_INPUTS, NUM_INPUTS + NUM_NODES))
CELL_TYPES = ("normal", "reduce")

# RobustDARTS S1: per edge (in EDGES order) the two allowed ops, normal then reduction
# cell (automl/RobustDARTS, src/spaces.py, ``primitives_1``).
S1_NORMAL: tuple[tuple[str, str], ...] = (
    ("skip_connect", "dil_conv_3x3"),
    ("skip_connect", "dil_conv_5x5"),
    ("skip_connect", "dil_conv_5x5"),
    ("skip_connect", "sep_conv_3x3"),
    ("skip_connect", "dil_conv_3x3"),
    ("max_pool_3x3", "skip_connect"),
    ("skip_connect", "sep_conv_3x3"),
    ("skip_connect", "sep_conv_3x3"),
    ("skip_connect", "dil_conv_3x3"),
    ("skip_connect", "sep_conv_3x3"),
    ("max_pool_3x3", "skip_connect"),
    ("skip_connect", "dil_conv_3x3"),
    ("dil_conv_3x3", "dil_conv_5x5"),
    ("dil_conv_3x3", "dil_conv_5x5"),
)
S1_REDUCE: tuple[tuple[str, str], ...] = (
    ("max_pool_3x3", "avg_pool_3x3"),
    ("max_pool_3x3", "dil_conv_3x3"),
    ("max_pool_3x3", "avg_pool_3x3"),
    ("max_pool_3x3", "avg_pool_3x3"),
    ("skip_connect", "dil_conv_5x5"),
    ("max_pool_3x3", "avg_pool_3x3"),
    ("max_pool_3x3", "sep_conv_3x3"),
    ("skip_connect", "dil_conv_3x3"),
    ("skip_connect", "dil_conv_5x5"),
    ("max_pool_3x3", "avg_pool_3x3"),
    ("max_pool_3x3", "avg_pool_3x3"),
    ("skip_connect", "dil_conv_5x5"),
    ("skip_connect", "dil_conv_5x5"),
    ("skip_connect", "dil_conv_5x5"),
)


@dataclasses.dataclass(frozen=True)
class Space:
    """A DARTS-like search space: the op axis and, optionally, per-edge allowed ops.

    Attributes:
      name: ``darts``, ``darts-s1`` .. ``darts-s4``.
      ops: the op names along the last axis of α.
      allowed: ``None`` when every edge may use every op, else for each cell type
        (normal, reduce) and each edge the tuple of allowed op names.
    """

    name: str
    ops: tuple[str, ...]
    allowed: tuple[tuple[tuple[str, ...], ...], tuple[tuple[str, ...], ...]] | None = None

    @property
    def num_ops(self) -> int:
        return len(self.ops)

    def mask(self) -> np.ndarray:
        """Boolean ``(2, 14, num_ops)``: which ops each edge of each cell type may use."""
        if self.allowed is None:
            return np.ones((len(CELL_TYPES), NUM_EDGES, self.num_ops), bool)
        mask = np.zeros((len(CELL_TYPES), NUM_EDGES, self.num_ops), bool)
        for t, per_edge in enumerate(self.allowed):
            for e, names in enumerate(per_edge):
                for name in names:
                    mask[t, e, self.ops.index(name)] = True
        return mask


def _union_in_darts_order(*per_edge_lists) -> tuple[str, ...]:
    used = {name for per_edge in per_edge_lists for pair in per_edge for name in pair}
    return tuple(name for name in KNOWN_OPS if name in used)


SPACES: dict[str, Space] = {
    "darts": Space("darts", OPS),
    "darts-s1": Space("darts-s1", _union_in_darts_order(S1_NORMAL, S1_REDUCE), (S1_NORMAL, S1_REDUCE)),
    "darts-s2": Space("darts-s2", ("skip_connect", "sep_conv_3x3")),
    "darts-s3": Space("darts-s3", ("none", "skip_connect", "sep_conv_3x3")),
    "darts-s4": Space("darts-s4", (NOISE, "sep_conv_3x3")),
}


def get_space(name: str) -> Space:
    """The space called ``name`` (``darts``, ``darts-s1`` .. ``darts-s4``; ``s1`` etc. also accepted)."""
    key = name.strip().lower()
    if key in ("s1", "s2", "s3", "s4"):
        key = f"darts-{key}"
    if key not in SPACES:
        raise ValueError(f"unknown DARTS search space {name!r}; known: {', '.join(SPACES)}")
    return SPACES[key]


def edge_mask(name: str) -> np.ndarray:
    """Boolean ``(2, 14, num_ops)`` mask of the allowed ops of space ``name``."""
    return get_space(name).mask()


# ----------------------------------------------------------------------------- genotypes


class GenotypeError(ValueError):
    """A genotype text that cannot be parsed or is not a valid cell; the message names the bad part."""


class Genotype(NamedTuple):
    """A discrete DARTS architecture: two ``(op, input)`` pairs per intermediate node.

    ``normal[2*i]`` and ``normal[2*i+1]`` feed node ``2 + i``; inputs index the nodes
    ``0 .. 1 + i``. ``*_concat`` lists the nodes concatenated into the cell's output.
    """

    normal: tuple[tuple[str, int], ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[tuple[str, int], ...]
    reduce_concat: tuple[int, ...]

    def __str__(self) -> str:
        return format_genotype(self)


def _format_pairs(pairs) -> str:
    return "[" + ", ".join(f"({op!r}, {int(src)})" for op, src in pairs) + "]"


def _format_ints(values) -> str:
    return "[" + ", ".join(str(int(v)) for v in values) + "]"


def format_genotype(genotype: Genotype) -> str:
    """The DARTS text form, e.g. ``Genotype(normal=[('sep_conv_3x3', 0), ...], normal_concat=[2, 3, 4, 5], ...)``."""
    return (
        f"Genotype(normal={_format_pairs(genotype.normal)}, "
        f"normal_concat={_format_ints(genotype.normal_concat)}, "
        f"reduce={_format_pairs(genotype.reduce)}, "
        f"reduce_concat={_format_ints(genotype.reduce_concat)})"
    )


_FIELDS = Genotype._fields


def _literal_int(node, where: str) -> int:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    raise GenotypeError(f"{where}: expected an integer, got {ast.unparse(node)!r}")


def _parse_pairs(node, field: str) -> tuple[tuple[str, int], ...]:
    if not isinstance(node, (ast.List, ast.Tuple)):
        raise GenotypeError(f"{field}: expected a list of (op, input) pairs, got {ast.unparse(node)!r}")
    pairs = []
    for k, item in enumerate(node.elts):
        where = f"{field}[{k}]"
        if not isinstance(item, (ast.Tuple, ast.List)) or len(item.elts) != 2:
            raise GenotypeError(f"{where}: expected an (op, input) pair, got {ast.unparse(item)!r}")
        op_node, src_node = item.elts
        if not (isinstance(op_node, ast.Constant) and isinstance(op_node.value, str)):
            raise GenotypeError(f"{where}: op must be a quoted name, got {ast.unparse(op_node)!r}")
        pairs.append((op_node.value, _literal_int(src_node, f"{where} input")))
    return tuple(pairs)


def _parse_concat(node, field: str) -> tuple[int, ...]:
    # PC-DARTS and others publish concat as range(2, 6).
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range":
        if node.keywords or not 1 <= len(node.args) <= 2:
            raise GenotypeError(f"{field}: expected range(start, stop), got {ast.unparse(node)!r}")
        bounds = [_literal_int(a, field) for a in node.args]
        return tuple(range(*bounds))
    if not isinstance(node, (ast.List, ast.Tuple)):
        raise GenotypeError(f"{field}: expected a list of node indices, got {ast.unparse(node)!r}")
    return tuple(_literal_int(e, f"{field}[{k}]") for k, e in enumerate(node.elts))


def parse(text: str, ops: tuple[str, ...] | None = None) -> Genotype:
    """Parses the DARTS text form of a genotype (no ``eval``: the text is read as data).

    Args:
      text: ``Genotype(normal=[...], normal_concat=[...], reduce=[...], reduce_concat=[...])``;
        concat may be written ``range(2, 6)``.
      ops: the op names allowed (default :data:`KNOWN_OPS`).

    Raises:
      GenotypeError: naming the malformed part, the unknown op or the bad input index.
    """
    if not isinstance(text, str):
        raise GenotypeError(f"genotype must be a str, got {type(text).__name__}")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as err:
        raise GenotypeError(f"genotype text is not well formed ({err.msg}): {text.strip()[:80]!r}") from None
    call = tree.body
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "Genotype"):
        raise GenotypeError(f"genotype text must be Genotype(normal=..., ...), got {text.strip()[:80]!r}")
    if call.args:
        raise GenotypeError("Genotype(...) fields must be given by keyword (normal=, normal_concat=, reduce=, reduce_concat=)")
    values = {}
    for kw in call.keywords:
        if kw.arg not in _FIELDS:
            raise GenotypeError(f"unknown Genotype field {kw.arg!r}; expected {', '.join(_FIELDS)}")
        if kw.arg in values:
            raise GenotypeError(f"Genotype field {kw.arg!r} given twice")
        values[kw.arg] = kw.value
    missing = [f for f in _FIELDS if f not in values]
    if missing:
        raise GenotypeError(f"Genotype is missing field(s) {', '.join(missing)}")
    genotype = Genotype(
        normal=_parse_pairs(values["normal"], "normal"),
        normal_concat=_parse_concat(values["normal_concat"], "normal_concat"),
        reduce=_parse_pairs(values["reduce"], "reduce"),
        reduce_concat=_parse_concat(values["reduce_concat"], "reduce_concat"),
    )
    validate(genotype, ops)
    return genotype


def validate(genotype: Genotype, ops: tuple[str, ...] | None = None) -> Genotype:
    """Checks a genotype's shape, op names and input indices; returns it unchanged.

    Raises:
      GenotypeError: naming the field and entry at fault.
    """
    ops = KNOWN_OPS if ops is None else tuple(ops)
    for cell in CELL_TYPES:
        pairs = getattr(genotype, cell)
        if len(pairs) == 0 or len(pairs) % 2:
            raise GenotypeError(f"{cell}: expected two (op, input) pairs per node, got {len(pairs)} pair(s)")
        steps = len(pairs) // 2
        for k, (op, src) in enumerate(pairs):
            if op not in ops:
                raise GenotypeError(f"{cell}[{k}]: unknown op {op!r}; known ops: {', '.join(ops)}")
            node = NUM_INPUTS + k // 2
            if not 0 <= src < node:
                raise GenotypeError(f"{cell}[{k}]: input {src} is not a node before node {node} (0..{node - 1})")
        concat = getattr(genotype, f"{cell}_concat")
        if not concat:
            raise GenotypeError(f"{cell}_concat: empty")
        for k, node in enumerate(concat):
            if not 0 <= node < NUM_INPUTS + steps:
                raise GenotypeError(f"{cell}_concat[{k}]: node {node} does not exist (0..{NUM_INPUTS + steps - 1})")
    return genotype


def from_name_or_text(value: str, ops: tuple[str, ...] | None = None) -> Genotype:
    """A published genotype by name (see :data:`GENOTYPES`, case-insensitive) or a genotype text."""
    text = value.strip()
    if "(" in text:
        return parse(text, ops)
    key = text.upper().replace("-", "_")
    if key in GENOTYPES:
        return validate(GENOTYPES[key], ops)
    raise GenotypeError(
        f"{value[:80]!r} is neither a genotype text (Genotype(normal=...)) nor a known name; "
        f"known names: {', '.join(GENOTYPES)}"
    )


def _g(text: str) -> Genotype:
    return parse(text)


# Published genotypes, as printed in the reference code (quark0/darts cnn/genotypes.py;
# yuhuixu1993/PC-DARTS genotypes.py).
DARTS_V1 = _g(
    "Genotype(normal=[('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 0), ('sep_conv_3x3', 1), "
    "('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 2)], normal_concat=[2, 3, 4, 5], "
    "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 0), "
    "('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('avg_pool_3x3', 0)], reduce_concat=[2, 3, 4, 5])"
)
DARTS_V2 = _g(
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
    "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], "
    "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), "
    "('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])"
)
PC_DARTS = _g(
    "Genotype(normal=[('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 0), ('dil_conv_3x3', 1), "
    "('sep_conv_5x5', 0), ('sep_conv_3x3', 1), ('avg_pool_3x3', 0), ('dil_conv_3x3', 1)], normal_concat=range(2, 6), "
    "reduce=[('sep_conv_5x5', 1), ('max_pool_3x3', 0), ('sep_conv_5x5', 1), ('sep_conv_5x5', 2), "
    "('sep_conv_3x3', 0), ('sep_conv_3x3', 3), ('sep_conv_3x3', 1), ('sep_conv_3x3', 2)], reduce_concat=range(2, 6))"
)
PC_DARTS_IMAGENET = _g(
    "Genotype(normal=[('skip_connect', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 0), ('skip_connect', 1), "
    "('sep_conv_3x3', 1), ('sep_conv_3x3', 3), ('sep_conv_3x3', 1), ('dil_conv_5x5', 4)], normal_concat=range(2, 6), "
    "reduce=[('sep_conv_3x3', 0), ('skip_connect', 1), ('dil_conv_5x5', 2), ('max_pool_3x3', 1), "
    "('sep_conv_3x3', 2), ('sep_conv_3x3', 1), ('sep_conv_5x5', 0), ('sep_conv_3x3', 3)], reduce_concat=range(2, 6))"
)

GENOTYPES: dict[str, Genotype] = {
    "DARTS_V1": DARTS_V1,
    "DARTS_V2": DARTS_V2,
    "DARTS": DARTS_V2,  # the reference code's alias
    "PC_DARTS": PC_DARTS,
    "PC_DARTS_IMAGENET": PC_DARTS_IMAGENET,
}


# ----------------------------------------------------------------------------- derivation


def _derive_cell(weights: np.ndarray, ops: tuple[str, ...], mask: np.ndarray | None) -> tuple[tuple[str, int], ...]:
    weights = np.asarray(weights, np.float64)
    if weights.shape != (NUM_EDGES, len(ops)):
        raise ValueError(f"cell weights must have shape ({NUM_EDGES}, {len(ops)}), got {weights.shape}")
    usable = np.ones_like(weights, bool) if mask is None else np.asarray(mask, bool).copy()
    if "none" in ops:
        usable[:, ops.index("none")] = False
    if not usable.any(axis=1).all():
        raise ValueError("every edge needs at least one op other than 'none'")
    masked = np.where(usable, weights, -np.inf)
    gene = []
    for node, edges in enumerate(NODE_EDGES):
        w = masked[edges]
        strength = w.max(axis=1)
        # Stable sort on -strength, as the reference's sorted(..., key=-max): ties keep
        # the lower input first.
        chosen = sorted(range(NUM_INPUTS + node), key=lambda j: -strength[j])[:2]
        for j in chosen:
            gene.append((ops[int(np.argmax(w[j]))], j))
    return tuple(gene)


def derive(weights_normal, weights_reduce, ops=OPS, mask=None) -> Genotype:
    """The DARTS discretisation: per node, the two strongest incoming edges.

    An edge's strength is its largest op weight other than ``none``; the edge keeps that
    op. ``weights_*`` are ``(14, num_ops)`` mixed-op weights (softmax(α), or for PC-DARTS
    softmax(α) times the edge-normalisation weights).

    Args:
      weights_normal, weights_reduce: op weights of the normal and reduction cell.
      ops: the op names of the last axis.
      mask: optional boolean ``(2, 14, num_ops)`` of allowed ops (S1); disallowed ops
        are never chosen.
    """
    ops = tuple(ops)
    mask = (None, None) if mask is None else np.asarray(mask, bool)
    return Genotype(
        normal=_derive_cell(weights_normal, ops, mask[0]),
        normal_concat=CONCAT,
        reduce=_derive_cell(weights_reduce, ops, mask[1]),
        reduce_concat=CONCAT,
    )
