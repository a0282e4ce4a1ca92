"""The reference simulator at scale: counts-only neuron loops, float32 fixed point, SynOps from
fan-outs, batches sized by a memory budget, memory-mapped inputs and outputs, data-parallel
processes, devices; every shortcut checked against the plain computation it replaces."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mtdeploy.cli import main
from mtdeploy.errors import InputError
from mtdeploy.ir.graph import Node
from mtdeploy.ir.snn import is_alignment, is_population, is_source, populations, tree_nodes
from mtdeploy.kinds import kind_of, neurons
from mtdeploy.kinds.neurons import NEURONS
from mtdeploy.passes import ConvertOptions, convert, quantize
from mtdeploy.sim import plan as plan_module
from mtdeploy.sim.parallel import simulate_workers
from mtdeploy.sim.reference import resolve_device, simulate
from mtdeploy.testing import random_cnn, random_mlp, random_residual
from test_cli import run as run_cli

ROOT = Path(__file__).resolve().parents[1]
BUILDERS = {"mlp": lambda rng: random_mlp(rng, levels=[4, 2]),
            "cnn": lambda rng: random_cnn(rng, levels=[8, 2]),
            "residual": lambda rng: random_residual(rng, levels=[4, 8, 2])}


def graph_of(arch: str, alignment="avg-repeat", neuron="if", seed=0):
    rng = np.random.default_rng(seed)
    return quantize(convert(BUILDERS[arch](rng), ConvertOptions(alignment=alignment,
                                                                neuron=neuron, input_max=1.5)))


def inputs(graph, n=40, seed=1):
    return np.random.default_rng(seed).uniform(-0.25, 1.25, (n, *graph.input.shape))


def assert_same_run(a, b, exact=True):
    if exact:
        assert np.array_equal(a.output, b.output)
    else:
        np.testing.assert_allclose(a.output, b.output, rtol=0, atol=1e-12)
    assert set(a.counts) == set(b.counts)
    for pop in a.counts:
        assert np.array_equal(a.counts[pop], b.counts[pop]), pop
    assert a.synops == b.synops


# ---- the neuron loop -----------------------------------------------------------------------
def naive_if(current: torch.Tensor, th: float, v0: float, saturate: bool) -> torch.Tensor:
    """Semantics §2/§3 step by step in the current's number type, no chunks, no shortcuts:
    spikes (T, N, ...)."""
    v = torch.full(current.shape[1:], v0, dtype=current.dtype)
    out = []
    for t in range(current.shape[0]):
        m = v + current[t]
        s = (m >= th).to(current.dtype)
        v = m - th * s
        if saturate:
            v = v.clamp(neurons.STATE_MIN, neurons.STATE_MAX)
        out.append(s)
    return torch.stack(out)


@pytest.mark.parametrize("fixed", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_if_chunks_threads_and_counts_only_equal_the_plain_loop(monkeypatch, fixed, dtype):
    monkeypatch.setattr(neurons, "CHUNK", 7)            # many chunks, shared by threads
    rng = np.random.default_rng(0)
    node = Node("p", "qcfs", [], {"levels": 6, "neuron": "if", "threshold_int": 40,
                                  "v_init_int": 20, "v_init": 0.5},
                {"threshold": np.float32(1.25)})
    th, v0 = (40.0, 20.0) if fixed else (1.25, 0.625)
    streamed = torch.as_tensor(rng.integers(-30, 90, (6, 5, 11)) if fixed
                               else rng.uniform(-0.5, 2.0, (6, 5, 11)), dtype=dtype)
    streamed[:, 0, 0] = -(2 ** 23) if fixed else streamed[:, 0, 0]   # saturates the state
    steady = streamed[0].unsqueeze(0).expand(6, 5, 11)
    for current in (streamed, steady):
        want = naive_if(current, th, v0, saturate=fixed)
        full = NEURONS["if"].run(node, current, fixed, {}, steps=True)
        counts_only = NEURONS["if"].run(node, current, fixed, {}, steps=False)
        unit = 1.0 if fixed else th
        assert counts_only.steps is None and full.unit == unit
        assert torch.equal(full.steps, want * unit)
        assert torch.equal(full.count, want.sum(0))
        assert torch.equal(counts_only.count, full.count)


# ---- float32 fixed point ---------------------------------------------------------------------
@pytest.mark.parametrize("arch", sorted(BUILDERS))
@pytest.mark.parametrize("alignment", ["avg-repeat", "ttm"])
def test_float32_fixed_point_equals_float64_bit_for_bit(monkeypatch, arch, alignment):
    graph = graph_of(arch, alignment)
    x = inputs(graph)
    plan = plan_module.make_plan(graph, "fixed", torch.device("cpu"), True)
    assert torch.float32 in set(plan.dtypes.values()), "the bound should hold for these nets"
    fast = simulate(graph, x, mode="fixed")
    monkeypatch.setattr(plan_module, "_fits_float32", lambda g, p: False)
    assert_same_run(fast, simulate(graph, x, mode="fixed"))


def test_a_tree_beyond_float32_stays_float64_and_exact():
    rng = np.random.default_rng(4)
    graph = quantize(convert(random_mlp(rng, n_in=1024, hidden=(16, 8), levels=[16, 16]),
                             ConvertOptions(input_max=1.0)))
    plan = plan_module.make_plan(graph, "fixed", torch.device("cpu"), True)
    first = graph.of_kind("qcfs")[0].name
    assert plan.dtypes[first] == torch.float64
    x = rng.uniform(0, 1, (16, 1024))
    fixed = simulate(graph, x, mode="fixed")
    oracle = simulate(graph, x, mode="ann-int")
    assert np.array_equal(fixed.output, oracle.output)


def test_float32_precision_is_close_to_float64():
    graph = graph_of("cnn", "ttm")
    x = inputs(graph)
    f64 = simulate(graph, x, mode="float")
    f32 = simulate(graph, x, mode="float", precision="float32")
    np.testing.assert_allclose(f32.output, f64.output, rtol=1e-4, atol=1e-4)
    with pytest.raises(InputError, match="precision"):
        simulate(graph, x, mode="float", precision="float16")


# ---- SynOps ------------------------------------------------------------------------------------
def indicator_synops(graph, pop, counts) -> float:
    """SynOps into ``pop`` the plain way: every weighted node of its tree run again on the spike
    counts with its nonzero weights set to one, its outputs summed."""
    values, total = {}, 0.0
    for node in tree_nodes(graph, pop):
        if is_alignment(node):
            if is_source(graph[node.inputs[0]]):
                return 0.0
            values[node.name] = counts[node.inputs[0]]
            continue
        xs = [values[i] if i in values else counts[i] for i in node.inputs]
        kind = kind_of(node)
        if kind.weighted:
            ones = Node(node.name, node.kind, node.inputs, node.attrs,
                        {"weight_int": (node.params["weight"] != 0).astype(np.float64)})
            values[node.name] = kind.forward_int(ones, *xs)
            total += float(values[node.name].sum())
        else:
            values[node.name] = kind.forward_int(node, *xs)
    return total


@pytest.mark.parametrize("arch", sorted(BUILDERS))
@pytest.mark.parametrize("alignment", ["avg-repeat", "ttm"])
def test_synops_from_fanouts_equal_the_indicator_pass(arch, alignment):
    graph = graph_of(arch, alignment)
    x = inputs(graph)
    for mode in ("float", "fixed"):
        res = simulate(graph, x, mode=mode, batch_size=16)
        counts = {k: torch.as_tensor(v) for k, v in res.counts.items()}
        for pop in populations(graph):
            if not is_source(pop):
                assert res.synops.get(pop.name, 0.0) == indicator_synops(graph, pop, counts), \
                    (mode, pop.name)
        assert res.total_synops > 0


# ---- batches, memory, files --------------------------------------------------------------------
@pytest.mark.parametrize("arch", sorted(BUILDERS))
def test_batch_size_and_memory_budget_do_not_change_results(arch):
    graph = graph_of(arch)
    x = inputs(graph, 30)
    whole = simulate(graph, x, mode="fixed")
    assert whole.batch_size == 30
    small = simulate(graph, x, mode="fixed", memory_budget=1)
    assert small.batch_size == 1
    assert_same_run(whole, small)
    assert_same_run(whole, simulate(graph, x, mode="fixed", batch_size=7))
    float_whole = simulate(graph, x, mode="float")
    assert_same_run(float_whole, simulate(graph, x, mode="float", batch_size=7), exact=False)


def test_counts_are_optional_and_totals_stay():
    graph = graph_of("residual", "ttm", neuron="tpp")
    x = inputs(graph)
    full = simulate(graph, x, mode="fixed", batch_size=9)
    lean = simulate(graph, x, mode="fixed", batch_size=9, keep_counts=False)
    assert lean.counts == {} and np.array_equal(lean.output, full.output)
    assert lean.synops == full.synops
    assert lean.spikes == {k: float(v.sum()) for k, v in full.counts.items()}


def test_memory_mapped_inputs_and_outputs(tmp_path):
    graph = graph_of("cnn")
    x = inputs(graph, 25).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    out = np.lib.format.open_memmap(tmp_path / "out.npy", mode="w+", dtype=np.float64,
                                    shape=(25, *graph[graph.output].shape))
    res = simulate(graph, mapped, mode="fixed", batch_size=4, out=out)
    assert res.output is out
    out.flush()
    assert np.array_equal(np.load(tmp_path / "out.npy"), simulate(graph, x, mode="fixed").output)


def _anon_rss() -> int | None:
    """This process's anonymous resident memory in bytes (heap and tensors, not mapped files)."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    line = next((l for l in text.splitlines() if l.startswith("RssAnon:")), None)
    return None if line is None else int(line.split()[1]) * 1024


