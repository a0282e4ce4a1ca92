"""Hardware profiles: load, validate and describe the YAML files in ``hw_profiles/``.

A profile is data, not code, so that a user can describe their own board: every figure is a
mapping ``{value: ..., source: <id in sources>}`` or ``{value: ..., assumption: true, note: why}``
(optionally ``proxy: <id>`` naming the public figure it borrows). ``extends: <bundled name>``
inherits everything and overrides only the keys given. ``SCHEMA`` below is the single list of
keys; the validator names the file and the dotted key in every error.
"""
from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mtdeploy.errors import InputError

PROFILE_DIR = Path(__file__).resolve().parents[2] / "hw_profiles"


# Inclusive upper bounds: far beyond any chip, yet small enough that no count, product or
# per-core loop of the budget model, partitioner or energy estimate overflows or runs away.
COUNT_MAX = 2 ** 24        # chips, cores, delays, hop steps
SIZE_MAX = 2 ** 40         # neurons, bytes and axons per core
BITS_MAX = 64              # register widths
FIGURE_MAX = 1e12          # pJ, ns, W
HOP_MAX = 1024             # steps per synapse hop: every window and period scales with it


@dataclass(frozen=True)
class Key:
    path: str          # dotted key in the YAML
    attr: str          # Profile attribute
    type: type         # int, float or bool
    minimum: float | None = 1   # inclusive lower bound (None: booleans)
    required: bool = True
    maximum: float | None = None   # inclusive upper bound (None: by type, see value_range)

    def value_range(self) -> tuple[float, float]:
        """[minimum, maximum]: bit widths up to BITS_MAX, counts up to COUNT_MAX, sizes up to
        SIZE_MAX, energies and times up to FIGURE_MAX."""
        if self.maximum is not None:
            return self.minimum, self.maximum
        if self.type is float:
            return self.minimum, FIGURE_MAX
        return self.minimum, BITS_MAX if self.attr.endswith("_bits") else SIZE_MAX


SCHEMA: tuple[Key, ...] = (
    Key("system.chips", "chips", int, maximum=COUNT_MAX),
    Key("system.max_power_w", "max_power_w", float, 0, required=False),
    Key("chip.cores", "cores_per_chip", int, maximum=COUNT_MAX),
    Key("chip.x86_cores", "x86_cores", int, 0, required=False, maximum=COUNT_MAX),
    Key("core.neurons", "neurons_per_core", int),
    Key("core.synaptic_memory_bytes", "synaptic_memory_bytes", int),
    Key("core.state_memory_bytes", "state_memory_bytes", int),
    Key("core.fan_in_axons", "fan_in_axons", int),
    Key("core.fan_out_axons", "fan_out_axons", int),
    Key("synapse.max_weight_bits", "max_weight_bits", int),
    Key("synapse.shared_weights", "shared_weights", bool, None),
    Key("synapse.sparse_index_bits", "sparse_index_bits", int),
    Key("synapse.max_delay", "max_delay", int, 0, maximum=COUNT_MAX),
    Key("neuron.state_bits", "state_bits", int),
    Key("neuron.neuron_state_bits", "neuron_state_bits", int),
    Key("neuron.accumulator_bits", "accumulator_bits", int),
    Key("neuron.graded_spike_bits", "graded_spike_bits", int, 0),
    Key("neuron.per_neuron_threshold", "per_neuron_threshold", bool, None, required=False),
    Key("energy.synop_pj", "synop_pj", float, 0),
    Key("energy.neuron_update_pj", "neuron_update_pj", float, 0),
    Key("energy.spike_message_pj", "spike_message_pj", float, 0),
    Key("energy.interchip_spike_pj", "interchip_spike_pj", float, 0),
    Key("timing.synop_ns", "synop_ns", float, 0),
    Key("timing.neuron_update_ns", "neuron_update_ns", float, 0),
    Key("timing.barrier_ns", "barrier_ns", float, 0),
    Key("timing.interchip_latency_ns", "interchip_latency_ns", float, 0),
    Key("timing.hop_steps", "hop_steps", int, 0, maximum=HOP_MAX),
)
_LEAF_KEYS = {"value", "source", "assumption", "note", "proxy"}
_LEAF_TYPES = {"source": str, "proxy": str, "assumption": bool, "note": str}
_TOP_KEYS = {"name", "title", "extends", "sources", "published"} | {k.path.split(".")[0] for k in SCHEMA}


