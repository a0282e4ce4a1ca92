"""The NetX validator: each rule of the stock loader fires on a file that breaks it, names the
layer, and the checker never raises (no Lava needed)."""
import copy

import numpy as np
import pytest

from mtdeploy.findings import Finding, errors
from mtdeploy.targets.loihi2.netx.schema import stock_dense_weights, validate_netx_layers


def cuba(vth=100, i_decay=4096, v_decay=0):
    return {"type": "CUBA", "iDecay": np.int64(i_decay), "vDecay": np.int64(v_decay),
            "vThMant": np.int64(vth)}


def good_layers():
    """input (1,6,6) -> conv 3x3 p1 -> conv 3x3 s2 -> flatten -> dense -> dense readout."""
    rng = np.random.default_rng(0)
    return [
        {"type": "input", "shape": np.array([1, 6, 6])},
        {"type": "conv", "shape": np.array([2, 6, 6]), "weight": rng.integers(-127, 128, (2, 1, 3, 3)),
         "stride": np.array([1, 1]), "padding": np.array([1, 1]), "dilation": np.array([1, 1]),
         "groups": np.int64(1), "bias": np.array([3, -4]), "neuron": cuba()},
        {"type": "conv", "shape": np.array([4, 3, 3]), "weight": rng.integers(-127, 128, (4, 2, 3, 3)),
         "stride": np.int64(2), "padding": np.array([1, 1]), "dilation": np.array([1, 1]),
         "groups": np.int64(1), "neuron": cuba()},
        {"type": "flatten", "shape": np.array([36, 1, 1])},
        {"type": "dense", "shape": np.array([5]), "weight": rng.integers(-127, 128, (5, 36)),
         "bias": np.arange(5), "neuron": cuba()},
        {"type": "dense", "shape": np.array([3]), "weight": rng.integers(-127, 128, (3, 5)),
         "neuron": cuba(vth=2 ** 17 - 1)},
    ]


def test_a_well_formed_network_has_no_errors():
    assert errors(validate_netx_layers(good_layers(), input_message_bits=8)) == []


def _break(index, change):
    layers = copy.deepcopy(good_layers())
    change(layers[index])
    return layers


BREAKS = [
    # (layer, mutation, finding kind, words in the message)
    (2, lambda l: l.update(type="pool"), "structure", "NotImplementedError"),
    (2, lambda l: l.update(type="average"), "structure", "NotImplementedError"),
    (4, lambda l: l.update(type="linear"), "structure", "skips it silently"),
    (4, lambda l: l.update(type=np.array([5])), "structure", "ASCII string"),
    (4, lambda l: l.pop("shape"), "structure", "'shape' is missing"),
    (4, lambda l: l.update(weight=l["weight"][:, :30]), "structure", "reads 30 inputs"),
    (4, lambda l: l.update(weight=l["weight"][:4]), "structure", "does not match 5 output neurons"),
    (4, lambda l: l.update(weight=l["weight"] + 0.5), "range", "truncates"),
    (4, lambda l: l.update(weight=np.zeros((5, 36))), "structure", "all-zero"),
    (4, lambda l: l.update(weight=np.full((5, 36), 300)), "range", "negative shift"),
    (4, lambda l: l.update(bias=np.full(5, 5000)), "range", "13-bit"),
    (4, lambda l: l.update(bias=np.arange(7)), "structure", "does not fit"),
    (4, lambda l: l.update(delay=np.full(5, 70)), "range", "clamps"),
    (4, lambda l: l.update(neuron=cuba(vth=2 ** 17)), "range", "17-bit"),
    (4, lambda l: l.update(neuron=cuba(i_decay=5000)), "range", "current decay"),
    (4, lambda l: l.update(neuron=cuba(v_decay=-1)), "range", "voltage decay"),
    (4, lambda l: l.update(neuron={**cuba(), "type": "IZH"}), "structure", "unknown to netx"),
    (4, lambda l: l["neuron"].pop("vThMant"), "structure", "'vThMant' is missing"),
    (4, lambda l: l["neuron"].update(vThMant=np.array([1, 2])), "structure", "one integer"),
    (1, lambda l: l.pop("groups"), "structure", "'groups' is missing"),
    (1, lambda l: l.update(stride=np.array([1, 1, 1])), "structure", "(y, x) pair"),
    (1, lambda l: l.update(shape=np.array([2, 5, 5])), "structure", "differs from the conv's output"),
    (1, lambda l: l.update(weight=l["weight"] * 3), "range", "8-bit mantissa"),
    (1, lambda l: l.update(bias=np.zeros((6, 6, 3))), "structure", "per channel"),
    (1, lambda l: l.pop("neuron"), "structure", "needs a 'neuron'"),
    (2, lambda l: l.update(weight=l["weight"][:, :1]), "structure", "input channels"),
    (3, lambda l: l.update(type="dense", weight=np.ones((36, 36)), neuron=cuba()),
     "structure", "needs a 'flatten'"),
    (5, lambda l: l.update(type="flatten"), "structure", "non-conv block"),
]