@pytest.mark.skipif(_anon_rss() is None, reason="needs /proc/self/status RssAnon (Linux)")
def test_memory_stays_flat_over_many_batches(tmp_path):
    """Memory-mapped inputs and outputs, counts not kept: after the first batches nothing
    accumulates per sample (the per-sample spike counts of these 6,000 samples alone would
    take 6,000 x 768 x 8 bytes = 37 MB)."""
    rng = np.random.default_rng(6)
    graph = quantize(convert(random_cnn(rng, size=8, channels=(4, 8), levels=[4, 2]),
                             ConvertOptions(input_max=1.5)))
    n = 6_000
    np.save(tmp_path / "x.npy", rng.uniform(0, 1, (n, *graph.input.shape)).astype(np.float32))
    x = np.load(tmp_path / "x.npy", mmap_mode="r")
    out = np.lib.format.open_memmap(tmp_path / "out.npy", mode="w+", dtype=np.float64,
                                    shape=(n, *graph[graph.output].shape))
    seen: list[int] = []
    res = simulate(graph, x, mode="fixed", batch_size=200, keep_counts=False, out=out,
                   progress=lambda done, total: seen.append(_anon_rss()))
    assert len(seen) == n // 200 and res.counts == {}
    growth = max(seen[4:]) - seen[3]
    assert growth < 4 << 20, f"anonymous memory grew {growth / 2 ** 20:.1f} MiB over {n} samples"
    head = simulate(graph, np.asarray(x[:300]), mode="fixed")
    assert np.array_equal(out[:300], head.output)


