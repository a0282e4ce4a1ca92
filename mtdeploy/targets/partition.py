"""Partition a network onto cores and chips.

Three steps:
1. *Split*: each population gets the fewest even tiles (channel x row x column blocks) whose
   every resource fits a core (resources.py). Populations are tiled consumers first, so a
   producer's fan-out (neuron x destination tile pairs) is known while it is split. A limit that
   even one neuron exceeds cannot be met by splitting: it is reported and relaxed for that layer.
2. *Pack*: first-fit of all tiles into cores in topological order, so small layers share cores.
3. *Place*: cores onto chips (each holds ``cores_per_chip``), minimising inter-chip spike
   messages. Strategies are pluggable (``STRATEGIES``): ``greedy`` fills chips in core order;
   ``fm`` refines that with Fiduccia-Mattheyses passes of moves and swaps on the core graph.

Traffic is counted as messages per sample: one per spike per (neuron, destination tile), with a
population's spikes per neuron measured (``spike_counts``) or bounded by T.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from scipy import sparse

from mtdeploy.errors import InputError
from mtdeploy.targets.resources import (RESOURCES, Network, TileCost, Tiling, fan_out, limits,
                                        overlap_sparse, receptive_boxes, single_neuron_cost,
                                        tile_cost, tile_fit, unique_boxes)

STRATEGIES: dict[str, Callable] = {}


def register_strategy(name: str):
    """Register ``fn(traffic, n_chips, cores_per_chip) -> chip per core`` under ``name``."""
    def deco(fn):
        if name in STRATEGIES:
            raise ValueError(f"partition strategy {name!r} registered twice")
        STRATEGIES[name] = fn
        return fn
    return deco


@dataclass
class LayerPlan:
    """How one population is split."""

    tiling: Tiling
    cost: TileCost
    fan_out: np.ndarray                  # per-tile grid
    relaxed: dict[str, tuple[float, float]] = field(default_factory=dict)  # rule -> (need, limit)
    first_tile: int = 0                  # index of its first tile in Placement.tile_core

    def usage(self) -> np.ndarray:
        """(n_tiles, len(RESOURCES)) in C-order."""
        c = self.cost
        return np.stack([c.neurons.ravel(), c.state_bits.ravel(), c.synaptic_bits.ravel(),
                         c.fan_in.ravel(), self.fan_out.ravel()], 1)


@dataclass
class Placement:
    strategy: str
    layers: dict[str, LayerPlan]
    tile_core: np.ndarray                # core of every tile (layers in topological order)
    core_usage: np.ndarray               # (n_cores, len(RESOURCES))
    core_chip: np.ndarray                # chip of every core
    traffic: sparse.csr_matrix           # (n_cores, n_cores) messages per sample, directed
    input_messages: float                # host -> chip messages per sample
    seconds: float = 0.0

    @property
    def n_cores(self) -> int:
        return len(self.core_usage)

    @property
    def n_chips(self) -> int:
        return int(self.core_chip.max()) + 1 if len(self.core_chip) else 0

    @property
    def total_messages(self) -> float:
        return float(self.traffic.sum())

    @property
    def inter_chip_messages(self) -> float:
        return interchip(self.traffic, self.core_chip)

    def tile_cores(self, name: str) -> np.ndarray:
        """Core of each tile of layer ``name`` (C-order tiles)."""
        lp = self.layers[name]
        return self.tile_core[lp.first_tile:lp.first_tile + lp.tiling.n_tiles]

    def layer_cores(self, name: str) -> np.ndarray:
        return np.unique(self.tile_cores(name))

    def to_json(self) -> dict:
        cores = []
        owners: dict[int, list[str]] = {}
        for name, lp in self.layers.items():
            for c in self.layer_cores(name):
                owners.setdefault(int(c), []).append(name)
        for c in range(self.n_cores):
            cores.append({"core": c, "chip": int(self.core_chip[c]), "layers": owners.get(c, []),
                          **{r: float(self.core_usage[c, k]) for k, r in enumerate(RESOURCES)}})
        return {"strategy": self.strategy, "cores": self.n_cores, "chips": self.n_chips,
                "messages_per_sample": self.total_messages,
                "inter_chip_messages_per_sample": self.inter_chip_messages,
                "input_messages_per_sample": self.input_messages,
                "layers": {n: {"tiling": list(lp.tiling.counts), "tiles": lp.tiling.n_tiles,
                               "cores": [int(c) for c in self.layer_cores(n)]}
                           for n, lp in self.layers.items()},
                "core_map": cores}


def interchip(traffic: sparse.spmatrix, chip: np.ndarray) -> float:
    t = traffic.tocoo()
    return float(t.data[chip[t.row] != chip[t.col]].sum())


# ---- 1. split -----------------------------------------------------------------------------------
def _counts(n: int) -> list[int]:
    """Block counts whose largest block sizes differ, ascending."""
    return sorted({-(-n // s) for s in range(1, n + 1)})


def _split(pop, net: Network, profile, spikes, out_boxes, lim: np.ndarray) -> LayerPlan:
    """The tiling of ``pop`` that fits a core and minimises its tiles plus the producer cores
    its fan-in implies: every producer neuron needs one fan-out axon per consumer tile that
    reads it, so a tiling that makes many tiles read each neuron (splitting channels of a
    dense-in-channel conv) forces the producer into more cores."""
    lim = lim.copy()
    relaxed: dict[str, tuple[float, float]] = {}
    need = single_neuron_cost(pop, net, profile)
    for k, r in enumerate(RESOURCES[:4]):
        if need[r] > lim[k]:
            relaxed[r] = (need[r], float(lim[k]))
            lim[k] = math.inf
    if out_boxes:
        lo_out, hi_out, mult, _ = unique_boxes(np.concatenate([b[0] for b in out_boxes]),
                                               np.concatenate([b[1] for b in out_boxes]))
    else:
        lo_out = hi_out = np.zeros((0, 3), np.int64)
        mult = np.zeros(0)
    if mult.sum() > lim[4]:
        per_neuron = fan_out(Tiling.even(pop.shape, pop.shape), lo_out, hi_out, mult).max()
        if per_neuron > lim[4]:
            relaxed["fan_out"] = (float(per_neuron), float(lim[4]))
            lim[4] = math.inf
    onchip = [net.populations[e.producer].on_chip for e in pop.edges]
    fo_lim = profile.fan_out_axons

    # (fits, score) per tiling tried: the costs themselves are dropped (hundreds of tilings
    # per layer, each a dozen grids) and only the chosen tiling's are computed again
    memo: dict[tuple, tuple[bool, float]] = {}

    def evaluate(counts):
        if counts in memo:
            return memo[counts]
        t = Tiling.even(pop.shape, counts)
        peaks, reads = tile_fit(pop, t, net, profile)
        ok = all(p <= m for p, m in zip(peaks, lim[:4]))
        if ok and len(lo_out) and peaks[0] * mult.sum() > lim[4]:
            ok = fan_out(t, lo_out, hi_out, mult).max() <= lim[4]
        score = t.n_tiles + sum(r.sum() for r, on in zip(reads, onchip) if on) / fo_lim
        memo[counts] = (ok, score)
        return memo[counts]

    cc, ch, cw = (_counts(n) for n in pop.shape)
    # neurons a tile may hold by the neuron and state limits alone: a bound needing no evaluation
    per_neuron = need["state_bits"]
    cap = min(lim[0], lim[1] / per_neuron)
    block = [np.array([-(-n // k) for k in c]) for n, c in zip(pop.shape, (cc, ch, cw))]
    best, best_score = None, math.inf
    for j, nw in enumerate(cw):
        if nw >= best_score:
            break
        for i, nh in enumerate(ch):
            if nh * nw >= best_score:
                break
            fitting = np.flatnonzero(block[0] * block[1][i] * block[2][j] <= cap)
            if not len(fitting) or cc[fitting[0]] * nh * nw >= best_score:
                continue
            if not evaluate((cc[-1], nh, nw))[0]:
                continue
            a, b = int(fitting[0]), len(cc) - 1
            while a < b:
                mid = (a + b) // 2
                if evaluate((cc[mid], nh, nw))[0]:
                    b = mid
                else:
                    a = mid + 1
            score = evaluate((cc[a], nh, nw))[1]
            if score < best_score:
                best, best_score = (cc[a], nh, nw), score
    if best is None:            # only reachable through rounding: fall back to one neuron per tile
        best = tuple(pop.shape)
    t = Tiling.even(pop.shape, best)
    return LayerPlan(t, tile_cost(pop, t, net, profile, spikes), fan_out(t, lo_out, hi_out, mult),
                     relaxed)


def split(net: Network, profile, spikes: dict[str, float]) -> dict[str, LayerPlan]:
    """Tile every on-chip population, consumers before producers (fan-out needs their tiles)."""
    lim = limits(profile)
    plans: dict[str, LayerPlan] = {}
    for pop in reversed([p for p in net.populations.values() if p.on_chip]):
        out_boxes = [receptive_boxes(e, plans[q.name].tiling) for q, e in net.consumers(pop.name)]
        plans[pop.name] = _split(pop, net, profile, spikes, out_boxes, lim)
    return {n: plans[n] for n in net.populations if n in plans}   # topological order


# ---- 2. pack ------------------------------------------------------------------------------------
def pack(plans: dict[str, LayerPlan], lim: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First-fit in topological order. Returns (core of each tile, core usage).

    The scan tests a tile's tightest resource on every open core first (one comparison per
    core), then the others only on the survivors.
    """
    usages = []
    for lp in plans.values():
        lp.first_tile = sum(len(u) for u in usages)
        usages.append(lp.usage())
    tiles = np.concatenate(usages) if usages else np.zeros((0, len(RESOURCES)))
    room = np.zeros((len(RESOURCES), max(len(tiles), 1)))     # remaining capacity per core
    n_cores = 0
    tile_core = np.empty(len(tiles), np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        order = np.argsort(-(tiles / lim), axis=1)
    for i, u in enumerate(tiles):
        r = order[i]
        cand = np.flatnonzero(room[r[0], :n_cores] >= u[r[0]])
        for k in r[1:]:
            if not len(cand):
                break
            cand = cand[room[k, cand] >= u[k]]
        if len(cand):
            core = int(cand[0])
        else:
            core = n_cores
            room[:, core] = lim
            n_cores += 1
        room[:, core] -= u
        tile_core[i] = core
    return tile_core, (lim[:, None] - room[:, :n_cores]).T


# ---- traffic --------------------------------------------------------------------------------------
def traffic(net: Network, plans: dict[str, LayerPlan], tile_core: np.ndarray, n_cores: int,
            spikes: dict[str, float]) -> tuple[sparse.csr_matrix, float]:
    """Core-to-core messages per sample, and host-to-chip input messages."""
    parts: list[sparse.coo_matrix] = []
    host = 0.0
    for q_name, q_plan in plans.items():
        q = net.populations[q_name]
        q_cores = tile_core[q_plan.first_tile:q_plan.first_tile + q_plan.tiling.n_tiles]
        for edge in q.edges:
            lo, hi = receptive_boxes(edge, q_plan.tiling)
            if edge.producer not in plans:            # the input, from the host
                host += float(np.prod(np.maximum(hi - lo, 0), axis=1).sum()) * spikes[edge.producer]
                continue
            ulo, uhi, _, inv = unique_boxes(lo, hi)
            p_plan = plans[edge.producer]
            p_cores = tile_core[p_plan.first_tile:p_plan.first_tile + p_plan.tiling.n_tiles]
            m = overlap_sparse(p_plan.tiling, ulo, uhi) * spikes[edge.producer]
            src = sparse.csr_matrix((np.ones(len(p_cores)), (p_cores, np.arange(len(p_cores)))),
                                    shape=(n_cores, len(p_cores)))
            dst = sparse.csr_matrix((np.ones(len(inv)), (inv, q_cores)), shape=(len(ulo), n_cores))
            parts.append((src @ m @ dst).tocoo())
    # one sum at the end: adding the parts one by one re-copies the growing matrix each time
    total = sparse.csr_matrix((np.concatenate([p.data for p in parts] + [np.zeros(0)]),
                               (np.concatenate([p.row for p in parts] + [np.zeros(0, np.int64)]),
                                np.concatenate([p.col for p in parts] + [np.zeros(0, np.int64)]))),
                              shape=(n_cores, n_cores))
    total.sum_duplicates()
    return total, host


# ---- 3. place ---------------------------------------------------------------------------------------
@register_strategy("greedy")
def place_greedy(traffic: sparse.csr_matrix, n_chips: int, cores_per_chip: int) -> np.ndarray:
    """Fill chips in core (topological) order."""
    return np.arange(traffic.shape[0]) // cores_per_chip


class _FMState:
    """A placement under refinement: each core's chip, the traffic of each core to each chip
    (``conn``), and each core's best single move (``best_chip``/``best_gain``), kept current
    around every moved core."""

    def __init__(self, traffic: sparse.csr_matrix, part: np.ndarray, n_chips: int):
        n = len(part)
        self.part = part
        both = (traffic + traffic.T).tocoo()
        off = both.row != both.col        # (setdiag(0) on a large csr is far slower)
        self.adj = sparse.csr_matrix((both.data[off], (both.row[off], both.col[off])),
                                     shape=both.shape)
        self.adj.eliminate_zeros()
        self.size = np.bincount(part, minlength=n_chips)
        self.conn = np.asarray((self.adj @ sparse.csr_matrix(
            (np.ones(n), (np.arange(n), part)), shape=(n, n_chips))).todense())
        self.best_gain = np.empty(n)
        self.best_chip = np.empty(n, np.int64)
        self.refresh(np.arange(n))

    def refresh(self, idx: np.ndarray) -> None:
        g = self.conn[idx] - self.conn[idx, self.part[idx]][:, None]
        g[np.arange(len(idx)), self.part[idx]] = -np.inf
        self.best_chip[idx] = g.argmax(1)
        self.best_gain[idx] = g[np.arange(len(idx)), self.best_chip[idx]]

    def move(self, i: int, b: int) -> None:
        a = self.part[i]
        row = slice(self.adj.indptr[i], self.adj.indptr[i + 1])
        idx, w = self.adj.indices[row], self.adj.data[row]
        self.conn[idx, a] -= w
        self.conn[idx, b] += w
        self.size[a] -= 1
        self.size[b] += 1
        self.part[i] = b
        self.refresh(np.append(idx, i))

    def weight(self, i: int, js: np.ndarray) -> np.ndarray:
        row = slice(self.adj.indptr[i], self.adj.indptr[i + 1])
        lookup = dict(zip(self.adj.indices[row].tolist(), self.adj.data[row].tolist()))
        return np.array([lookup.get(int(j), 0.0) for j in js])

    def best_step(self, locked: np.ndarray, cores_per_chip: int, candidates: int):
        """(gain, moves) of the best move into a chip with a free slot or swap between chips
        among unlocked cores; moves is None when nothing can move."""
        part, conn, n = self.part, self.conn, len(self.part)
        best = (-np.inf, None)
        free = np.flatnonzero(self.size < cores_per_chip)
        open_ = np.flatnonzero(~locked)
        if len(free):
            g = conn[np.ix_(open_, free)] - conn[open_, part[open_]][:, None]
            g[part[open_][:, None] == free[None, :]] = -np.inf
            k = np.unravel_index(np.argmax(g), g.shape)
            if np.isfinite(g[k]):
                best = (g[k], ((open_[k[0]], free[k[1]]),))
        gains = np.where(locked, -np.inf, self.best_gain)
        for i in np.argpartition(gains, -min(candidates, n))[-min(candidates, n):]:
            if not np.isfinite(gains[i]):
                continue
            a, b = part[i], self.best_chip[i]
            mates = np.flatnonzero((part == b) & ~locked)
            if not len(mates):
                continue
            g2 = gains[i] + conn[mates, a] - conn[mates, b] - 2 * self.weight(i, mates)
            k = int(np.argmax(g2))
            if g2[k] > best[0]:
                best = (g2[k], ((i, b), (mates[k], a)))
        return best

    def fm_pass(self, cores_per_chip: int, patience: int, candidates: int, max_steps: int) -> float:
        """One Fiduccia-Mattheyses pass; keeps its best prefix and returns that prefix's gain."""
        locked = np.zeros(len(self.part), bool)
        history: list[tuple[int, int]] = []      # (core, chip it came from)
        total, best_total, best_len, since_best = 0.0, 0.0, 0, 0
        while not locked.all() and since_best < patience and len(history) < 2 * max_steps:
            gain, moves = self.best_step(locked, cores_per_chip, candidates)
            if moves is None:
                break
            for i, b in moves:
                history.append((int(i), int(self.part[i])))
                self.move(int(i), int(b))
                locked[i] = True
            total += gain
            if total > best_total + 1e-9:
                best_total, best_len, since_best = total, len(history), 0
            else:
                since_best += 1
        for i, a in reversed(history[best_len:]):
            self.move(i, a)
        return best_total


@register_strategy("fm")
def place_fm(traffic: sparse.csr_matrix, n_chips: int, cores_per_chip: int,
             max_passes: int = 10, patience: int = 200, candidates: int = 8,
             max_steps: int = 3000, max_work: float = 1e7,
             max_links: int = 10 ** 7) -> np.ndarray:
    """Greedy placement refined by Fiduccia-Mattheyses passes.

    A pass repeatedly applies the best move (into a chip with a free slot) or swap (the core of
    highest gain with its best partner on the target chip) among unlocked cores, even at a loss,
    locks what moved, and keeps the best prefix of the pass: it climbs out of local minima that
    pure descent cannot. Gains are kept per core and updated only around moved cores; a pass
    stops after ``patience`` steps without a new best or ``max_steps`` steps. A step costs a
    few passes over the cores, so all passes together take at most ``max_work / cores`` steps:
    an ImageNet VGG-16's 30,000 cores get a bounded refinement, not minutes of it. A core
    graph of more than ``max_links`` links keeps the greedy placement (the refinement's state
    would hold it twice over).
    """
    part = place_greedy(traffic, n_chips, cores_per_chip).copy()
    if n_chips <= 1 or len(part) < 2 or traffic.nnz > max_links:
        return part
    state = _FMState(traffic, part, n_chips)
    budget = max(1, int(max_work // len(part)))
    for _ in range(max_passes):
        steps = min(max_steps, budget // 2)
        if steps < 1 or state.fm_pass(cores_per_chip, patience, candidates, steps) <= 1e-9:
            break
        budget -= 2 * steps
    return state.part


# ---- all together -------------------------------------------------------------------------------------
def partition(net: Network, profile, strategy: str = "fm", spike_counts=None,
              _split_cache: dict | None = None) -> Placement:
    """Split, pack and place ``net`` on ``profile``.

    ``_split_cache`` (keyed by ``profile.core_limits()``) lets one check reuse the split and
    packing for profiles that share a core layout (Loihi 2 systems differ only in chip count).
    """
    if strategy not in STRATEGIES:
        raise InputError(f"unknown partition strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
    start = time.perf_counter()
    spikes = net.spikes_per_neuron(spike_counts)
    key = (profile.core_limits(), tuple(sorted((spike_counts or {}).items())))
    if _split_cache is not None and key in _split_cache:
        plans, tile_core, core_usage, t, host = _split_cache[key]
    else:
        plans = split(net, profile, spikes)
        tile_core, core_usage = pack(plans, limits(profile))
        t, host = traffic(net, plans, tile_core, len(core_usage), spikes)
        if _split_cache is not None:
            _split_cache[key] = (plans, tile_core, core_usage, t, host)
    n_chips = max(1, -(-len(core_usage) // profile.cores_per_chip))
    chip = np.asarray(STRATEGIES[strategy](t, n_chips, profile.cores_per_chip), np.int64)
    return Placement(strategy, plans, tile_core, core_usage, chip, t, host,
                     time.perf_counter() - start)
