"""The report's figures as PNG bytes (matplotlib's Agg canvas: no display, no global pyplot state)."""
from __future__ import annotations

import io
from typing import Any

import numpy as np


def png_bytes(fig) -> bytes:
    """A matplotlib ``Figure`` as PNG bytes (Agg canvas, 120 dpi, tight bounding box)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    return buf.getvalue()


def kinship_png(kin: dict[str, Any]) -> bytes:
    """Heatmap of the accuracy drops (percentage points), rows = inhibited group, columns = evaluated group."""
    from matplotlib.figure import Figure

    matrix = 100.0 * np.asarray(kin["matrix"], dtype=np.float64)
    targets, groups = kin["targets"], kin["groups"]
    fig = Figure(figsize=(1.2 + 0.6 * len(groups), 1.0 + 0.5 * len(targets)))
    ax = fig.add_subplot()
    bound = max(float(np.abs(matrix).max()), 1e-9)
    image = ax.imshow(matrix, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto")
    ax.set_xticks(range(len(groups)), groups, rotation=45, ha="right")
    ax.set_yticks(range(len(targets)), targets)
    ax.set_xlabel("evaluated group")
    ax.set_ylabel("inhibited group's neurons")
    if matrix.size <= 400:  # annotate small matrices; big ones would be unreadable
        for i in range(matrix.shape[0]):
            for j in range(matrix.shape[1]):
                dark = abs(matrix[i, j]) > 0.6 * bound
                ax.text(j, i, f"{matrix[i, j]:.1f}", ha="center", va="center", fontsize=7,
                        color="white" if dark else "black")
    fig.colorbar(image, ax=ax, label="accuracy drop (points)")
    ax.set_title("Cultural kinship: accuracy drop")
    return png_bytes(fig)


def layers_png(layers: dict[str, Any]) -> bytes:
    """Bar chart of neuron counts per layer, MLP and attention side by side."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    n = layers["num_layers"]
    x = np.arange(n)
    fig = Figure(figsize=(max(4.0, 0.25 * n + 2), 3.0))
    ax = fig.add_subplot()
    ax.bar(x - 0.2, layers["counts"]["mlp"], width=0.4, label="MLP (gate)")
    ax.bar(x + 0.2, layers["counts"]["attn"], width=0.4, label="attention (q/k/v)")
    ax.set_xlabel("layer")
    ax.set_ylabel("neurons")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Where the neurons are")
    ax.legend()
    return png_bytes(fig)
