"""Per-layer timestep search: budgets, determinism, Pareto fronts, the GraphModule view, and
the searched model's exactness on the reference simulator."""
import itertools
import json

import numpy as np
import pytest
import torch

from mtdeploy.errors import InputError
from mtdeploy.passes import convert
from mtdeploy.search import Budget, GraphModule, parse_budget, search
from mtdeploy.search.costs import FanoutModel, spike_counts
from mtdeploy.search.data import split_calibration
from mtdeploy.search.pareto import knapsack_front, non_dominated
from mtdeploy.sim.ann import ann_forward
from mtdeploy.sim.reference import simulate
from mtdeploy.testing import random_cnn, random_mlp, random_residual

BUILDERS = {"mlp": random_mlp, "cnn": random_cnn, "residual": random_residual}


def _task(seed=0, n=360, levels=(8, 8, 8)):
    """A random 3-QCFS-layer MLP and labels it can mostly (not perfectly) reproduce."""
    rng = np.random.default_rng(seed)
    graph = random_mlp(rng, n_in=12, hidden=(16, 12, 10), classes=4, levels=list(levels))
    x = rng.uniform(0, 1, (n, 12))
    teacher = ann_forward(graph, x).numpy() + rng.normal(0, 0.15, (n, 4))
    y = teacher.argmax(1)
    return graph, x[:240], y[:240], x[240:], y[240:]


def _run(budget, seed=0, **kw):
    graph, cx, cy, vx, vy = _task()
    kw.setdefault("finetune_epochs", 2)
    kw.setdefault("max_finetune", 16)
    return search(graph, cx, cy, vx, vy, budget=budget, seed=seed, progress=False, threads=1, **kw)


@pytest.fixture(scope="module")
def mean_t_result():
    return _run("mean-T=2")


# ---- budgets ----------------------------------------------------------------------------------
@pytest.mark.parametrize("text, metric, value", [
    ("mean-T=4", "mean_T", 4.0), ("sum-T=24", "sum_T", 24.0), ("synops=1.5e4", "synops", 15000.0),
    ("cores=12", "cores", 12.0), ("MEAN_T = 2.5", "mean_T", 2.5), ("max-T=8", "max_T", 8.0)])
def test_parse_budget(text, metric, value):
    assert parse_budget(text) == Budget(metric, value)


@pytest.mark.parametrize("text, message", [
    ("mean-T", "METRIC=VALUE"), ("latency=3", "unknown metric"), ("sum-T=abc", "not a number"),
    ("mean-T=-1", "positive"), ("sum-T=2.5", "whole number"), ("synops=inf", "positive")])
def test_bad_budget_strings_are_input_errors(text, message):
    with pytest.raises(InputError, match=message):
        parse_budget(text)


def test_no_budget_means_none():
    assert parse_budget(None) is None and parse_budget("  ") is None


@pytest.mark.parametrize("budget", ["mean-T=2", "sum-T=5", "synops=600", "max-T=2"])
def test_chosen_configuration_respects_the_budget(budget):
    result = _run(budget)
    b = parse_budget(budget)
    assert result.chosen.costs[b.metric] <= b.value
    fitting = [c for c in result.candidates if b.allows(c.costs)]
    assert result.chosen.val_acc == max(c.val_acc for c in fitting)
    # the graph handed back carries the chosen levels and thresholds
    qcfs = {n.name: n for n in result.graph.of_kind("qcfs")}
    assert {k: n.attrs["levels"] for k, n in qcfs.items()} == result.chosen.levels
    for name, th in result.chosen.thresholds.items():
        assert float(qcfs[name].params["threshold"]) == pytest.approx(th)


def test_a_budget_nothing_meets_says_what_the_cheapest_needs():
    with pytest.raises(InputError, match="no configuration fits the budget mean-T=0.5.*mean_T = 1"):
        _run("mean-T=0.5", finetune_epochs=0)
    with pytest.raises(InputError, match="no configuration fits the budget synops=1.*synops = "):
        _run("synops=1", finetune_epochs=0)


