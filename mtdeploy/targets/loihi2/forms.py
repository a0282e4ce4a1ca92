"""An edge's projection tree in the forms the Loihi 2 backends store it: one convolution
kernel where the tree is local, else a matrix probed from the tree.

A path of sliding-window nodes (convolutions, pools) and shape-keeping element-wise nodes (the
branch of a residual add, with its gain) from an edge to its population is shift-invariant: it
is one convolution. Per axis, with extents ``e_j`` (dilated kernels), strides ``s_j`` and
paddings ``p_j`` along the path, its kernel extent is ``e_0 + sum_j (e_j - 1) prod_{i<j} s_i``,
its stride ``prod s_j`` and its padding ``p_0 + sum_j p_j prod_{i<j} s_i``. The backends use
the kernel where the edge's matrix would have billions of entries at ImageNet sizes: Lava as a
``Conv`` process, NetX as a conv layer, and the compile report counts the matrix's non-zeros
and weight digits from it (:meth:`ConvForm.tap_counts`) without building the matrix.

Each node's own kernel is its NetX conv form (its integer weights) or, for the others (pools,
adds), read from its integer forward by reverse-mode probes on a crop; the kernels compose by
transposed convolution, and the composition is checked against the reference's integer tree on
a crop whose size is congruent to the map's modulo the stride, so both borders of the crop
behave as the map's (zero padding inside the tree is where a composition can differ).
"""
from __future__ import annotations

import contextlib
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from mtdeploy.errors import InputError
from mtdeploy.ir.graph import Graph, Node
from mtdeploy.ir.kind import kind_of
from mtdeploy.ir.snn import is_alignment, tree_nodes
from mtdeploy.sim.reference import tree_int_forward
from mtdeploy.targets.loihi2.netx.kinds import synapse_fields

#: float64 elements a probe batch may hold in its largest tensor
PROBE_ELEMENTS = 2 ** 24

#: composed edge forms by (graph, population, edge) while :func:`reuse_forms` is active
_REUSE: ContextVar[dict | None] = ContextVar("mtdeploy_reuse_forms", default=None)


@contextlib.contextmanager
def reuse_forms():
    """Inside this block each edge's composed convolution is computed once per graph: compile
    describes the Lava processes and writes the NetX file from one graph that no longer
    changes, and both ask for the same forms (half of a CIFAR VGG-16's writing time). The
    caller promises not to change the graph inside the block."""
    token = _REUSE.set({})
    try:
        yield
    finally:
        _REUSE.reset(token)


@dataclass
class ConvForm:
    """One convolution equal to an edge's tree: weight (C_out, C_in // groups, Ky, Kx)."""

    weight: np.ndarray
    stride: tuple[int, int]
    padding: tuple[int, int]
    groups: int
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    dilation: tuple[int, int] = (1, 1)

    def tap_counts(self) -> np.ndarray:
        """(Ky, Kx): at how many output positions each kernel tap reads inside the map (taps
        on the zero padding are no synapse), so the matrix holds weight[., ., ky, kx] that
        many times per channel pair."""
        per_axis = []
        for ax in (0, 1):
            taps = _taps_inside(self.out_shape[1 + ax], self.weight.shape[2 + ax],
                                self.stride[ax], self.padding[ax], self.in_shape[1 + ax],
                                self.dilation[ax])
            per_axis.append(taps.sum(0))
        return np.outer(per_axis[0], per_axis[1])

    def values_and_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """The kernel's non-zero weights and how often each appears in the matrix."""
        counts = np.broadcast_to(self.tap_counts(), self.weight.shape)
        keep = (self.weight != 0) & (counts > 0)
        return self.weight[keep], counts[keep]

    def matrix(self) -> sp.csr_matrix:
        """The (out, in) matrix in CHW order, from index arithmetic (one step per kernel tap)."""
        c_out, c_in_g, ky, kx = self.weight.shape
        (_, h_out, w_out), (_, h_in, w_in) = self.out_shape, self.in_shape
        per_group = c_out // self.groups
        (sy, sx), (py, px), (dy, dx) = self.stride, self.padding, self.dilation
        ys = _taps_inside(h_out, ky, sy, py, h_in, dy)
        xs = _taps_inside(w_out, kx, sx, px, w_in, dx)
        rows, cols, vals = [], [], []
        for t in range(ky):
            oy = np.flatnonzero(ys[:, t])
            iy = oy * sy - py + t * dy
            for u in range(kx):
                ox = np.flatnonzero(xs[:, u])
                ix = ox * sx - px + u * dx
                co, ci = np.nonzero(self.weight[:, :, t, u])
                c = (co // per_group) * c_in_g + ci
                rows.append(((co[:, None, None] * h_out + oy[None, :, None]) * w_out
                             + ox[None, None, :]).ravel())
                cols.append(((c[:, None, None] * h_in + iy[None, :, None]) * w_in
                             + ix[None, None, :]).ravel())
                vals.append(np.repeat(self.weight[co, ci, t, u], len(oy) * len(ox)))
        n_out, n_in = int(np.prod(self.out_shape)), int(np.prod(self.in_shape))
        return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                             shape=(n_out, n_in))


