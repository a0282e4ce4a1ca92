"""The budget model: what each population and each projection costs on a neuro-core.

A *population* is a spiking layer (``qcfs``), the readout, or the input (fed by the host, so it
takes no core). A *projection* is everything between a producer population and a consumer: the
linear nodes of the consumer's tree and any align node. One ``Synapses`` per (producer, consumer)
describes its connectivity as bounding boxes: for every consumer neuron, which box of producer
neurons it reads. Boxes come from the node kinds (``NodeKind.input_box``), composed along the
tree, so the model is exact for conv/pool/linear connectivity (dilated kernels are bounded by
their extent) and never loops over synapses: a VGG-16 is costed in milliseconds.

Costs per core (a *tile*: a block of channels x rows x columns of one population):
  neurons; state bits (each neuron plus one accumulator per aligned edge: an align node is an
  accumulator per target neuron, stored on the target's core); synaptic memory, the cheapest of
  the encodings the profile allows (dense matrix, sparse index+weight, or shared kernels stored
  once per core); fan-in axons (distinct producer neurons read); fan-out axons (neuron x
  destination core pairs, known once the consumers are tiled: see partition.py).

Works on a converted graph (align nodes, ``T`` set) and on a plain imported graph, which is
costed as the default conversion would build it: each qcfs a population with T = levels, the
output node a readout, an avg-repeat accumulator on every edge.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import sparse

from mtdeploy.errors import InputError
from mtdeploy.ir.graph import Graph, Node
from mtdeploy.ir.kind import dims3, kind_of
from mtdeploy.ir.snn import is_population
from mtdeploy.passes.convert import timesteps_of
from mtdeploy.passes.quantize import mantissa_bits
from mtdeploy.passes.schedule import windows

Box = tuple  # ((key, lo, hi), (key, lo, hi), (key, lo, hi)): one per producer dim, see input_box

#: resources a core has, in the order of the usage vectors (partition.py packs on these)
RESOURCES = ("neurons", "state_bits", "synaptic_bits", "fan_in", "fan_out")


@dataclass
class Synapses:
    """The synapses from one producer population into a consumer population."""

    producer: str
    keys: tuple[int, int, int]               # consumer dim indexing lo[d], hi[d]
    lo: tuple[np.ndarray, np.ndarray, np.ndarray]   # per producer dim (C, H, W)
    hi: tuple[np.ndarray, np.ndarray, np.ndarray]
    aligned: bool          # through an accumulator (align node) on the consumer's core
    t_in: int              # producer steps the accumulator integrates
    shared: bool           # every op on the path is shift-invariant: kernels storable once
    density: float         # non-zero fraction of the weighted op's weights (1: none)
    weight_bits: int | None    # bits its integer weights need (None: not quantized)
    gain: float | None     # bound on sum |w| per consumer neuron (None: not quantized)
    weighted: list[str] = field(default_factory=list)   # labels of weighted ops on the paths
    delay: int = 0
    #: per_dim_factors by consumer shape: the partitioner asks thousands of times per layer
    #: (not an init field, so dataclasses.replace gives a copy with other boxes its own cache)
    _factors: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def lengths(self) -> list[np.ndarray]:
        return [np.maximum(h - l, 0) for l, h in zip(self.lo, self.hi)]

    def per_dim_factors(self, shape: tuple[int, int, int]) -> list[np.ndarray]:
        """f[k][i] = product of the box lengths keyed by consumer dim k at index i, so that a
        neuron's fan-in is f[0][c] * f[1][h] * f[2][w] and sums factorise over a tile.
        Cached (read-only arrays); :func:`_record` clears the cache when it widens the boxes."""
        key = tuple(int(n) for n in shape)
        if key not in self._factors:
            f = [np.ones(n, np.float64) for n in key]
            for d, length in enumerate(self.lengths()):
                f[self.keys[d]] = f[self.keys[d]] * length
            for x in f:
                x.flags.writeable = False
            self._factors[key] = f
        return self._factors[key]

    def synapses(self, shape) -> int:
        return int(round(math.prod(float(x.sum()) for x in self.per_dim_factors(shape))))

    def max_fan_in(self, shape) -> int:
        """Largest number of producer neurons one consumer neuron reads (= one channel's kernel)."""
        return int(math.prod(float(x.max(initial=0)) for x in self.per_dim_factors(shape)))


@dataclass
class Population:
    name: str
    label: str
    shape: tuple[int, int, int]
    T: int
    window: int            # steps it runs (TPP: 2T)
    on_chip: bool          # False: the input, injected by the host
    edges: list[Synapses] = field(default_factory=list)
    node: Node | None = None
    stage_of: str | None = None    # a partial-sum stage of this consumer (targets/fanin.py)

    @property
    def size(self) -> int:
        return int(math.prod(self.shape))

    @property
    def accumulators(self) -> int:
        """Alignment accumulators per neuron: one per aligned incoming edge."""
        return sum(e.aligned for e in self.edges)

    def synapses(self) -> int:
        return sum(e.synapses(self.shape) for e in self.edges)


@dataclass
class Network:
    name: str
    populations: dict[str, Population]      # topological order
    readout: str
    converted: bool
    meta: dict
    windows: dict[str, tuple[int, int]] = field(default_factory=dict)   # [start, end) per population
    hop_steps: int = 1

    def consumers(self, name: str) -> list[tuple[Population, Synapses]]:
        return [(p, e) for p in self.populations.values() for e in p.edges if e.producer == name]

    def spikes_per_neuron(self, spike_counts: dict[str, float] | None) -> dict[str, float]:
        """Mean spikes per neuron per sample: measured counts where given (population -> mean
        spikes per sample), else the bound T (every neuron fires every step; the input is
        presented once)."""
        counts = spike_counts or {}
        unknown = sorted(set(counts) - set(self.populations))
        if unknown:
            raise InputError(f"spike counts name unknown populations {unknown}; "
                             f"known: {list(self.populations)}")
        return {n: (float(counts[n]) / p.size if n in counts else float(p.T))
                for n, p in self.populations.items()}


def _identity_box(shape: tuple[int, int, int]) -> Box:
    return tuple((d, np.arange(n, dtype=np.int64), np.arange(1, n + 1, dtype=np.int64))
                 for d, n in enumerate(shape))


def _box_synapses(box: Box, shape: tuple[int, int, int]) -> float:
    f = [np.ones(n, np.float64) for n in shape]
    for key, lo, hi in box:
        f[key] = f[key] * np.maximum(hi - lo, 0)
    return math.prod(float(x.sum()) for x in f)


def _weight_facts(graph: Graph, node: Node) -> tuple[float, int | None]:
    """(non-zero fraction of the synapses the op's boxes span, bits of its integer weights).

    A shift-invariant op's kernel density applies at every position; a matrix's non-zeros are
    counted against the boxes its rows span (so structure already in the boxes is not counted
    twice)."""
    w = node.params.get("weight_int")
    if w is None:
        w = node.params.get("weight")
        bits = None
    else:
        bits = mantissa_bits(w)
    if w is None or not w.size:
        return 1.0, bits
    nnz = float(np.count_nonzero(w))
    kind = kind_of(node)
    if kind.shift_invariant:
        return nnz / w.size, bits
    shape = dims3(node.shape)
    spanned = _box_synapses(kind.input_box(node, [graph[i].shape for i in node.inputs], 0,
                                           _identity_box(shape)), shape)
    return min(1.0, nnz / spanned) if spanned else 1.0, bits


def _node_delay(node: Node) -> int:
    values = [node.attrs.get("delay", 0)]
    if "delay" in node.params:
        values.append(np.max(node.params["delay"]))
    return int(max(np.max(v) for v in values))


def extract(graph: Graph, hop_steps: int = 1) -> Network:
    """The populations and edges of ``graph`` (converted or plain imported), and their windows:
    the graph's stored schedule when it was scheduled with ``hop_steps``, else the schedule's
    rule (:func:`mtdeploy.passes.schedule.windows`) applied to the populations found here."""
    if any(not n.shape for n in graph):
        graph = graph.copy()
        graph.infer_shapes()
    converted = bool(graph.meta.get("converted")) or any(kind_of(n).role == "timing" for n in graph)
    pops: dict[str, Population] = {}
    out = graph[graph.output]
    virtual_readout = kind_of(out).role == "linear"   # imported graph: the last linear op
    for node in [n for n in graph if is_population(n)] + ([out] if virtual_readout else []):
        source = kind_of(node).role == "source"
        if node.T is not None:
            T = int(node.T)
        elif source:
            T = 1
        else:
            # a spiking layer as the default conversion sets it; the readout: from producers below
            T = timesteps_of(node) if kind_of(node).role == "activation" else None
        pop = Population(node.name, node.label() if not (virtual_readout and node is out)
                         else f"{node.label()} [readout]", dims3(node.shape), T or 0, 0,
                         not source, node=node)
        pops[node.name] = pop
        if not source:
            roots = [(node, None)] if (virtual_readout and node is out) else \
                    [(graph[i], None) for i in node.inputs]
            for root, _ in roots:
                _walk(graph, pops, pop, root, _identity_box(pop.shape), _PathState(), converted)
    for pop in pops.values():
        if pop.on_chip and not pop.T:
            pop.T = max(pops[e.producer].T for e in pop.edges)
        for e in pop.edges:
            if not converted or not e.t_in:
                e.t_in = pops[e.producer].T
        node = pop.node
        pop.window = kind_of(node).window_length(node) if pop.on_chip and node.T else (pop.T or 1)
    net = Network(graph.name, pops, out.name, converted, dict(graph.meta))
    net.hop_steps = hop_steps
    stored = graph.meta.get("schedule", {}).get("hop_steps") == hop_steps and \
        all("window" in p.node.attrs for p in pops.values())
    net.windows = {n: tuple(p.node.attrs["window"]) for n, p in pops.items()} if stored else \
        windows(pops, lambda n: [(e.producer, e.aligned) for e in pops[n].edges],
                lambda n: pops[n].T, lambda n: pops[n].window, hop_steps)
    return net


@dataclass
class _PathState:
    aligned: bool = False
    t_in: int = 0
    shared: bool = True
    gain: float | None = 1.0
    weighted: tuple[str, ...] = ()
    density: float = 1.0
    weight_bits: int | None = None
    delay: int = 0


def _walk(graph: Graph, pops, pop: Population, node: Node, box: Box, st: _PathState,
          converted: bool) -> None:
    """Follow ``pop``'s tree from ``node`` (whose output box is ``box``) back to producers."""
    kind = kind_of(node)
    if is_population(node) and node.name != pop.name:
        _record(pops, pop, node.name, box, st, converted)
        return
    if kind.role == "timing":
        st = _PathState(**{**st.__dict__, "aligned": True, "t_in": int(node.attrs.get("t_in", 0))})
        _walk(graph, pops, pop, graph[node.inputs[0]], box, st, converted)
        return
    in_shapes = [graph[i].shape for i in node.inputs]
    density, bits = _weight_facts(graph, node) if kind.weighted else (1.0, None)
    gains = node.attrs.get("input_gain_int")
    for idx, src in enumerate(node.inputs):
        g = kind.int_gain(node, idx)
        gain = None if st.gain is None or g is None else st.gain * g * abs(gains[idx] if gains else 1)
        nxt = _PathState(st.aligned, st.t_in, st.shared and kind.shift_invariant, gain,
                         st.weighted + ((node.label(),) if kind.weighted else ()),
                         min(st.density, density),
                         max(filter(None, (st.weight_bits, bits)), default=None),
                         max(st.delay, _node_delay(node)))
        _walk(graph, pops, pop, graph[src], kind.input_box(node, in_shapes, idx, box), nxt, converted)


def _record(pops, pop: Population, producer: str, box: Box, st: _PathState, converted: bool) -> None:
    keys = tuple(k for k, _, _ in box)
    lo = tuple(np.asarray(l, np.int64) for _, l, _ in box)
    hi = tuple(np.asarray(h, np.int64) for _, _, h in box)
    aligned = st.aligned or not converted     # unconverted: the default avg-repeat aligns every edge
    for e in pop.edges:
        if e.producer == producer and e.keys == keys:   # a second path from the same producer
            e.lo = tuple(np.minimum(a, b) for a, b in zip(e.lo, lo))
            e.hi = tuple(np.maximum(a, b) for a, b in zip(e.hi, hi))
            e.aligned |= aligned
            e.shared &= st.shared
            e.gain = None if e.gain is None or st.gain is None else e.gain + st.gain
            e.weighted = sorted(set(e.weighted) | set(st.weighted))
            e.density = max(e.density, st.density)
            e.weight_bits = max(filter(None, (e.weight_bits, st.weight_bits)), default=None)
            e.delay = max(e.delay, st.delay)
            e._factors.clear()
            return
    pop.edges.append(Synapses(producer, keys, lo, hi, aligned, st.t_in, st.shared, st.density,
                          st.weight_bits, st.gain, list(st.weighted), st.delay))


# ---- per-tile costs ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Tiling:
    """Even blocks along each population dim: ``bounds[d]`` holds n_d + 1 increasing indices."""

    bounds: tuple[np.ndarray, np.ndarray, np.ndarray]
    counts: tuple[int, int, int] = field(init=False, compare=False)   # blocks per dim

    def __post_init__(self):
        object.__setattr__(self, "counts", tuple(len(b) - 1 for b in self.bounds))

    @classmethod
    def even(cls, shape, counts) -> "Tiling":
        return cls(tuple((np.arange(k + 1, dtype=np.int64) * n) // k for n, k in zip(shape, counts)))

    @property
    def n_tiles(self) -> int:
        return math.prod(self.counts)

    def boxes(self) -> tuple[np.ndarray, np.ndarray]:
        """(n_tiles, 3) lo and hi of each tile, C-order over (channel, row, column) blocks."""
        grids = np.meshgrid(*[np.arange(k) for k in self.counts], indexing="ij")
        lo = np.stack([self.bounds[d][g.ravel()] for d, g in enumerate(grids)], 1)
        hi = np.stack([self.bounds[d][g.ravel() + 1] for d, g in enumerate(grids)], 1)
        return lo, hi


def _along(values: np.ndarray, axis: int) -> np.ndarray:
    shape = [1, 1, 1]
    shape[axis] = len(values)
    return values.reshape(shape)


def receptive(edge: Synapses, tiling: Tiling) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per producer dim d: lo/hi of the producer box each consumer tile reads, as arrays over
    the blocks of consumer dim ``edge.keys[d]``."""
    rlo, rhi = [], []
    for d in range(3):
        starts = tiling.bounds[edge.keys[d]][:-1]
        rlo.append(np.minimum.reduceat(edge.lo[d], starts))
        rhi.append(np.maximum.reduceat(edge.hi[d], starts))
    return rlo, rhi


def receptive_boxes(edge: Synapses, tiling: Tiling) -> tuple[np.ndarray, np.ndarray]:
    """(n_tiles, 3) producer-space boxes read by each consumer tile (C-order tiles)."""
    rlo, rhi = receptive(edge, tiling)
    grids = np.meshgrid(*[np.arange(k) for k in tiling.counts], indexing="ij")
    lo = np.stack([rlo[d][grids[edge.keys[d]].ravel()] for d in range(3)], 1)
    hi = np.stack([rhi[d][grids[edge.keys[d]].ravel()] for d in range(3)], 1)
    return lo, np.maximum(hi, lo)


def _dim_overlap(bounds: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(n_blocks, n_boxes) overlap lengths of blocks [b_i, b_i+1) with boxes [lo_j, hi_j)."""
    a = np.maximum(bounds[:-1, None], lo[None, :])
    b = np.minimum(bounds[1:, None], hi[None, :])
    return np.maximum(b - a, 0).astype(np.float64)


def overlap(tiling: Tiling, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(n_tiles, n_boxes): producer neurons of each tile inside each box (C-order tiles)."""
    ov = [_dim_overlap(tiling.bounds[d], lo[:, d], hi[:, d]) for d in range(3)]
    return np.einsum("aj,bj,cj->abcj", *ov).reshape(tiling.n_tiles, len(lo))


def overlap_sparse(tiling: Tiling, lo: np.ndarray, hi: np.ndarray) -> sparse.csr_matrix:
    """:func:`overlap` as a sparse matrix built from the non-zero overlaps alone: a box meets
    few tiles, and the dense (tiles x boxes) array of an ImageNet layer held gigabytes."""
    n_boxes = len(lo)
    starts, counts, blocks, lengths = [], [], [], []
    for d in range(3):
        box, block = np.nonzero(_dim_overlap(tiling.bounds[d], lo[:, d], hi[:, d]).T)
        n = np.bincount(box, minlength=n_boxes)
        starts.append(np.cumsum(n) - n)
        counts.append(n)
        blocks.append(block)
        lengths.append(np.minimum(tiling.bounds[d][block + 1], hi[box, d])
                       - np.maximum(tiling.bounds[d][block], lo[box, d]))
    per_box = counts[0] * counts[1] * counts[2]
    box = np.repeat(np.arange(n_boxes), per_box)
    k = np.arange(len(box)) - np.repeat(np.cumsum(per_box) - per_box, per_box)
    idx = [None, None, None]
    for d in (2, 1, 0):            # C-order within a box: the last dim varies fastest
        n = counts[d][box]
        idx[d] = starts[d][box] + (k % n if d else k)
        k = k // n
    a, b, c = (blocks[d][idx[d]] for d in range(3))
    value = (lengths[0][idx[0]] * lengths[1][idx[1]] * lengths[2][idx[2]]).astype(np.float64)
    _, nb, nc = tiling.counts
    m = sparse.csr_matrix((value, ((a * nb + b) * nc + c, box)), shape=(tiling.n_tiles, n_boxes))
    m.sort_indices()               # the order csr_matrix(overlap(...)) has
    return m


def unique_boxes(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Distinct boxes (consumer tiles split by channel often read the same producer box):
    (lo, hi, multiplicity, index of each input box among the distinct ones)."""
    if not len(lo):
        return lo, hi, np.zeros(0), np.zeros(0, np.int64)
    rows, inverse, counts = np.unique(np.concatenate([lo, hi], 1), axis=0, return_inverse=True,
                                      return_counts=True)
    return rows[:, :3], rows[:, 3:], counts.astype(np.float64), inverse.ravel()


def fan_out(tiling: Tiling, lo: np.ndarray, hi: np.ndarray, weight: np.ndarray | None = None) -> np.ndarray:
    """(counts) grid: neuron x destination pairs of each tile towards boxes of consumer tiles
    (``weight``: how many consumer tiles read each box)."""
    if not len(lo):
        return np.zeros(tiling.counts)
    ov = [_dim_overlap(tiling.bounds[d], lo[:, d], hi[:, d]) for d in range(3)]
    w = np.ones(len(lo)) if weight is None else weight
    na, nb, nc = tiling.counts
    # sum_j ov0[a,j] ov1[b,j] ov2[c,j] w[j] as one matrix product (BLAS, not einsum's loops)
    rest = (ov[1][:, None, :] * ov[2][None, :, :]).reshape(nb * nc, -1)
    return ((ov[0] * w) @ rest.T).reshape(na, nb, nc)


@dataclass
class TileCost:
    """Per-tile costs as (counts) grids, plus which encoding each edge uses."""

    neurons: np.ndarray
    state_bits: np.ndarray
    synaptic_bits: np.ndarray
    fan_in: np.ndarray
    synapses: np.ndarray
    synops: np.ndarray
    encodings: list[str]
    reads: list[np.ndarray]      # per edge: producer neurons each tile reads (its fan-in share)
    edge_synapses: list[np.ndarray]   # per edge: synapses of each tile


def ann_synapses(net: Network) -> int:
    """Synapses of the network as the ANN has them: partial-sum stages hold the split edges'
    synapses, and their unit edges into the consumer are not the model's."""
    return sum(e.synapses(p.shape) for p in net.populations.values() for e in p.edges
               if net.populations[e.producer].stage_of is None)


def weight_bits(edge: Synapses, net: Network, profile) -> int:
    return edge.weight_bits or int(net.meta.get("weight_bits") or profile.max_weight_bits)


def tile_cost(pop: Population, tiling: Tiling, net: Network, profile,
              spikes: dict[str, float]) -> TileCost:
    """Costs of every tile of ``pop`` under ``tiling`` (vectorised over tiles; the partitioner
    calls it thousands of times per network, so each grid is built by broadcasting once)."""
    counts = tiling.counts
    neurons, per_neuron = _tile_neurons(pop, tiling, profile)
    state = neurons * per_neuron
    syn_bits = fan_in = synapses = synops = np.zeros(counts)
    encodings, per_edge, per_edge_syn = [], [], []
    for edge in pop.edges:
        reads, syn, options, names = _edge_grids(pop, tiling, edge, neurons, net, profile)
        cheapest, tiles_per_option = _cheapest(options)
        syn_bits = syn_bits + cheapest
        encodings.append(names[int(np.argmax(tiles_per_option))])
        fan_in = fan_in + reads
        per_edge.append(reads)
        per_edge_syn.append(syn)
        synapses = synapses + syn
        synops = synops + syn * spikes[edge.producer]
    return TileCost(neurons, state, syn_bits, fan_in, synapses, synops, encodings, per_edge,
                    per_edge_syn)


def tile_fit(pop: Population, tiling: Tiling, net: Network,
             profile) -> tuple[list[float], list[np.ndarray]]:
    """What the partitioner's search asks of a tiling, as :func:`tile_cost` computes it but
    without the grids only the chosen tiling needs (its encodings, synapses, SynOps): the
    largest tile's neurons, state bits, synaptic bits and fan-in, and each edge's reads."""
    neurons, per_neuron = _tile_neurons(pop, tiling, profile)
    syn_bits = fan_in = np.zeros(tiling.counts)
    reads_per_edge = []
    for edge in pop.edges:
        reads, _, options, _ = _edge_grids(pop, tiling, edge, neurons, net, profile)
        cheapest = options[0]
        for option in options[1:]:
            cheapest = np.minimum(cheapest, option)
        syn_bits = syn_bits + cheapest
        fan_in = fan_in + reads
        reads_per_edge.append(reads)
    peak = float(neurons.max())
    # (a positive factor keeps the maximum where it is: max(n * c) == max(n) * c)
    return [peak, peak * per_neuron, float(syn_bits.max()), float(fan_in.max())], reads_per_edge


def _tile_neurons(pop: Population, tiling: Tiling, profile) -> tuple[np.ndarray, float]:
    """(neurons of each tile as a grid, state bits per neuron)."""
    sizes = [np.diff(b).astype(np.float64) for b in tiling.bounds]
    neurons = _along(sizes[0], 0) * _along(sizes[1], 1) * _along(sizes[2], 2)
    return neurons, profile.neuron_state_bits + pop.accumulators * profile.accumulator_bits


def _edge_grids(pop: Population, tiling: Tiling, edge: Synapses, neurons: np.ndarray, net: Network,
                profile) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], list[str]]:
    """One edge's (reads, synapses, synaptic bits of each encoding, the encodings' names) per
    tile."""
    counts = tiling.counts
    rlo, rhi = receptive(edge, tiling)
    reads = _grid([np.maximum(rhi[d] - rlo[d], 0).astype(np.float64) for d in range(3)],
                  edge.keys, counts)
    syn = _grid([np.add.reduceat(f, tiling.bounds[k][:-1])
                 for k, f in enumerate(edge.per_dim_factors(pop.shape))], (0, 1, 2), counts)
    wb = weight_bits(edge, net, profile)
    options = [neurons * reads * wb, syn * edge.density * (wb + profile.sparse_index_bits)]
    names = ["dense", "sparse"]
    if edge.shared and profile.shared_weights:
        size = np.diff(tiling.bounds[0]).astype(np.float64)
        options.append(np.broadcast_to(_along(size * (edge.max_fan_in(pop.shape) * wb), 0),
                                       counts))
        names.append("shared")
    return reads, syn, options, names


def _cheapest(options: list[np.ndarray]) -> tuple[np.ndarray, list[int]]:
    """(element-wise minimum of the grids, how many elements each option is the first
    minimum of): np.stack + argmin + min in two passes per option, without the stacked copy
    (the partitioner's most frequent cost)."""
    low, first = options[0], None
    for k, option in enumerate(options[1:], 1):
        better = option < low
        if first is None:
            first = better.astype(np.int8)
        first[better] = k
        low = np.where(better, option, low)
    if first is None:
        return low, [low.size]
    return low, [int(np.count_nonzero(first == k)) for k in range(len(options))]


def _grid(factors: list[np.ndarray], keys, counts) -> np.ndarray:
    """The (counts) grid of the product of ``factors[d]`` laid along axis ``keys[d]``."""
    out = _along(factors[0], keys[0]) * _along(factors[1], keys[1]) * _along(factors[2], keys[2])
    return out if out.shape == tuple(counts) else np.broadcast_to(out, counts).copy()


def single_neuron_cost(pop: Population, net: Network, profile) -> dict[str, float]:
    """What the cheapest possible tile, one neuron, needs: a layer whose neuron exceeds a core
    limit cannot be split to fit (the partitioner reports it and relaxes that limit)."""
    syn = 0.0
    fan_in = 0.0
    for edge in pop.edges:
        f = edge.max_fan_in(pop.shape)
        wb = weight_bits(edge, net, profile)
        options = [f * wb, f * edge.density * (wb + profile.sparse_index_bits)]
        if edge.shared and profile.shared_weights:
            options.append(f * wb)
        syn += min(options)
        fan_in += f
    return {"neurons": 1.0,
            "state_bits": float(profile.neuron_state_bits + pop.accumulators * profile.accumulator_bits),
            "synaptic_bits": syn, "fan_in": fan_in}


def limits(profile) -> np.ndarray:
    """Per-core capacity in the order of RESOURCES."""
    return np.array([profile.neurons_per_core, profile.state_memory_bytes * 8,
                     profile.synaptic_memory_bytes * 8, profile.fan_in_axons,
                     profile.fan_out_axons], dtype=np.float64)
