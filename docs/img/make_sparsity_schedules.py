"""Draws docs/img/sparsity_schedules.png: the rate of each schedule over a run (python docs/img/make_....py)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from grouppruner.sparsity import Constant, Cosine, Dynamic, Linear, Step

TOTAL = 1000
S = 1e-3


def main() -> None:
    schedules = {
        "Constant(1e-3)": Constant(S, total_steps=TOTAL),
        "Linear(1e-3, 1e-4)": Linear(S, 1e-4, total_steps=TOTAL),
        "Cosine(1e-3, 1e-4)": Cosine(S, 1e-4, total_steps=TOTAL),
        "Step(1e-3, milestones=(0.5, 0.75))": Step(S, total_steps=TOTAL),
    }
    fig = Figure(figsize=(9, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    steps = list(range(TOTAL))
    for (label, schedule), style in zip(schedules.items(), ("--", "-", "-", "-"), strict=True):
        left.plot(steps, [schedule.rate_at(t) for t in steps], style, label=label)
    left.set(title="uniform schedules\n(every channel the same rate)", xlabel="step", ylabel="rate s", yscale="log")
    left.legend(fontsize="small")
    dynamic = Dynamic(S, total_steps=TOTAL)
    switch = dynamic.switch_step
    right.plot(steps, [S] * TOTAL, label="channels below the 65th percentile")
    right.plot(steps, [S if t < switch else S * dynamic.decay for t in steps], label="strongest 35 % of channels")
    right.axvline(switch, color="gray", linestyle="--", linewidth=1)
    right.set(title="Dynamic(1e-3)\nwarmup=0.4, keep=0.35, decay=0.01", xlabel="step", ylabel="rate", yscale="log")
    right.legend(fontsize="small")
    fig.savefig(Path(__file__).with_name("sparsity_schedules.png"), dpi=90)


if __name__ == "__main__":
    main()
