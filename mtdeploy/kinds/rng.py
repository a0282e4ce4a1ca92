"""Counter-based random numbers shared by every TPP implementation (reference and Lava).

A stateless hash (SplitMix64 finaliser) of (seed, population, sample, step, neuron) gives the
same 24-bit uniform number wherever and in whatever order it is asked for, so the reference
simulator and the Lava processes draw identical Bernoulli spikes without sharing state.
"""
from __future__ import annotations

import zlib

import numpy as np

UNIFORM_BITS = 24
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = z + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def population_key(name: str) -> int:
    """Stable integer id of a population (its name's CRC-32)."""
    return zlib.crc32(name.encode())


def uniform_int(seed: int, population: str, sample: np.ndarray | int, step: int,
                neuron: np.ndarray) -> np.ndarray:
    """24-bit integers, uniform on [0, 2^24); broadcasts ``sample`` against ``neuron``."""
    z = _mix(np.asarray(np.uint64(seed & 0xFFFFFFFFFFFFFFFF)))
    z = _mix(z ^ np.uint64(population_key(population)))
    z = _mix(z ^ np.asarray(sample, dtype=np.uint64))
    z = _mix(z ^ np.uint64(step))
    z = _mix(z ^ np.asarray(neuron, dtype=np.uint64))
    return (z >> np.uint64(64 - UNIFORM_BITS)).astype(np.int64)