def _taps_inside(n_out: int, k: int, s: int, p: int, n_in: int, d: int = 1) -> np.ndarray:
    """(n_out, k) bool: output position o's tap t reads input o*s - p + t*d inside [0, n_in)."""
    idx = np.arange(n_out)[:, None] * s - p + np.arange(k)[None, :] * d
    return (idx >= 0) & (idx < n_in)


def edge_path(graph: Graph, pop: Node, key: str) -> list[Node] | None:
    """The tree nodes from the edge ``key`` (align node or producer) to ``pop``, when the
    edge enters the tree at one node and follows a single path; None otherwise."""
    inside = {n.name: n for n in tree_nodes(graph, pop) if not is_alignment(n)}
    path, name = [], key
    while True:
        nxt = [n for n in inside.values() if name in n.inputs]
        if not nxt:
            return path if name in pop.inputs else None
        if len(nxt) != 1 or nxt[0].inputs.count(name) != 1:
            return None
        path.append(nxt[0])
        name = nxt[0].name


def path_geometry(graph: Graph, key: str, path: list[Node]) -> list[tuple[int, int, int]] | None:
    """Per spatial axis (kernel extent, stride, padding) of the path as one convolution, or
    None where a node is neither a sliding window nor shape-keeping on (C, H, W) maps."""
    geo = [(1, 1, 0), (1, 1, 0)]
    prev = graph[key]
    for node in path:
        if len(node.shape) != 3 or len(prev.shape) != 3:
            return None
        a = node.attrs
        if {"kernel", "stride", "padding"} <= set(a):
            d = a.get("dilation", [1, 1])
            own = [(d[ax] * (a["kernel"][ax] - 1) + 1, a["stride"][ax], a["padding"][ax])
                   for ax in (0, 1)]
        elif tuple(node.shape) == tuple(prev.shape):
            own = [(1, 1, 0), (1, 1, 0)]
        else:
            return None
        geo = [(k + (e - 1) * s, s * s_j, p + p_j * s)
               for (k, s, p), (e, s_j, p_j) in zip(geo, own)]
        prev = node
    return geo


def composed_conv(graph: Graph, pop: Node, key: str) -> ConvForm | None:
    """The edge ``key`` -> ``pop`` as one integer convolution, or None when its tree is not
    one (or the composition differs from the tree somewhere, borders included)."""
    memo = _REUSE.get()
    if memo is None:
        return _composed_conv(graph, pop, key)
    ident = (id(graph), pop.name, key)
    if ident not in memo:
        memo[ident] = (graph, _composed_conv(graph, pop, key))   # the graph kept: ids stay unique
    return memo[ident][1]


def _composed_conv(graph: Graph, pop: Node, key: str) -> ConvForm | None:
    path = edge_path(graph, pop, key)
    if not path or len(pop.shape) != 3:
        return None

    def tree(x: torch.Tensor) -> torch.Tensor:
        return tree_int_forward(graph, pop.name, {key: x})

    return _path_conv(graph, key, path, gain_on(pop, path[-1].name), tuple(pop.shape), tree)


def _path_conv(graph: Graph, key: str, path: list[Node], end_gain: int, out_shape,
               forward) -> ConvForm | None:
    """The nodes ``path`` from ``key`` (each input gain applied, then ``end_gain``) as one
    integer convolution onto ``out_shape``, or None when they are not one or it differs from
    ``forward`` (the same map, batch-first) on the checking crop."""
    if len(out_shape) != 3 or path_geometry(graph, key, path) is None:
        return None
    try:
        acc, prev = None, key
        for node in path:
            k = _node_kernel(graph, node, prev)
            acc = k.scaled(gain_on(node, prev)) if acc is None \
                else acc.then(k).scaled(gain_on(node, prev))
            prev = node.name
        form = _as_form(acc.scaled(end_gain), tuple(graph[key].shape), tuple(out_shape))
        return form if _form_matches(form, forward) else None
    except (InputError, RuntimeError, ValueError):   # a kind that cannot run on a crop
        return None


