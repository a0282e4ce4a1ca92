"""The search's Pareto front as a PNG plot and a text table (``SearchResult.to_json`` is the JSON).

The plot puts accuracy against every cost the design asks for (mean T, sum T, SynOps with the
energy convention as a second axis, cores when measured), with the uniform-T QCFS points on the
same axes, so that a reader sees at once whether mixed timesteps buy anything.
"""
from __future__ import annotations

from mtdeploy.io import atomic_path
from mtdeploy.metrics.energy import E_AC_45NM_PJ, E_MAC_45NM_PJ
from mtdeploy.search.result import SearchResult

_AXES = [("mean_T", "mean T (papers' latency)"), ("sum_T", "sum T (layer-sequential steps)"),
         ("synops", "SynOps per sample"), ("cores", "neuro-cores")]


def plot_front(result: SearchResult, path, title: str | None = None) -> None:
    """Accuracy vs each cost: every candidate, the mixed front, uniform T, the chosen point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes_spec, constant = [], []
    for metric, label in _AXES:
        values = {c.costs.get(metric) for c in result.candidates} - {None}
        if len(values) > 1:
            axes_spec.append((metric, label))
        elif values:   # e.g. every configuration fits one core: say so instead of a flat panel
            constant.append(f"{label}: {values.pop():g} for all")
    axes_spec = axes_spec or _AXES[:1]
    fig, axes = plt.subplots(1, len(axes_spec), figsize=(4.6 * len(axes_spec), 4.2),
                             sharey=True, squeeze=False)
    mixed = [c for c in result.candidates if not c.is_uniform]
    for ax, (metric, label) in zip(axes[0], axes_spec):
        ax.scatter([c.costs[metric] for c in mixed], [100 * c.val_acc for c in mixed], s=14,
                   color="0.75", label="mixed candidates", zorder=1)
        front = result.front(metric)
        ax.step([c.costs[metric] for c in front], [100 * c.val_acc for c in front], where="post",
                color="tab:blue", marker="o", ms=5, label="Pareto front (mixed T)", zorder=2)
        uni = result.uniform
        ax.plot([c.costs[metric] for c in uni], [100 * c.val_acc for c in uni], "s--",
                color="tab:red", ms=6, label="uniform T (QCFS)", zorder=3)
        for c in uni:
            ax.annotate(f"T={next(iter(c.levels.values()))}", (c.costs[metric], 100 * c.val_acc),
                        textcoords="offset points", xytext=(4, -11), fontsize=7, color="tab:red")
        ch = result.chosen
        ax.scatter([ch.costs[metric]], [100 * ch.val_acc], marker="*", s=180, color="gold",
                   edgecolor="k", label="chosen", zorder=4)
        if result.budget is not None and result.budget.metric == metric:
            ax.axvline(result.budget.value, color="k", ls=":", lw=1, label=f"budget {result.budget}")
        if metric in ("sum_T", "synops"):
            ax.set_xscale("log", base=2 if metric == "sum_T" else 10)
        if metric == "mean_T":
            ax.set_xscale("log", base=2)
        if metric == "synops":
            macs_pj = result.chosen.costs["energy_pj"] - E_AC_45NM_PJ * result.chosen.costs["synops"]
            sec = ax.secondary_xaxis("top", functions=(
                lambda s, m=macs_pj: E_AC_45NM_PJ * s + m,
                lambda e, m=macs_pj: (e - m) / E_AC_45NM_PJ))
            sec.set_xlabel(f"energy per sample, pJ ({E_AC_45NM_PJ:g} pJ/AC, "
                           f"{E_MAC_45NM_PJ:g} pJ/MAC)", fontsize=8)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("validation accuracy (%) = SNN accuracy")
    axes[0][0].legend(fontsize=7, loc="lower right")
    heading = title or (f"per-layer timestep search ({len(result.candidates)} fine-tuned "
                        f"configurations; chosen {list(result.chosen.key())})")
    fig.suptitle(heading + (f"\n({'; '.join(constant)})" if constant else ""), fontsize=10)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def front_table(result: SearchResult, metric: str = "mean_T") -> str:
    """The front on ``metric`` plus the uniform points, one line each, as text."""
    rows = {id(c): c for c in result.front(metric) + result.uniform}
    lines = [f"{'levels':<28} {'meanT':>6} {'sumT':>5} {'maxT':>5} {'SynOps':>10} "
             f"{'cores':>5} {'val acc':>8}  note"]
    on_front = {id(c) for c in result.front(metric)}
    for c in sorted(rows.values(), key=lambda c: (c.costs[metric], -c.val_acc)):
        notes = []
        if c.is_uniform:
            notes.append("uniform")
        if id(c) in on_front:
            notes.append("front")
        if c is result.chosen:
            notes.append("CHOSEN")
        cores = "-" if c.costs.get("cores") is None else str(c.costs["cores"])
        lines.append(f"{str(list(c.levels.values())):<28} {c.costs['mean_T']:>6.2f} "
                     f"{c.costs['sum_T']:>5} {c.costs['max_T']:>5} {c.costs['synops']:>10.1f} "
                     f"{cores:>5} {100 * c.val_acc:>7.2f}%  {', '.join(notes)}")
    return "\n".join(lines)