@dataclass
class Profile:
    """One target: a number of identical chips, each of identical neuro-cores."""

    name: str
    title: str
    path: str
    chips: int
    cores_per_chip: int
    neurons_per_core: int
    synaptic_memory_bytes: int
    state_memory_bytes: int
    fan_in_axons: int
    fan_out_axons: int
    max_weight_bits: int
    shared_weights: bool
    sparse_index_bits: int
    max_delay: int
    state_bits: int
    neuron_state_bits: int
    accumulator_bits: int
    graded_spike_bits: int
    synop_pj: float
    neuron_update_pj: float
    spike_message_pj: float
    interchip_spike_pj: float
    synop_ns: float
    neuron_update_ns: float
    barrier_ns: float
    interchip_latency_ns: float
    hop_steps: int
    max_power_w: float | None = None
    x86_cores: int | None = None
    #: thresholds per neuron (per-channel weight scaling); False: one unit per layer
    per_neuron_threshold: bool = False
    sources: dict[str, str] = field(default_factory=dict)
    provenance: dict[str, dict[str, Any]] = field(default_factory=dict)   # dotted key -> leaf
    published: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def total_cores(self) -> int:
        return self.chips * self.cores_per_chip

    @property
    def total_neurons(self) -> int:
        return self.total_cores * self.neurons_per_core

    def core_limits(self) -> tuple:
        """Everything a per-core partition depends on (equal tuples: the same core layout)."""
        return (self.neurons_per_core, self.synaptic_memory_bytes, self.state_memory_bytes,
                self.fan_in_axons, self.fan_out_axons, self.shared_weights, self.sparse_index_bits,
                self.max_weight_bits, self.neuron_state_bits, self.accumulator_bits)

    def assumptions(self) -> list[str]:
        return sorted(k for k, leaf in self.provenance.items() if leaf.get("assumption"))

    def describe(self) -> str:
        """Human summary for ``mtdeploy targets``: size, per-core figures and where they come from."""
        lines = [f"{self.name}: {self.title}",
                 f"  {self.chips} chip(s) x {self.cores_per_chip} cores = {self.total_cores:,} cores, "
                 f"{self.total_neurons:,} neurons ({self.neurons_per_core:,}/core)",
                 f"  per core: {self.synaptic_memory_bytes // 1024} KiB synaptic memory, "
                 f"{self.fan_in_axons:,} fan-in / {self.fan_out_axons:,} fan-out axons; "
                 f"{self.max_weight_bits}-bit weights, {self.state_bits}-bit state, "
                 f"delays <= {self.max_delay}",
                 f"  profile: {self.path}"]
        assumed = self.assumptions()
        if assumed:
            lines.append(f"  assumptions ({len(assumed)}): {', '.join(assumed)}")
        lines.append("  sources:")
        lines += [f"    [{sid}] {' '.join(text.split())}" for sid, text in self.sources.items()]
        return "\n".join(lines)


def _bundled(name: str) -> Path | None:
    path = PROFILE_DIR / f"{name}.yaml"
    return path if path.is_file() else None


def bundled_names() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def _read(path: Path) -> dict:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"{path}: cannot read the profile ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text (UTF-8) file; a profile is YAML") from None
    except (yaml.YAMLError, RecursionError) as exc:
        raise InputError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(doc, dict):
        raise InputError(f"{path}: a profile is a YAML mapping, got {type(doc).__name__}")
    return doc


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and "value" not in value:
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _parent(path: Path, parent) -> Path:
    """The file ``extends: parent`` names: a bundled profile, or a YAML file beside ``path``.
    Nothing else: a profile must not make mtdeploy read files from elsewhere."""
    if isinstance(parent, str):
        bundled = _bundled(parent)
        if bundled is not None:
            return bundled
        sibling = path.parent / parent
        if Path(parent).name == parent and parent.endswith((".yaml", ".yml")) \
                and sibling.is_file():
            return sibling
    raise InputError(f"{path}: extends: {parent!r} is not a bundled profile "
                     f"(known: {', '.join(bundled_names())}) nor a .yaml file in the same folder")


def _resolve(path: Path, seen: tuple[str, ...] = ()) -> dict:
    doc = _read(path)
    parent = doc.get("extends")
    if parent is None:
        return doc
    parent_path = _parent(path, parent)
    if str(parent_path.resolve()) in seen:
        raise InputError(f"{path}: extends: circular chain "
                         f"{' -> '.join(Path(p).name for p in seen)} -> {parent}")
    base = _resolve(parent_path, seen + (str(parent_path.resolve()),))
    base.pop("name", None)
    base.pop("title", None)
    base.pop("published", None)     # headline totals belong to one system, never inherited
    return _merge(base, {k: v for k, v in doc.items() if k != "extends"})


def _check_leaf(where: str, dotted: str, leaf: Any, sources: dict) -> None:
    if not isinstance(leaf, dict) or "value" not in leaf:
        raise InputError(f"{where}: {dotted}: expected a mapping with 'value' and 'source' "
                         f"(or 'assumption: true' and 'note'), got {leaf!r}")
    unknown = set(leaf) - _LEAF_KEYS
    if unknown:
        raise InputError(f"{where}: {dotted}: unknown field(s) {sorted(map(str, unknown))}; "
                         f"allowed: {sorted(_LEAF_KEYS)}")
    for field_name, kind in _LEAF_TYPES.items():
        if field_name in leaf and not isinstance(leaf[field_name], kind):
            raise InputError(f"{where}: {dotted}: {field_name} must be "
                             f"{'true or false' if kind is bool else 'a string'}, "
                             f"got {leaf[field_name]!r}")
    if leaf.get("assumption"):
        if not str(leaf.get("note", "")).strip():
            raise InputError(f"{where}: {dotted}: an assumption needs a 'note' with its reasoning")
    elif "source" not in leaf:
        raise InputError(f"{where}: {dotted}: every figure needs a 'source' (an id from "
                         f"'sources') or 'assumption: true' with a 'note'")
    for ref in ("source", "proxy"):
        if ref in leaf and leaf[ref] not in sources:
            raise InputError(f"{where}: {dotted}: {ref} {leaf[ref]!r} is not listed under "
                             f"'sources' (known: {', '.join(sorted(sources)) or 'none'})")


