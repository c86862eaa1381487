"""The accuracy-vs-bytes picture of a profile: what each split and bit width buys."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from splitinfer.bundle.profile import config_variant

#: Above this many splits a legend entry each would cover the plot: a colour bar names them.
LEGEND_SPLITS = 14


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated in (bytes, drop): fewer bytes and no more drop is better."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best_drop = [], float("inf")
    for i in order:
        if points[i][1] < best_drop:
            front.append(i)
            best_drop = points[i][1]
    return front


def plot_pareto(profile: dict, path: Path, title: str = "accuracy vs bytes") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = profile["configs"]
    bounded = all("drop_upper_pp" in c for c in configs)
    # The front and the 1 pp line are read on what the scheduler holds to its SLO: the upper
    # bound when the profile has one. Each point is the measured drop, its bar the interval.
    drop_key = "drop_upper_pp" if bounded else "drop_pp"
    splits = list(dict.fromkeys(c["split"] for c in configs))
    cmap = plt.get_cmap("viridis", max(len(splits), 2))
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=110)
    for k, split in enumerate(splits):
        rows = [c for c in configs if c["split"] == split]
        x, y = [r["bytes_mean"] for r in rows], [r["drop_pp"] for r in rows]
        ax.plot(x, y, "o-", ms=4, lw=0.8, color=cmap(k), alpha=0.85,
                label=split if len(splits) <= LEGEND_SPLITS else None)
        if bounded:
            ax.errorbar(x, y, yerr=[[r["drop_pp"] - r["drop_lower_pp"] for r in rows],
                                    [r["drop_upper_pp"] - r["drop_pp"] for r in rows]],
                        fmt="none", ecolor=cmap(k), elinewidth=0.7, capsize=1.5, alpha=0.6)
    jpeg = profile["jpeg"]
    ax.scatter([jpeg["bytes_mean"]], [jpeg["drop_pp"]], marker="*", s=160, color="crimson",
               zorder=5, label=f"JPEG q{jpeg['quality']} (cloud-only)")
    points = [(c["bytes_mean"], c[drop_key]) for c in configs]
    front = pareto_front(points)
    level = (profile.get("confidence") or {}).get("level", 0.95)
    ax.step([points[i][0] for i in front], [points[i][1] for i in front], where="post",
            color="black", lw=1.5, ls="--",
            label=f"Pareto front of upper bounds ({level:.0%})" if bounded else "Pareto front")
    for i in front:
        c = configs[i]
        if c[drop_key] <= 5:
            allocated = config_variant(c) == "allocated" and c.get("mean_bits") is not None
            label = f"{c['mean_bits']:.2g}b per channel" if allocated else f"{c['bits']}b"
            ax.annotate(label, points[i], textcoords="offset points", xytext=(3, 4), fontsize=7)
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    ax.text(0.005, 1.05, "1 pp", transform=ax.get_yaxis_transform(), fontsize=8, color="grey")
    ax.set_xscale("log")
    ax.set_xlabel("payload bytes per frame (mean, header included)")
    ax.set_ylabel("top-1 accuracy drop vs float model (pp)" + (
        f"\nbars: one-sided {level:.0%} bounds on {profile.get('dataset', {}).get('n', '?')} "
        "unseen images" if bounded else ""))
    lo = min(min(p[1] for p in points), jpeg["drop_pp"])
    ax.set_ylim(min(-0.5, lo - 0.5), max(6.0, min(15.0, 1.1 * max(p[1] for p in points))))
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7, ncol=2, loc="upper right")
    if len(splits) > LEGEND_SPLITS:
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        bar = fig.colorbar(ScalarMappable(cmap=cmap, norm=Normalize(0, len(splits) - 1)), ax=ax, pad=0.01)
        ticks = sorted({0, len(splits) // 4, len(splits) // 2, 3 * len(splits) // 4, len(splits) - 1})
        bar.set_ticks(ticks)
        bar.set_ticklabels([splits[t] for t in ticks], fontsize=7)
        bar.set_label(f"split ({len(splits)}, input to output)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