@pytest.mark.parametrize("index,change,kind,words", BREAKS)
def test_each_rule_fires_and_names_the_layer(index, change, kind, words):
    findings = validate_netx_layers(_break(index, change), names=["in", "c1", "c2", "fl", "d1", "out"])
    hits = [f for f in findings if words in f.message]
    assert hits, [str(f) for f in findings]
    assert hits[0].rule == kind and hits[0].severity == "error"
    assert hits[0].node.startswith(f"layer {index} ")


def test_conv_first_without_input_layer_and_empty_networks():
    layers = good_layers()[1:]
    assert any("needs an 'input' layer" in f.message for f in validate_netx_layers(layers))
    assert any("no layers" in f.message for f in validate_netx_layers([]))
    only_input = validate_netx_layers(good_layers()[:1])
    assert any("no dense or conv layer" in f.message for f in only_input)


def test_warnings_do_not_count_as_errors():
    layers = good_layers()
    layers[4].pop("neuron")                          # netx's default accumulator (du = -1)
    layers[5]["neuron"] = cuba(v_decay=4096)        # dv = 4096: Python-model-only
    findings = validate_netx_layers(layers, input_message_bits=8)
    assert errors(findings) == []
    warned = [f.message for f in findings if f.severity == "warning"]
    assert any("non-spiking accumulator" in m for m in warned)
    assert any("13-bit dv" in m for m in warned)


def test_worst_case_current_is_a_warning():
    layers = good_layers()
    layers[1]["weight"] = np.full((2, 1, 3, 3), 250)
    findings = validate_netx_layers(layers, input_message_bits=16)
    assert any(f.rule == "risk" and "24-bit current" in f.message for f in findings)
    assert not any("24-bit current" in f.message
                   for f in validate_netx_layers(good_layers(), input_message_bits=8))


def test_checker_never_raises_on_garbage():
    rng = np.random.default_rng(0)
    garbage = [None, 3, "x", b"dense", np.array(["a"]), {}, {"nested": {"x": 1}}, np.zeros((2, 2)),
               np.array([-1, 0]), {"type": "CUBA"}]
    for _ in range(300):
        layers = copy.deepcopy(good_layers())
        for _ in range(int(rng.integers(1, 4))):
            layer = layers[int(rng.integers(len(layers)))]
            key = rng.choice(["type", "shape", "weight", "bias", "neuron", "stride", "groups",
                              "padding", "delay"])
            layer[key] = garbage[int(rng.integers(len(garbage)))]
        findings = validate_netx_layers(layers)
        assert all(isinstance(f, Finding) for f in findings)
    assert validate_netx_layers("not a list")[0].rule == "structure"
    assert validate_netx_layers([None, 5])[0].rule == "structure"


def test_stock_dense_weights_keep_int8_mixed_and_excitatory_matrices_exact():
    rng = np.random.default_rng(1)
    for _ in range(300):
        lo = int(rng.choice([-127, -50, -1, 0]))
        hi = int(rng.choice([127, 60, 1]))
        w = rng.integers(lo, hi + 1, (3, 7))
        if not w.any() or w.max() <= 0:
            continue
        assert np.array_equal(stock_dense_weights(w), w), (lo, hi)


def test_stock_dense_weights_report_what_netx_changes():
    # Odd weights beyond 127 lose their low bit in Lava's mixed-sign truncation.
    w = np.array([[255, -3], [7, 1]])
    eff = stock_dense_weights(w)
    assert not np.array_equal(eff, w) and eff[0, 0] == 254
    # A purely inhibitory matrix is shifted to -256, which Lava clips to -255 and truncates:
    # netx zeroes it.
    assert not stock_dense_weights(np.full((2, 3), -1)).any()
    with pytest.raises(ValueError, match="all-zero"):
        stock_dense_weights(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="negative shift"):
        stock_dense_weights(np.array([[300, 2]]))


def test_a_pool_block_is_one_finding_not_two():
    """slayer's Pool block makes netx raise; the conv after it must be checked against the
    pool's declared output shape, not get a second, spurious shape error."""
    layers = good_layers()
    pool = {"type": "pool", "shape": np.array([2, 3, 3]), "weight": np.ones((2, 1, 2, 2))}
    after = {"type": "conv", "shape": np.array([4, 3, 3]),
             "weight": np.random.default_rng(1).integers(-127, 128, (4, 2, 3, 3)),
             "stride": np.array([1, 1]), "padding": np.array([1, 1]), "dilation": np.array([1, 1]),
             "groups": np.int64(1), "neuron": cuba()}
    layers = layers[:2] + [pool, after] + layers[3:]
    found = errors(validate_netx_layers(layers, input_message_bits=8))
    assert [f.node for f in found] == ["layer 2 (pool)"], [str(f) for f in found]
