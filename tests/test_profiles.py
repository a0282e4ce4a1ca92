"""Hardware profiles: bundled files load and agree with their published totals; the validator
names the file and the key of every problem; user profiles can extend a bundled one."""
from __future__ import annotations

import textwrap

import pytest
import yaml

from mtdeploy.errors import InputError
from mtdeploy.targets.profiles import (PROFILE_DIR, SCHEMA, bundled_names, describe, list_profiles,
                                       load_profile)


def test_bundled_profiles_load_smallest_first():
    names = [p.name for p in list_profiles()]
    assert names == ["loihi1", "loihi2", "kapoho_point", "hala_point"]
    assert set(bundled_names()) == set(names)


def test_every_figure_is_sourced_or_a_reasoned_assumption():
    for p in list_profiles():
        assert set(p.provenance) >= {k.path for k in SCHEMA if k.required}
        for key, leaf in p.provenance.items():
            if leaf.get("assumption"):
                assert len(leaf["note"].split()) >= 5, (p.name, key)
            else:
                assert leaf["source"] in p.sources, (p.name, key)
            if "proxy" in leaf:
                assert leaf["proxy"] in p.sources


def test_loihi2_figures_and_proxies():
    p = load_profile("loihi2")
    assert (p.chips, p.cores_per_chip, p.neurons_per_core) == (1, 128, 8192)
    assert p.total_neurons == 2 ** 20                      # the brief's "up to 1M neurons"
    assert p.max_weight_bits == 8 and p.state_bits == 24 and p.max_delay == 62
    assert p.graded_spike_bits == 32
    # Loihi 2 per-op energies are unpublished: Loihi 1 (Davies 2018) is the labelled proxy
    for key in ("energy.synop_pj", "energy.neuron_update_pj", "core.fan_in_axons"):
        assert p.provenance[key]["assumption"] and p.provenance[key]["proxy"] == "davies2018"
    assert p.synop_pj == load_profile("loihi1").synop_pj == 23.6


def test_loihi1_published_core():
    p = load_profile("loihi1")
    assert (p.cores_per_chip, p.neurons_per_core, p.synaptic_memory_bytes,
            p.fan_in_axons, p.fan_out_axons) == (128, 1024, 128 * 1024, 4096, 4096)
    assert not p.provenance["core.fan_in_axons"].get("assumption")
    assert p.graded_spike_bits == 0


def test_systems_extend_loihi2_and_match_published_totals():
    base, kapoho, hala = (load_profile(n) for n in ("loihi2", "kapoho_point", "hala_point"))
    assert kapoho.chips == 8 and kapoho.core_limits() == base.core_limits()
    assert hala.chips == 1152 and hala.core_limits() == base.core_limits()
    assert hala.total_cores == hala.published["cores"]["value"] == 140_544
    assert abs(hala.total_neurons / hala.published["neurons"]["value"] - 1) < 0.005
    assert hala.max_power_w == 2600
    assert "hala_point_2024" in hala.sources and "loihi2_brief" in hala.sources
    assert "published" not in yaml.safe_load((PROFILE_DIR / "loihi2.yaml").read_text())


def test_describe_lists_size_and_sources():
    text = describe()
    for p in list_profiles():
        assert p.name in text
    assert "140,544 cores" in text and "Davies" in text and "Hala Point" in text
    one = describe("loihi1")
    assert one.startswith("loihi1:") and "kapoho" not in one


def _write(tmp_path, body: str, name="mine.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def test_user_profile_by_path_extending_a_bundled_one(tmp_path):
    path = _write(tmp_path, """
        name: lab_board
        title: two Loihi 2 chips, small cores
        extends: loihi2
        sources: {lab: "our lab's board notes, 2025"}
        system: {chips: {value: 2, source: lab}}
        core:
          neurons: {value: 1024, assumption: true, note: we reserve most of each core for other work}
        """)
    p = load_profile(str(path))
    assert (p.name, p.chips, p.neurons_per_core) == ("lab_board", 2, 1024)
    assert p.synaptic_memory_bytes == load_profile("loihi2").synaptic_memory_bytes   # inherited
    assert "loihi2_brief" in p.sources and "lab" in p.sources
    assert p.published == {}


@pytest.mark.parametrize("body, key, words", [
    ("core:\n  neurons: {value: -5, source: loihi2_brief}\n", "core.neurons", ">= 1"),
    ("core:\n  neurons: {value: 10.5, source: loihi2_brief}\n", "core.neurons", "integer"),
    ("synapse:\n  shared_weights: {value: 1, source: loihi2_brief}\n", "synapse.shared_weights", "true or false"),
    ("core:\n  neurons: {value: 10}\n", "core.neurons", "source"),
    ("core:\n  neurons: {value: 10, assumption: true}\n", "core.neurons", "note"),
    ("core:\n  neurons: {value: 10, source: nowhere}\n", "core.neurons", "nowhere"),
    ("core:\n  neurons: 10\n", "core.neurons", "mapping"),
    ("core:\n  neurones: {value: 10, source: loihi2_brief}\n", "core", "neurones"),
    ("energy:\n  synop_pj: {value: 1.0, source: loihi2_brief, sorce: x}\n", "energy.synop_pj", "sorce"),
    ("colour: blue\n", "colour", "unknown top-level"),
])
def test_validator_names_file_and_key(tmp_path, body, key, words):
    path = _write(tmp_path, "name: bad\ntitle: bad\nextends: loihi2\n" + body)
    with pytest.raises(InputError) as err:
        load_profile(str(path))
    msg = str(err.value)
    assert str(path) in msg and key in msg and words in msg


def test_missing_required_key_and_bad_extends(tmp_path):
    doc = yaml.safe_load((PROFILE_DIR / "loihi1.yaml").read_text())
    del doc["timing"]["barrier_ns"]
    path = tmp_path / "nobarrier.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(InputError, match=r"nobarrier\.yaml: timing\.barrier_ns: missing"):
        load_profile(str(path))
    path = _write(tmp_path, "name: x\ntitle: x\nextends: loihi9\n")
    with pytest.raises(InputError, match="loihi9.*not a bundled profile"):
        load_profile(str(path))


def test_unknown_target_and_unreadable_yaml(tmp_path):
    with pytest.raises(InputError, match="no bundled profile.*loihi2"):
        load_profile("loihi3")
    path = _write(tmp_path, "name: [unclosed\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_profile(str(path))