def test_bytes_per_sample_grow_with_kept_steps():
    avg, ttm = graph_of("cnn"), graph_of("cnn", "ttm")
    cpu = torch.device("cpu")
    p_avg = plan_module.make_plan(avg, "float", cpu, True)
    p_ttm = plan_module.make_plan(ttm, "float", cpu, True)
    assert not any(p_avg.keep_steps.values())          # avg-repeat: counts are enough
    assert any(p_ttm.keep_steps.values())              # streamed spikes are kept
    assert 0 < p_avg.bytes_per_sample < p_ttm.bytes_per_sample


# ---- devices ---------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_cuda_without_a_device_is_an_input_error(tmp_path, capsys):
    with pytest.raises(InputError, match="no CUDA device"):
        resolve_device("cuda")
    graph = graph_of("mlp")
    with pytest.raises(InputError, match="no CUDA device"):
        simulate(graph, inputs(graph), device="cuda")
    with pytest.raises(InputError, match="cpu or cuda"):
        resolve_device("tpu")


@pytest.fixture
def build_files(tmp_path, qcfs_cnn):
    model = tmp_path / "model.pt"
    torch.jit.trace(qcfs_cnn.model, qcfs_cnn.batch(2)).save(str(model))
    np.save(tmp_path / "x.npy", qcfs_cnn.batch(30, seed=3).clamp(0, 1).numpy().astype(np.float32))
    assert main(["compile", str(model), "--input-shape", "1,8,8", "-o", str(tmp_path / "b")]) == 0
    return tmp_path


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_cli_device_errors_exit_2(capsys, build_files):
    tmp = build_files
    capsys.readouterr()
    code, _, err = run_cli(capsys, "simulate", tmp / "b", "--input", tmp / "x.npy", "--device",
                           "cuda")
    assert code == 2 and "no CUDA device" in err and "--device cpu" in err
    code, _, err = run_cli(capsys, "simulate", tmp / "b", "--input", tmp / "x.npy", "--device",
                           "tpu")
    assert code == 2 and "cpu or cuda" in err
    code, _, err = run_cli(capsys, "ladder", tmp / "b", "--input", tmp / "x.npy", "--device",
                           "cuda")
    assert code == 2 and "no CUDA device" in err