def conv_matches(graph: Graph, pop: Node, key: str, form: ConvForm) -> bool:
    """Whether ``form`` is the edge ``key`` -> ``pop``, borders included (see the module)."""
    try:
        return _form_matches(form, lambda x: tree_int_forward(graph, pop.name, {key: x}))
    except (InputError, RuntimeError, ValueError):
        return False


@dataclass
class _Kernel:
    """A convolution being composed: weight (C_out, C_in // groups, Ky, Kx), undilated."""

    weight: np.ndarray
    stride: tuple[int, int]
    padding: tuple[int, int]
    groups: int

    def scaled(self, gain: int) -> "_Kernel":
        if gain == 1:
            return self
        return _Kernel(self.weight * gain, self.stride, self.padding, self.groups)

    def then(self, nxt: "_Kernel") -> "_Kernel":
        """This convolution followed by ``nxt``: each tap of ``nxt`` adds this kernel, mixed
        by that tap's weights, ``stride`` apart."""
        a, b = _full_or_depthwise(self), _full_or_depthwise(nxt)
        depthwise_a, depthwise_b = a.groups > 1, b.groups > 1
        (sy, sx), (ky, kx) = a.stride, a.weight.shape[2:]
        size = [(k - 1) * s + e for k, s, e in zip(b.weight.shape[2:], a.stride, (ky, kx))]
        c_out = b.weight.shape[0]
        c_in = a.weight.shape[1] if depthwise_b or not depthwise_a else a.weight.shape[0]
        w = np.zeros((c_out, c_in, *size))
        for ty in range(b.weight.shape[2]):
            for tx in range(b.weight.shape[3]):
                tap = b.weight[:, :, ty, tx]
                if depthwise_b:
                    block = tap[:, :, None, None] * a.weight
                elif depthwise_a:
                    block = tap[:, :, None, None] * a.weight[None, :, 0]
                else:
                    block = np.einsum("om,mcyx->ocyx", tap, a.weight)
                w[:, :, ty * sy:ty * sy + ky, tx * sx:tx * sx + kx] += block
        groups = c_out if depthwise_a and depthwise_b else 1
        return _Kernel(w, tuple(s * t for s, t in zip(a.stride, b.stride)),
                       tuple(p + q * s for p, q, s in zip(a.padding, b.padding, a.stride)),
                       groups)


def _full_or_depthwise(k: _Kernel) -> _Kernel:
    """Grouped kernels other than depthwise, as full (block-diagonal) ones."""
    c_out, c_in_g = k.weight.shape[:2]
    if k.groups == 1 or (c_in_g == 1 and k.groups == c_out):
        return k
    per = c_out // k.groups
    full = np.zeros((c_out, c_in_g * k.groups, *k.weight.shape[2:]))
    for g in range(k.groups):
        full[g * per:(g + 1) * per, g * c_in_g:(g + 1) * c_in_g] = k.weight[g * per:(g + 1) * per]
    return _Kernel(full, k.stride, k.padding, 1)


def _node_kernel(graph: Graph, node: Node, prev: str) -> _Kernel:
    """``node`` on its input ``prev`` as a convolution: its NetX conv form, else read from its
    integer forward (other inputs zero)."""
    fields = synapse_fields(node)
    if fields is not None and fields["type"] == "conv":
        return _Kernel(_dilated(np.asarray(fields["weight"], np.float64), fields["dilation"]),
                       tuple(fields["stride"]), tuple(fields["padding"]), int(fields["groups"]))
    kind = kind_of(node)
    geo = path_geometry(graph, prev, [node])

    def forward(x: torch.Tensor) -> torch.Tensor:
        return kind.forward_int(node, *[x if i == prev else x.new_zeros(()).expand(x.shape)
                                        for i in node.inputs])

    weight = _read_kernel(forward, graph[prev].shape, node.shape, geo)
    if weight is None:
        raise ValueError(f"{node.label()}: no kernel")
    form = _as_form(_Kernel(weight, (geo[0][1], geo[1][1]), (geo[0][2], geo[1][2]), 1),
                    graph[prev].shape, node.shape)
    return _Kernel(form.weight, form.stride, form.padding, form.groups)