def test_cores_budget_uses_the_budget_checker():
    result = _run("cores=4", finetune_epochs=0)
    assert all(isinstance(c.costs["cores"], int) and c.costs["cores"] >= 1
               and c.fits_target is True for c in result.candidates)
    assert result.chosen.costs["cores"] <= 4


# ---- determinism and fronts -------------------------------------------------------------------
def test_same_seed_same_levels_thresholds_and_front(mean_t_result):
    again = _run("mean-T=2")
    assert again.chosen.levels == mean_t_result.chosen.levels
    assert again.chosen.thresholds == mean_t_result.chosen.thresholds
    assert json.dumps(again.to_json(), sort_keys=True) == \
        json.dumps(mean_t_result.to_json(), sort_keys=True)


@pytest.mark.parametrize("metric", ["mean_T", "sum_T", "synops", "energy_pj"])
def test_front_is_non_dominated_and_covers_every_candidate(mean_t_result, metric):
    cands = mean_t_result.candidates
    front = mean_t_result.front(metric)
    for f in front:
        assert not any(c.costs[metric] <= f.costs[metric] and c.val_acc >= f.val_acc
                       and (c.costs[metric] < f.costs[metric] or c.val_acc > f.val_acc)
                       for c in cands)
    # every candidate is matched or beaten by a front point no more expensive
    for c in cands:
        assert any(f.costs[metric] <= c.costs[metric] and f.val_acc >= c.val_acc for f in front)


def test_uniform_points_are_all_levels_and_fine_tuned_like_the_rest(mean_t_result):
    uniform = mean_t_result.uniform
    assert [c.costs["mean_T"] for c in uniform] == [1, 2, 4, 8, 16]
    for c in mean_t_result.candidates:
        # fine-tuning keeps the best calibration state seen, epoch 0 included
        assert c.calib_loss <= c.before_finetune["loss"] + 1e-6


def test_front_json_lists_points_fronts_and_sensitivity(mean_t_result):
    doc = json.loads(json.dumps(mean_t_result.to_json()))
    assert doc["budget"] == "mean-T=2"
    assert set(doc["fronts"]) >= {"mean_T", "sum_T", "synops", "energy_pj"}
    n = len(doc["points"])
    assert 0 <= doc["chosen"] < n
    assert all(0 <= i < n for f in doc["fronts"].values() for i in f["all"])
    assert all(doc["points"][i]["uniform"] for i in doc["fronts"]["mean_T"]["uniform"])
    assert set(doc["sensitivity"]) == set(doc["layers"])


def test_non_dominated_on_a_hand_example():
    costs = [1, 2, 2, 3, 4, 5]
    scores = [0.5, 0.7, 0.6, 0.7, 0.9, 0.8]
    assert non_dominated(costs, scores) == [0, 1, 4]


def test_knapsack_front_equals_brute_force():
    rng = np.random.default_rng(3)
    tables = [{c: (float(c), float(rng.uniform(0, 1) / c)) for c in (1, 2, 4, 8)} for _ in range(4)]
    front = knapsack_front(tables)
    brute = []
    for combo in itertools.product((1, 2, 4, 8), repeat=4):
        brute.append((sum(tables[k][c][0] for k, c in enumerate(combo)),
                      sum(tables[k][c][1] for k, c in enumerate(combo)), combo))
    keep = non_dominated([b[0] for b in brute], [-b[1] for b in brute])
    expected = [(brute[i][0], brute[i][1]) for i in keep]
    assert [(c, pytest.approx(l)) for c, l, _ in front] == [(c, pytest.approx(l)) for c, l in expected]
    for cost, loss, combo in front:
        assert sum(tables[k][c][1] for k, c in enumerate(combo)) == pytest.approx(loss)


