"""Draw the documentation's figures into docs/assets/figures/ (run by hand after changing them).

    python docs/figures.py

* ``meta_loop.svg``: the meta-learning loop (task sampling, inner loop, meta-update), concepts page;
* ``attention_kinds.png`` / ``multihead.png``: the attention weights of the attention page's snippets;
* ``task_weights.png``, ``feature_gates.png``, ``param_weights.png``: copies of the attention ablation's
  plots (``experiments/attention/results/attention_plots/``, written by ``attnmeta.attention_plots``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

from attnmeta.nn.attention import (  # noqa: E402
    MultiHeadAttention,
    gumbel_softmax_attention,
    scaled_dot_product_attention,
    topk_attention,
)

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "assets" / "figures"
ABLATION = ROOT / "experiments" / "attention" / "results" / "attention_plots"
COPIES = {
    "task_weights_corrupted_gate_10k.png": "task_weights.png",
    "feature_gates_multimodal.png": "feature_gates.png",
    "param_weights_sinusoid5.png": "param_weights.png",
}


def _box(ax, x, y, w, h, text, color):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                facecolor=color, edgecolor="#333333", linewidth=1.2))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=12.5, linespacing=1.35)


def _arrow(ax, start, end, text="", offset=(0.0, 0.12), style="-|>", rad=0.0):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=16, linewidth=1.4,
                                 color="#333333", connectionstyle=f"arc3,rad={rad}"))
    if text:
        ax.text((start[0] + end[0]) / 2 + offset[0], (start[1] + end[1]) / 2 + offset[1], text,
                ha="center", va="center", fontsize=10, color="#333333")


def meta_loop(path: Path) -> None:
    fig, ax = plt.subplots(figsize=(10, 4.8))
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 4.8)
    ax.axis("off")
    cols = ((0.05, 2.3), (3.05, 2.85), (6.6, 3.35))  # (x, width) of the three columns
    top, bottom, h = 3.1, 0.55, 1.35
    (x1, w1), (x2, w2), (x3, w3) = cols
    _box(ax, x1, top, w1, h, "task distribution\np(T): classes,\nfunctions, goals", "#e8eef7")
    _box(ax, x2, top, w2, h, "meta-batch of T tasks,\neach a support set\nand a query set", "#e8eef7")
    _box(ax, x3, top, w3, h, "inner loop, per task\nθ'ᵢ = θ − α ∇θ L(supportᵢ; θ)\n(a few steps)",
         "#fdf0dc")
    _box(ax, x3, bottom, w3, h, "outer loss\nΣᵢ L(queryᵢ; θ'ᵢ)\n(how well each adapted)", "#fdf0dc")
    _box(ax, x2, bottom, w2, h, "meta-update\nθ ← θ − β ∇θ Σᵢ L(queryᵢ; θ'ᵢ)\n(through the inner loop)",
         "#e3f2e1")
    _box(ax, x1, bottom, w1, h, "meta-parameters θ\n(initialisation, rates,\nattention modules)", "#e3f2e1")
    mid_top, mid_bottom = top + h / 2, bottom + h / 2
    _arrow(ax, (x1 + w1, mid_top), (x2, mid_top), "sample")
    _arrow(ax, (x2 + w2, mid_top), (x3, mid_top), "support")
    _arrow(ax, (x3 + w3 / 2, top), (x3 + w3 / 2, bottom + h), "query", offset=(0.4, 0.0))
    _arrow(ax, (x3, mid_bottom), (x2 + w2, mid_bottom), "2nd-order\ngradient", offset=(0.0, 0.95))
    _arrow(ax, (x2, mid_bottom), (x1 + w1, mid_bottom))
    _arrow(ax, (x1 + w1 / 2, bottom + h), (x1 + w1 / 2, top), "next\nmeta-batch", offset=(-0.55, 0.0))
    _arrow(ax, (x1 + w1, bottom + h - 0.15), (x3, top + 0.2), "θ starts every task", offset=(-0.5, 0.3),
           rad=-0.05)
    ax.text(5.0, 0.15, "test: the same inner loop on fixed, unseen test episodes → mean ± 95% CI",
            ha="center", va="center", fontsize=11, style="italic", color="#555555")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def attention_kinds(path: Path) -> None:
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 4, 8), torch.randn(1, 6, 8), torch.randn(1, 6, 3)
    mask = torch.tensor([True, True, True, False, False, False])
    panels = {
        "soft": scaled_dot_product_attention(q, k, v, return_weights=True)[1],
        "mask: keys 0-2 only": scaled_dot_product_attention(q, k, v, mask, return_weights=True)[1],
        "causal": scaled_dot_product_attention(q, k, v, causal=True, return_weights=True)[1],
        "hard top-2": topk_attention(q, k, v, top_k=2, return_weights=True)[1],
        "Gumbel, hard": gumbel_softmax_attention(q, k, v, tau=0.5, generator=torch.Generator().manual_seed(0),
                                                 return_weights=True)[1],
    }
    fig, axes = plt.subplots(2, 3, figsize=(10, 5.6), constrained_layout=True)
    for ax, (title, weights) in zip(axes.flat, panels.items()):
        image = ax.imshow(weights[0].detach(), vmin=0, vmax=1, cmap="viridis")
        ax.set_title(title, fontsize=12)
        ax.set_xlabel("key")
        ax.set_ylabel("query")
        ax.set_xticks(range(6))
        ax.set_yticks(range(4))
    axes.flat[-1].axis("off")
    fig.colorbar(image, ax=axes, shrink=0.6, label="attention weight")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def multihead(path: Path) -> None:
    torch.manual_seed(0)
    x, query = torch.randn(2, 5, 16), torch.randn(2, 3, 16)
    _, weights = MultiHeadAttention(16, heads=4)(query, x, return_weights=True)
    fig, axes = plt.subplots(1, 4, figsize=(10, 2.4), constrained_layout=True)
    for h, ax in enumerate(axes):
        image = ax.imshow(weights[0, h].detach(), vmin=0, vmax=1, cmap="viridis")
        ax.set_title(f"head {h}", fontsize=10)
        ax.set_xlabel("set element")
        ax.set_xticks(range(5))
        ax.set_yticks(range(3))
    axes[0].set_ylabel("query")
    fig.colorbar(image, ax=axes, shrink=0.8, label="weight")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    plt.rcParams["svg.hashsalt"] = "attnmeta"  # stable SVG ids: re-running does not change the file
    plt.rcParams["svg.fonttype"] = "none"  # text stays text (small, searchable)
    meta_loop(OUT / "meta_loop.svg")
    attention_kinds(OUT / "attention_kinds.png")
    multihead(OUT / "multihead.png")
    for source, target in COPIES.items():
        shutil.copyfile(ABLATION / source, OUT / target)
    print("\n".join(sorted(str(p.relative_to(ROOT)) for p in OUT.iterdir())))


if __name__ == "__main__":
    main()