def _dilated(w: np.ndarray, dilation) -> np.ndarray:
    """A dilated kernel with its gaps as explicit zeros."""
    dy, dx = (int(d) for d in dilation)
    if dy == dx == 1:
        return w
    out = np.zeros((*w.shape[:2], dy * (w.shape[2] - 1) + 1, dx * (w.shape[3] - 1) + 1))
    out[:, :, ::dy, ::dx] = w
    return out


def _read_kernel(forward, in_shape, out_shape, geo) -> np.ndarray | None:
    """The kernel (C_out, C_in, Ky, Kx) of a shift-invariant map at one output: per output
    channel, the gradient of that output with respect to a corner crop holding its field (the
    map itself where no output's field lies inside it; taps off the map stay 0)."""
    crop, outs, taps = [], [], []
    for (k, s, p), n, n_out in zip(geo, in_shape[1:], out_shape[1:]):
        inside = _taps_inside(n_out, k, s, p, n).sum(1)
        o = int(np.argmax(inside))
        start = o * s - p
        crop.append(min(n, start + k) if inside[o] == k else n)
        outs.append(o)
        t = np.arange(k)
        keep = (start + t >= 0) & (start + t < crop[-1])
        taps.append((t[keep], start + t[keep]))
    c_in, c_out = in_shape[0], out_shape[0]
    weight = np.zeros((c_out, c_in, geo[0][0], geo[1][0]))
    chunk = max(1, PROBE_ELEMENTS // max(1, max(c_in, c_out) * crop[0] * crop[1] * 4))
    for c0 in range(0, c_out, chunk):
        chans = torch.arange(c0, min(c_out, c0 + chunk))
        with torch.enable_grad():
            x = torch.zeros((len(chans), c_in, *crop), dtype=torch.float64, requires_grad=True)
            y = forward(x)
            if y.dim() != 4 or outs[0] >= y.shape[2] or outs[1] >= y.shape[3]:
                return None
            (grad,) = torch.autograd.grad(y[torch.arange(len(chans)), chans, outs[0], outs[1]]
                                          .sum(), x, allow_unused=True)
        if grad is not None:
            g = grad.numpy()[:, :, taps[0][1]][:, :, :, taps[1][1]]
            weight[c0:c0 + len(chans), :, taps[0][0][:, None], taps[1][0][None, :]] = g
    return weight


def _as_form(k: _Kernel, in_shape, out_shape) -> ConvForm:
    """Integer where it is; depthwise (groups = C) where every channel reads only itself."""
    weight, groups = k.weight, k.groups
    if np.array_equal(weight, np.rint(weight)):
        weight = np.rint(weight).astype(np.int64)
    c_out, c_in = weight.shape[:2]
    if groups == 1 and c_out == c_in > 1:
        eye = np.eye(c_in, dtype=bool)[:, :, None, None]
        if not np.any(np.where(eye, 0, weight)):
            weight = weight[np.arange(c_in), np.arange(c_in)][:, None]
            groups = c_in
    return ConvForm(weight, tuple(k.stride), tuple(k.padding), groups, tuple(in_shape),
                    tuple(out_shape))


def _check_size(n: int, k: int, s: int) -> int:
    """A crop size congruent to ``n`` modulo the stride with room for both borders and an
    interior between them (the map itself when it is not much larger)."""
    room = 3 * k + 4 * s
    if n <= room:
        return n
    return n - ((n - room) // s) * s


def _form_matches(form: ConvForm, tree) -> bool:
    """The form equals the tree on a checking crop (random non-zero integers, so any differing
    weight shows), and its output on the whole map has the population's shape."""
    geo = [(form.dilation[ax] * (form.weight.shape[2 + ax] - 1) + 1, form.stride[ax],
            form.padding[ax]) for ax in (0, 1)]
    for ax in (0, 1):
        n, (k, s, p) = form.in_shape[1 + ax], geo[ax]
        if (n + 2 * p - k) // s + 1 != form.out_shape[1 + ax]:
            return False
    size = [_check_size(n, k, s) for n, (k, s, _) in zip(form.in_shape[1:], geo)]
    rng = np.random.default_rng(12345)
    shape = (2, form.in_shape[0], *size)
    x = torch.as_tensor(rng.integers(1, 1024, shape) * rng.choice([-1, 1], shape),
                        dtype=torch.float64)
    want = tree(x)
    got = F.conv2d(x, torch.as_tensor(form.weight, dtype=torch.float64), None, form.stride,
                   form.padding, form.dilation, form.groups)
    return want.shape == got.shape and bool(torch.equal(want, got))


def gain_on(node: Node, src: str) -> int:
    """The integer gain ``node`` applies to its input ``src`` (1 without gains)."""
    gains = node.attrs.get("input_gain_int")
    return int(gains[node.inputs.index(src)]) if gains else 1


# ---- a tree ending in a matrix node, row by row -------------------------------------------
#: kinds whose integer map is a matrix parameter (out, in), in CHW order of their input
MATRIX_PARAMS = {"linear": "weight_int"}
#: kinds that only re-lay a map out (CHW order kept), so the matrix after them is unchanged
LAYOUT_KINDS = frozenset({"flatten"})
#: a tail's pullback is composed as a kernel only when the matrix has this many times its
#: dense kernel's entries
KERNEL_SHARE = 16


@dataclass
class MatrixTail:
    """An edge whose path ends in a matrix node W followed by shape-keeping nodes: its integer
    matrix is ``gain * W @ P``, P the nodes before W (a pool, a flatten). Row r is W[r] pulled
    back through P, so nothing probes through W's weights (a VGG-16-224 classifier with its
    pool folded in: 411M entries, 96 s of probing). ``pullback`` is P as a sparse matrix (W's
    columns, the edge's inputs; CHW) where the nodes before W are one convolution then layout
    nodes, else None (rows then come from reverse mode through ``prefix``)."""

    weight: np.ndarray                  # W (out, mid), integer
    gain: int
    in_shape: tuple
    prefix: Callable[[torch.Tensor], torch.Tensor]     # batch-first, (N, *in_shape) -> (N, mid)
    pullback: sp.csr_matrix | None

    def rows(self, chunk_entries: int = 2 ** 24):
        """(first row, dense block of rows) in CHW order, blocks of about ``chunk_entries``."""
        n_in = int(np.prod(self.in_shape))
        step = max(1, chunk_entries // n_in)
        for r0 in range(0, len(self.weight), step):
            w = self.weight[r0:r0 + step]
            if self.pullback is not None:      # exact: integer products, no float copy of W
                yield r0, self.gain * np.asarray((self.pullback.T @ w.T).T)
                continue
            with torch.enable_grad():
                x = torch.zeros((len(w), *self.in_shape), dtype=torch.float64, requires_grad=True)
                (grad,) = torch.autograd.grad(
                    (self.prefix(x) * torch.as_tensor(w, dtype=torch.float64)).sum(), x)
            yield r0, (self.gain * grad.reshape(len(w), -1)).numpy()

    def values_and_counts(self, chunk_entries: int = 2 ** 22) -> tuple[np.ndarray, np.ndarray]:
        """The matrix's distinct non-zero values and how often each appears. Where every input
        feeds at most one column of W through P (a pool whose windows do not overlap), column
        j of the matrix is ``gain * p * W[:, i]`` for P's one entry p at (i, j), so this
        counts W's values (a quarter of the matrix for a 2x2 pool) instead of the matrix."""
        p = self.pullback
        if p is None or np.bincount(p.indices, minlength=p.shape[1]).max(initial=0) > 1:
            return merged_counts(value_counts(block[block != 0]) for _, block in self.rows())
        return merged_counts(self._scaled_weight_counts(chunk_entries))

    def _scaled_weight_counts(self, chunk_entries: int):
        p = self.pullback
        step = max(1, chunk_entries // max(1, self.weight.shape[1]))
        rows_of = np.repeat(np.arange(p.shape[0]), np.diff(p.indptr))
        for value in np.unique(p.data):
            # per column i of W: how many inputs reach it through an entry equal to `value`
            times = np.bincount(rows_of[p.data == value], minlength=p.shape[0])
            for n in np.unique(times[times > 0]):
                cols = np.flatnonzero(times == n)
                every = len(cols) == len(times)
                for r0 in range(0, len(self.weight), step):
                    w = self.weight[r0:r0 + step]
                    v, c = value_counts(w if every else w[:, cols])
                    yield v * (self.gain * value), c * n


def value_counts(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct values, their counts): a bincount where they are integers in a small range
    (weights are), which is linear where np.unique sorts."""
    values = np.asarray(values).ravel()
    if not values.size:
        return values, values.astype(np.int64)
    lo, hi = values.min(), values.max()
    integer = np.issubdtype(values.dtype, np.integer) or np.array_equal(values, np.rint(values))
    if not integer or hi - lo >= 2 ** 22:
        return np.unique(values, return_counts=True)
    counts = np.bincount((values - lo).astype(np.int64, copy=False))
    present = np.flatnonzero(counts)
    return present + lo, counts[present]


def merged_counts(tallies) -> tuple[np.ndarray, np.ndarray]:
    """(distinct non-zero values as float64, their total counts) over ``tallies``, an
    iterable of (values, counts) pairs (of a matrix streamed a block at a time)."""
    total: dict = {}
    for values, counts in tallies:
        for v, c in zip(np.asarray(values).tolist(), np.asarray(counts).tolist()):
            if v != 0:
                total[v] = total.get(v, 0) + int(c)
    return (np.fromiter(total.keys(), np.float64, len(total)),
            np.fromiter(total.values(), np.int64, len(total)))


def matrix_tail(graph: Graph, pop: Node, key: str) -> MatrixTail | None:
    """The edge as a :class:`MatrixTail` (checked against the tree on random integers), or
    None for other paths. Computed once per edge inside :func:`reuse_forms`."""
    memo = _REUSE.get()
    if memo is None:
        return _matrix_tail(graph, pop, key)
    ident = (id(graph), pop.name, key, "tail")
    if ident not in memo:
        memo[ident] = (graph, _matrix_tail(graph, pop, key))
    return memo[ident][1]


def _matrix_tail(graph: Graph, pop: Node, key: str) -> MatrixTail | None:
    path = edge_path(graph, pop, key)
    heads = [k for k, n in enumerate(path or []) if n.kind in MATRIX_PARAMS]
    if not heads or any(tuple(n.shape) != tuple(path[heads[-1]].shape)
                        for n in path[heads[-1]:]):
        return None
    m = heads[-1]
    w = np.asarray(path[m].params[MATRIX_PARAMS[path[m].kind]])
    gain, prev = 1, path[m].name
    for n in path[m + 1:] + [pop]:
        gain *= gain_on(n, prev)
        prev = n.name

    def run(x: torch.Tensor, nodes: list[Node]) -> torch.Tensor:   # with their input gains
        prev = key
        for n in nodes:
            x = kind_of(n).forward_int(n, x * gain_on(n, prev))
            prev = n.name
        return x

    into_w = gain_on(path[m], path[m - 1].name if m else key)

    def prefix(x: torch.Tensor) -> torch.Tensor:       # the nodes before W, and W's input gain
        return (run(x, path[:m]) * into_w).reshape(len(x), -1)

    x = torch.as_tensor(np.random.default_rng(12345).integers(-1023, 1024, (2, *graph[key].shape)),
                        dtype=torch.float64)
    want = tree_int_forward(graph, pop.name, {key: x}).reshape(2, -1)
    mid = prefix(x)
    if w.shape != (pop.size, mid.shape[1]) or not torch.equal(want, gain * _times_rows(mid, w)):
        return None
    pullback = _pullback(graph, key, path[:m], into_w, w.shape, run)
    return MatrixTail(w, gain, tuple(graph[key].shape), prefix, pullback)


def _times_rows(x: torch.Tensor, w: np.ndarray, chunk_entries: int = 2 ** 22) -> torch.Tensor:
    """``x @ w.T`` in float64, a block of w's rows at a time (no float64 copy of all of w)."""
    step = max(1, chunk_entries // max(1, w.shape[1]))
    return torch.cat([x @ torch.as_tensor(w[r0:r0 + step], dtype=torch.float64).T
                      for r0 in range(0, len(w), step)], 1)


def _pullback(graph: Graph, key: str, nodes: list[Node], into_w: int, w_shape,
              run) -> sp.csr_matrix | None:
    """The nodes before W (then W's input gain) as a sparse matrix (W's columns, inputs), CHW:
    one convolution, checked as :func:`composed_conv` is, followed by layout nodes only (their
    gains commute with the reshape); None otherwise, or where composing it costs about what
    pulling the rows back does."""
    spatial = len(nodes)
    while spatial and nodes[spatial - 1].kind in LAYOUT_KINDS:
        spatial -= 1
    if any(n.kind in LAYOUT_KINDS for n in nodes[:spatial]):
        return None
    gain, prev = into_w, nodes[spatial - 1].name if spatial else key
    for n in nodes[spatial:]:
        gain *= gain_on(n, prev)
        prev = n.name
    n_in = int(np.prod(graph[key].shape))
    if not spatial:
        return sp.identity(n_in, np.int64, "csr") * gain if n_in == w_shape[1] else None
    geo = path_geometry(graph, key, nodes[:spatial])
    # the kernel is composed dense, (C_out, C_in, Ky, Kx): far smaller than the matrix for
    # VGG-16-224's 2x2 pool (1M against 411M entries), not for a global pool over many
    # channels (ResNet-34-224's: 12.8M against 25.6M, whose rows are cheaper)
    if geo is None or KERNEL_SHARE * graph[key].shape[0] * nodes[spatial - 1].shape[0] \
            * geo[0][0] * geo[1][0] > w_shape[0] * n_in:
        return None
    form = _path_conv(graph, key, nodes[:spatial], gain, tuple(nodes[spatial - 1].shape),
                      lambda x: run(x, nodes[:spatial]) * gain)
    p = form.matrix() if form is not None else None
    return p if p is not None and p.shape == (w_shape[1], n_in) else None


# ---- any tree, as a matrix ---------------------------------------------------------------
def probed_matrix(tree, in_shape, n_out: int, widest: int = 0,
                  chunk_entries: int = 2 ** 22) -> sp.csr_matrix:
    """A linear ``tree`` (batch-first, (N, *in_shape) -> (N, ...n_out values)) as a matrix
    (out, in) in CHW order, from :func:`probed_blocks`."""
    rows, cols, vals = [], [], []
    for i, j, v in probed_blocks(tree, in_shape, n_out, widest, chunk_entries):
        rows.append(i)
        cols.append(j)
        vals.append(v)
    n_in = int(np.prod(in_shape))
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                         shape=(n_out, n_in))


def probed_blocks(tree, in_shape, n_out: int, widest: int = 0, chunk_entries: int = 2 ** 22):
    """The non-zeros (rows, cols, values) of a linear ``tree``'s matrix, a block at a time,
    probed in chunks whose largest tensor (``widest`` values per probe at least) holds about
    ``chunk_entries`` values: basis inputs through the tree (a column each) or, with fewer
    outputs than inputs, basis outputs back through it by reverse mode (a row each), so a
    pool -> linear readout of a large map costs one pass per class. A caller that needs only
    figures of the matrix (its values) never holds more than one block."""
    n_in = int(np.prod(in_shape))
    step = max(1, chunk_entries // max(widest, n_in, n_out))
    by_rows = n_out < n_in
    for c0 in range(0, n_out if by_rows else n_in, step):
        b = min(step, (n_out if by_rows else n_in) - c0)
        block = _rows(tree, in_shape, n_out, c0, b) if by_rows \
            else tree(_basis(b, n_in, c0, in_shape)).reshape(b, n_out)
        block = block.detach().numpy()
        i, j = np.nonzero(block)
        yield (i + c0, j, block[i, j]) if by_rows else (j, i + c0, block[i, j])


def _basis(b: int, n: int, c0: int, shape) -> torch.Tensor:
    """Unit vectors c0 .. c0 + b - 1 of an n-vector, as (b, *shape)."""
    basis = torch.zeros((b, n), dtype=torch.float64)
    basis[torch.arange(b), c0 + torch.arange(b)] = 1.0
    return basis.reshape(b, *shape)


def _rows(tree, in_shape, n_out: int, r0: int, b: int) -> torch.Tensor:
    """Rows r0 .. r0 + b - 1 of the tree's matrix: the gradient of each output with respect to
    the input (the tree is linear, so it is the same at every input)."""
    with torch.enable_grad():
        x = torch.zeros((b, *in_shape), dtype=torch.float64, requires_grad=True)
        y = tree(x).reshape(b, n_out)
        if not y.requires_grad:       # the edge reaches no output: an all-zero block
            return torch.zeros((b, int(np.prod(in_shape))), dtype=torch.float64)
        (grad,) = torch.autograd.grad((y * _basis(b, n_out, r0, (n_out,))).sum(), x)
    return grad.reshape(b, -1)