# ---- GraphModule ------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", sorted(BUILDERS))
def test_graph_module_equals_ann_forward(arch):
    rng = np.random.default_rng(7)
    graph = BUILDERS[arch](rng)
    x = rng.uniform(0, 1, (40, *graph.input.shape))
    module = GraphModule(graph).double()
    with torch.no_grad():
        out = module(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(out, ann_forward(graph, x).numpy(), rtol=0, atol=1e-9)


def test_graph_module_writes_levels_thresholds_and_weights_back():
    graph = random_cnn(np.random.default_rng(2), levels=[4, 8])
    module = GraphModule(graph)
    acts = list(module.levels)
    module.set_levels({acts[0]: 2})
    module.set_thresholds({acts[1]: 0.75})
    conv = next(n.name for n in graph.of_kind("conv"))
    with torch.no_grad():
        next(m for m in module.modules() if isinstance(m, torch.nn.Conv2d)).weight.mul_(2)
    back = module.to_graph()
    assert [back[a].attrs["levels"] for a in acts] == [2, 8]
    assert float(back[acts[1]].params["threshold"]) == 0.75
    np.testing.assert_array_equal(back[conv].params["weight"], 2 * graph[conv].params["weight"])
    # the source graph is untouched, and a module rebuilt from the copy agrees with this one
    assert graph[acts[0]].attrs["levels"] == 4
    x = torch.rand(5, *graph.input.shape)
    with torch.no_grad():
        torch.testing.assert_close(GraphModule(back)(x), module(x))


def test_graph_module_rejects_a_converted_graph():
    with pytest.raises(InputError, match="pre-conversion"):
        GraphModule(convert(random_mlp(np.random.default_rng(0))))


@pytest.mark.parametrize("arch", sorted(BUILDERS))
def test_torchscript_reimports_with_the_same_levels_thresholds_weights(arch, tmp_path):
    frontends = pytest.importorskip("mtdeploy.frontends")
    rng = np.random.default_rng(11)
    graph = BUILDERS[arch](rng, levels=[2, 16, 4])
    module = GraphModule(graph)
    module.set_thresholds({name: 0.5 + k for k, name in enumerate(module.levels)})
    path = tmp_path / "m.pt"
    module.save_torchscript(path)
    back = frontends.load_model_graph(path, graph.input.shape)
    src = module.to_graph()
    assert [n.attrs["levels"] for n in back.of_kind("qcfs")] == \
        [n.attrs["levels"] for n in src.of_kind("qcfs")]
    assert [float(n.params["threshold"]) for n in back.of_kind("qcfs")] == \
        [float(n.params["threshold"]) for n in src.of_kind("qcfs")]
    for kind in ("conv", "linear"):
        for a, b in zip(back.of_kind(kind), src.of_kind(kind)):
            np.testing.assert_array_equal(a.params["weight"], b.params["weight"])
            np.testing.assert_array_equal(a.params["bias"], b.params["bias"])
    x = rng.uniform(0, 1, (20, *graph.input.shape))
    np.testing.assert_allclose(ann_forward(back, x).numpy(), ann_forward(src, x).numpy(), atol=1e-12)


# ---- the searched model on the reference simulator --------------------------------------------
def test_searched_model_reference_simulation_equals_its_ann(mean_t_result):
    graph = mean_t_result.graph
    x = np.random.default_rng(5).uniform(0, 1, (80, *graph.input.shape))
    ann = ann_forward(graph, x).numpy()
    sim = simulate(convert(graph), x, mode="float")
    np.testing.assert_allclose(sim.output, ann, rtol=0, atol=1e-9)
    assert [n.T for n in convert(graph).of_kind("qcfs")] == list(mean_t_result.chosen.levels.values())


@pytest.mark.lava
def test_searched_model_compiles_and_lava_equals_the_reference_fixed_point(mean_t_result, tmp_path):
    """The chosen model, through its TorchScript file and `compile`, runs on Lava's CPU
    simulator bit-exactly like the reference simulator's fixed point."""
    pytest.importorskip("lava.magma")
    from mtdeploy.api import compile_model, load_build
    from mtdeploy.targets.loihi2.lava.network import run_lava

    model = tmp_path / "searched.pt"
    mean_t_result.module().save_torchscript(model)
    compile_model(model, out_dir=tmp_path / "build")
    snn = load_build(tmp_path / "build")
    assert [n.T for n in snn.of_kind("qcfs")] == list(mean_t_result.chosen.levels.values())
    x = np.random.default_rng(6).uniform(0, 1, (6, *snn.input.shape))
    assert np.array_equal(run_lava(snn, x, fixed_point=True),
                          simulate(snn, x, mode="fixed").output)


@pytest.mark.parametrize("arch", sorted(BUILDERS))
def test_synops_from_the_ann_equal_the_simulators_count(arch):
    rng = np.random.default_rng(9)
    graph = BUILDERS[arch](rng)
    x = rng.uniform(0, 1, (30, *graph.input.shape))
    module = GraphModule(graph).double()
    with torch.no_grad():
        _, acts = module.forward_with_activations(torch.as_tensor(x))
    estimate = FanoutModel(graph).synops(spike_counts(acts, module.levels, module.thresholds))
    assert estimate == pytest.approx(simulate(convert(graph), x).total_synops, rel=1e-12)
    assert estimate > 0


def test_candidate_synops_are_per_validation_sample(mean_t_result):
    graph, _, _, vx, _ = _task()
    chosen = mean_t_result.chosen
    sim = simulate(convert(mean_t_result.graph), vx)
    assert chosen.costs["synops"] == pytest.approx(sim.total_synops / len(vx), rel=1e-3)


# ---- data handling and the CLI ----------------------------------------------------------------
def test_split_is_stratified_and_seeded():
    y = np.repeat(np.arange(4), [10, 20, 5, 2])
    x = np.arange(len(y), dtype=float)[:, None]
    a = split_calibration(x, y, 0.3, seed=1)
    b = split_calibration(x, y, 0.3, seed=1)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    cx, cy, vx, vy = a
    assert sorted(np.concatenate([cx, vx]).ravel().tolist()) == list(range(len(y)))
    assert set(cy) == set(vy) == {0, 1, 2, 3}
    assert np.bincount(vy).tolist() == [3, 6, 2, 1]


def test_bad_data_is_an_input_error():
    graph, cx, cy, vx, vy = _task()
    with pytest.raises(InputError, match="the model takes"):
        search(graph, cx[:, :5], cy, vx, vy, progress=False)
    with pytest.raises(InputError, match="labels must lie in"):
        search(graph, cx, cy + 10, vx, vy, progress=False)


def _cli_model(tmp_path):
    pytest.importorskip("mtdeploy.frontends")
    graph, cx, cy, vx, vy = _task()
    model = tmp_path / "model.pt"
    GraphModule(graph).save_torchscript(model)
    data = tmp_path / "data.npz"
    np.savez(data, x=np.concatenate([cx, vx]).astype(np.float32), y=np.concatenate([cy, vy]))
    return model, data


def test_cli_search_writes_model_front_and_plot(tmp_path, capsys):
    from mtdeploy.cli import main
    from mtdeploy.frontends import load_model_graph

    model, data = _cli_model(tmp_path)
    out, front, plot = tmp_path / "searched.pt", tmp_path / "front.json", tmp_path / "front.png"
    rc = main(["search", str(model), "--data", str(data), "--budget", "sum-T=6",
               "--input-shape", "12", "-o", str(out), "--front", str(front), "--plot", str(plot),
               "--epochs", "1", "--seed", "3", "--threads", "1"])
    assert rc == 0, capsys.readouterr().err
    doc = json.loads(front.read_text())
    chosen = doc["points"][doc["chosen"]]
    assert chosen["sum_T"] <= 6
    back = load_model_graph(out, (12,))
    assert [n.attrs["levels"] for n in back.of_kind("qcfs")] == list(chosen["levels"].values())
    assert [float(n.params["threshold"]) for n in back.of_kind("qcfs")] == \
        pytest.approx(list(chosen["thresholds"].values()), rel=1e-5)
    # what 'mtdeploy compile' will build from the file reproduces the file's ANN exactly
    x = np.random.default_rng(0).uniform(0, 1, (50, 12))
    np.testing.assert_allclose(simulate(convert(back), x).output, ann_forward(back, x).numpy(),
                               rtol=0, atol=1e-9)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "CHOSEN" in capsys.readouterr().out
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_cli_search_bad_budget_exits_2_and_writes_nothing(tmp_path, capsys):
    from mtdeploy.cli import main

    model, data = _cli_model(tmp_path)
    out = tmp_path / "searched.pt"
    rc = main(["search", str(model), "--data", str(data), "--budget", "speed=fast",
               "--input-shape", "12", "-o", str(out), "--threads", "1"])
    assert rc == 2
    assert "mtdeploy: error: --budget 'speed=fast': unknown metric" in capsys.readouterr().err
    assert not out.exists()


# ---- finer level choices, screening subset, comparisons at uniform cost --------------------------
def test_finer_level_choices_give_uniform_points_and_mixed_ones_at_their_cost():
    result = _run(None, level_choices=(1, 2, 3, 4, 6, 8), per_uniform=2, finetune_epochs=1,
                  screen_samples=120)
    uniform = {c.key()[0] for c in result.candidates if c.is_uniform}
    assert uniform == {1, 2, 3, 4, 6, 8}
    assert result.settings["screen_samples"] == 120 and result.settings["calib_samples"] == 240
    used = {level for c in result.candidates for level in c.key()}
    assert used & {3, 6}
    for level in (2, 3, 4):
        cost = 3 * level
        assert any(not c.is_uniform and c.costs["sum_T"] <= cost for c in result.candidates), level
    again = _run(None, level_choices=(1, 2, 3, 4, 6, 8), per_uniform=2, finetune_epochs=1,
                 screen_samples=120)
    assert json.dumps(again.to_json(), sort_keys=True) == json.dumps(result.to_json(),
                                                                      sort_keys=True)
    anchored = _run(None, level_choices=(1, 2, 3, 4, 6, 8), per_uniform=2, finetune_epochs=0,
                    screen_samples=120, anchor_levels=(2,), max_finetune=4)
    keys = {c.key() for c in anchored.candidates}
    assert {c.key() for c in result.candidates} > keys
    assert any(not c.is_uniform and c.costs["sum_T"] <= 6 for c in anchored.candidates)


@pytest.mark.parametrize("option, value, message", [
    ("screen_samples", 0, "screen_samples must be >= 1"),
    ("per_uniform", -1, "per_uniform must be >= 0"),
    ("level_choices", (0, 2), "level_choices must be positive")])
def test_bad_new_settings_are_input_errors(option, value, message):
    with pytest.raises(InputError, match=message):
        _run(None, finetune_epochs=0, **{option: value})


def test_cli_search_takes_level_choices(tmp_path, capsys):
    from mtdeploy.cli import main

    model, data = _cli_model(tmp_path)
    out = tmp_path / "searched.pt"
    rc = main(["search", str(model), "--data", str(data), "--budget", "mean-T=3",
               "--input-shape", "12", "-o", str(out), "--epochs", "0", "--threads", "1",
               "--level-choices", "1,3,5", "--screen-samples", "100"])
    assert rc == 0, capsys.readouterr().err
    doc = json.loads(out.with_suffix(".front.json").read_text())
    assert doc["settings"]["level_choices"] == [1, 3, 5]
    assert {v for p in doc["points"] for v in p["levels"].values()} <= {1, 3, 5}
    with pytest.raises(SystemExit) as exc:
        main(["search", str(model), "--data", str(data), "--input-shape", "12", "-o",
              str(tmp_path / "x.pt"), "--level-choices", "2,zero"])
    assert exc.value.code == 2 and "--level-choices" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.parametrize("target", [None, "loihi2"])
def test_fine_tuned_weights_reach_the_searched_module(target):
    """Weight fine-tuning must end up in the candidate's module (it once landed in
    ``fits_target``, so a searched model kept its old weights)."""
    graph, cx, cy, vx, vy = _task()
    result = search(graph, cx, cy, vx, vy, seed=0, progress=False, threads=1, finetune_epochs=2,
                    finetune_weights=True, weight_lr=1e-2, max_finetune=4, target=target,
                    level_choices=(2, 8))
    for cand in result.candidates:
        assert cand.weights is not None and not isinstance(cand.fits_target, dict)
        module = result.module(cand).eval()
        with torch.no_grad():
            out = module(torch.as_tensor(vx, dtype=torch.float32))
        assert float((out.argmax(1).numpy() == vy).mean()) == pytest.approx(cand.val_acc)