def validate_profile(doc: dict, where: str) -> dict[str, Any]:
    """Check a resolved profile document; return ``{attr: value}``. Raises InputError naming
    ``where`` (the file) and the dotted key."""
    unknown = set(doc) - _TOP_KEYS
    if unknown:
        raise InputError(f"{where}: unknown top-level key(s) {sorted(map(str, unknown))}; "
                         f"allowed: {sorted(_TOP_KEYS)}")
    for key in ("name", "title"):
        if not isinstance(doc.get(key), str) or not doc[key].strip():
            raise InputError(f"{where}: {key}: a non-empty string is required")
    sources = doc.get("sources", {})
    if not isinstance(sources, dict) or not all(isinstance(v, str) for v in sources.values()):
        raise InputError(f"{where}: sources: expected a mapping id -> citation text")
    for section in {k.path.split(".")[0] for k in SCHEMA}:
        body = doc.get(section, {})
        if not isinstance(body, dict):
            raise InputError(f"{where}: {section}: expected a mapping")
        known = {k.path.split(".")[1] for k in SCHEMA if k.path.startswith(section + ".")}
        extra = set(body) - known
        if extra:
            raise InputError(f"{where}: {section}: unknown key(s) {sorted(map(str, extra))}; "
                             f"allowed: {sorted(known)}")
    values: dict[str, Any] = {}
    for key in SCHEMA:
        section, leaf_name = key.path.split(".")
        leaf = doc.get(section, {}).get(leaf_name)
        if leaf is None:
            if key.required:
                raise InputError(f"{where}: {key.path}: missing (required)")
            continue
        _check_leaf(where, key.path, leaf, sources)
        value = leaf["value"]
        if key.type is bool:
            if not isinstance(value, bool):
                raise InputError(f"{where}: {key.path}: expected true or false, got {value!r}")
        else:
            value = _number(where, key, value)
        values[key.attr] = value
    published = doc.get("published", {})
    if not isinstance(published, dict):
        raise InputError(f"{where}: published: expected a mapping")
    for name, leaf in published.items():
        _check_leaf(where, f"published.{name}", leaf, sources)
        figure = leaf["value"]
        if isinstance(figure, float) and not math.isfinite(figure):
            raise InputError(f"{where}: published.{name}: must be a finite number, got {figure}")
    return values


def _number(where: str, key: Key, value) -> int | float:
    """A figure's value as ``key.type``, finite and within ``key.value_range()``: a NaN or
    infinite energy would otherwise reach report.json, a huge count the partitioner."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value) and (key.type is float or float(value) == int(value))
    if not ok:
        raise InputError(f"{where}: {key.path}: expected "
                         f"{'an integer' if key.type is int else 'a finite number'}, got {value!r}")
    value = key.type(value)
    low, high = key.value_range()
    if value < low:
        raise InputError(f"{where}: {key.path}: must be >= {low:g}, got {value}")
    if value > high:
        raise InputError(f"{where}: {key.path}: must be <= {high:g}, got {value}")
    return value


def load_profile(name_or_path: str | os.PathLike | Profile) -> Profile:
    """A bundled profile by name (``loihi2``) or a YAML file by path."""
    if isinstance(name_or_path, Profile):
        return name_or_path
    text = str(name_or_path)
    path = _bundled(text) if os.sep not in text and not text.endswith((".yaml", ".yml")) else None
    if path is None:
        path = Path(text)
        if not path.is_file():
            raise InputError(f"--target {text!r}: no bundled profile of that name and no such file "
                             f"(bundled: {', '.join(bundled_names())})")
    doc = _resolve(path)
    values = validate_profile(doc, str(path))
    provenance = {k.path: doc[k.path.split(".")[0]][k.path.split(".")[1]]
                  for k in SCHEMA if k.attr in values}
    return Profile(name=doc["name"], title=doc["title"], path=str(path), sources=doc.get("sources", {}),
                   provenance=provenance, published=doc.get("published", {}), **values)


def list_profiles() -> list[Profile]:
    """Every bundled profile, smallest (fewest neurons) first."""
    return sorted((load_profile(n) for n in bundled_names()),
                  key=lambda p: (p.total_neurons, p.total_cores, p.name))


def describe(name_or_path: str | None = None) -> str:
    """Text for ``mtdeploy targets``: one profile, or all bundled ones."""
    profiles = [load_profile(name_or_path)] if name_or_path else list_profiles()
    return "\n\n".join(p.describe() for p in profiles)