def test_cli_streams_outputs_and_reports_progress(monkeypatch, capsys, build_files):
    from mtdeploy.api import load_build
    from mtdeploy.cli import simulate as cli_simulate

    tmp = build_files
    monkeypatch.setattr(cli_simulate, "STATUS_EVERY_S", 0.0)
    capsys.readouterr()
    code, out, err = run_cli(capsys, "simulate", tmp / "b", "--input", tmp / "x.npy", "-o",
                             tmp / "out.npy", "--fixed-point", "--batch-size", "8")
    assert code == 0, err
    assert "simulate: 8/30 samples" in err and "simulate: 30/30 samples" in err
    want = simulate(load_build(tmp / "b"), np.load(tmp / "x.npy"), mode="fixed")
    assert np.array_equal(np.load(tmp / "out.npy"), want.output)
    assert f"SynOps per sample: {want.total_synops / 30:.1f}" in out
    assert not [p for p in os.listdir(tmp) if p.endswith(".tmp")]
    with pytest.raises(SystemExit) as exc:
        main(["simulate", str(tmp / "b"), "--input", str(tmp / "x.npy"), "--memory-budget", "lots"])
    assert exc.value.code == 2 and "--memory-budget" in capsys.readouterr().err


# ---- data-parallel ----------------------------------------------------------------------------
@pytest.mark.parametrize("arch, alignment, neuron, mode", [
    ("residual", "avg-repeat", "if", "float"), ("residual", "ttm", "tpp", "fixed")])
def test_two_processes_equal_one_exactly(arch, alignment, neuron, mode):
    graph = graph_of(arch, alignment, neuron)
    x = inputs(graph, 37)
    one = simulate(graph, x, mode=mode, batch_size=5)
    two = simulate_workers(graph, x, 2, mode, batch_size=5)
    assert_same_run(one, two)
    assert one.spikes == two.spikes and one.batch_size == two.batch_size == 5


def test_cli_workers_and_torchrun_equal_one_process(capsys, build_files):
    tmp = build_files
    capsys.readouterr()
    assert run_cli(capsys, "simulate", tmp / "b", "--input", tmp / "x.npy", "-o",
                   tmp / "one.npy", "--batch-size", "4")[0] == 0
    code, _, err = run_cli(capsys, "simulate", tmp / "b", "--input", tmp / "x.npy", "-o",
                           tmp / "two.npy", "--batch-size", "4", "--workers", "2")
    assert code == 0, err
    assert np.array_equal(np.load(tmp / "one.npy"), np.load(tmp / "two.npy"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc-per-node", "2", "-m", "mtdeploy", "simulate", str(tmp / "b"),
                          "--input", str(tmp / "x.npy"), "-o", str(tmp / "run.npy"),
                          "--batch-size", "4"], capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("simulated 30 samples") == 1          # rank 0 alone reports
    assert np.array_equal(np.load(tmp / "one.npy"), np.load(tmp / "run.npy"))


def test_a_rank_that_dies_before_joining_fails_the_run_at_once(monkeypatch):
    from mtdeploy.sim import parallel

    monkeypatch.setattr(parallel, "_RANK_MAIN", "raise SystemExit(3)")
    graph = graph_of("mlp")
    with pytest.raises(RuntimeError, match="rank 1 exited with code 3"):
        simulate_workers(graph, inputs(graph, 4), 2, "fixed")
