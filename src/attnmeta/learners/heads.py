"""Where each task's inner loop starts for the output layer (``MAML(head_init=...)``).

============== ==================================================================================
``learned``    the meta-learned head (MAML)
``zero``       a zero head, not meta-learned (the zeroing trick of Kao et al. 2022)
``shared``     one meta-learned row copied to every class (UnicornMAML, Ye & Chao 2022)
``prototypes`` each class's row from its support examples' features: weight ``2 c_k``, bias
               ``-|c_k|^2`` with ``c_k`` the mean feature of class ``k``, so the head starts as a
               Prototypical Network with squared Euclidean distance (Proto-MAML, Triantafillou et al.
               2020, "Meta-Dataset"); the meta-gradient flows through the prototypes
============== ==================================================================================

``zero``, ``shared`` and ``prototypes`` give every class the same role, so a model trained on ``N`` ways
serves any number of ways up to its outputs.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import torch
from torch import Tensor, nn

from attnmeta.learners.inner import Forward, Params, head_names

HEAD_INITS = ("learned", "zero", "shared", "prototypes")
#: head inits whose rows do not depend on the label order: any number of ways trains them
ROW_SYMMETRIC = ("zero", "shared", "prototypes")


def check_head_init(mode: str, names: list[str], adapt_names: Collection[str], task_type: str,
                    shapes: Mapping[str, torch.Size]) -> list[str]:
    """The head's parameter names (``[]`` for ``"learned"``), or a one-line ``ValueError`` for a mode the
    model cannot take. ``names``: the model's trainable parameters in order; ``shapes`` by name."""
    if mode not in HEAD_INITS:
        raise ValueError(f"head_init must be one of {HEAD_INITS}, got {mode!r}")
    if mode == "learned":
        return []
    head = head_names(names)
    if not set(head) <= set(adapt_names):
        raise ValueError(f"head_init={mode!r} needs the head ({', '.join(head)}) to adapt, or every "
                         "task would keep the same head; include it in adapt=")
    if mode in ("shared", "prototypes"):
        what = ("copies one class row to every class" if mode == "shared"
                else "builds class rows from prototypes")
        if task_type != "classification":
            raise ValueError(f"head_init={mode!r} {what}: it is for classification; use 'zero' or 'learned' "
                             "for regression")
        needed = ["bias", "weight"] if mode == "prototypes" else None
        if (needed and sorted(n.rpartition(".")[2] for n in head) != needed) or any(
                len(shapes[n]) != (2 if n.endswith("weight") else 1) for n in head):
            raise ValueError(f"head_init={mode!r} needs a linear output layer (weight [outputs, features], "
                             f"bias [outputs]); the last layer has "
                             f"{', '.join(f'{n} {tuple(shapes[n])}' for n in head)}")
    return head


def initialise_head(params: Mapping[str, Tensor], head: Collection[str], mode: str) -> Params:
    """The inner loop's starting point: ``params`` with the output layer's tensors ``head`` (names) replaced.

    ``mode``: ``"learned"`` keeps them (MAML); ``"zero"`` starts every task from a zero head that is not
    meta-learned (the zeroing trick of Kao et al. 2022, "MAML is a noisy contrastive learner"); ``"shared"``
    starts every output row from row 0 of the weight ``[outputs, features]`` (and bias ``[outputs]``), so one
    meta-learned row serves all classes and the start is the same whatever order the labels come in
    (UnicornMAML, Ye & Chao 2022). Under ``"shared"`` row 0's meta-gradient is the sum over the rows.
    ``"prototypes"`` depends on the task: zeros here, replaced by ``prototype_head`` per task.
    """
    if mode not in HEAD_INITS:
        raise ValueError(f"head_init must be one of {HEAD_INITS}, got {mode!r}")
    out = dict(params)
    if mode == "learned":
        return out
    for name in head:
        p = params[name]
        out[name] = p[:1].expand_as(p) if mode == "shared" else torch.zeros_like(p)
    return out


def prototype_rows(features: Tensor, labels: Tensor, ways: int, outputs: int) -> tuple[Tensor, Tensor]:
    """Proto-MAML's head ``(weight [outputs, F], bias [outputs])`` from support ``features [n, F]`` and
    ``labels [n]`` in ``0..ways-1``: row ``k < ways`` is ``2 c_k`` with bias ``-|c_k|^2`` (``c_k`` the mean
    feature of class ``k``), so ``x @ w_k + b_k = -|x - c_k|^2 + |x|^2``; rows ``>= ways`` are zero."""
    onehot = nn.functional.one_hot(labels, ways).to(features.dtype)  # [n, ways]
    counts = onehot.sum(0).clamp_min(1.0)
    centres = (onehot.transpose(0, 1) @ features) / counts[:, None]  # [ways, F]
    weight, bias = 2 * centres, -centres.pow(2).sum(-1)
    if outputs > ways:
        weight = torch.cat([weight, weight.new_zeros(outputs - ways, weight.shape[1])])
        bias = torch.cat([bias, bias.new_zeros(outputs - ways)])
    return weight, bias


def prototype_head(model: nn.Module, forward: Forward, params: Mapping[str, Tensor], head: list[str],
                   support_x: Tensor, support_y: Tensor, ways: int) -> Params:
    """``params`` with the head (names ``head``: the weight and bias of ``model``'s last linear layer) set
    from the support set's prototypes, read at ``params`` by running ``forward(params, support_x)`` and
    capturing the head's input ``[n, F]`` (``prototype_rows``). Differentiable w.r.t. ``params``."""
    prefix = head[0].rpartition(".")[0]
    captured: list[Tensor] = []
    handle = model.get_submodule(prefix).register_forward_hook(
        lambda _module, args, _out: captured.append(args[0]))
    try:
        forward(params, support_x)
    finally:
        handle.remove()
    features = captured[-1]
    if features.dim() != 2:
        raise ValueError(f"head_init='prototypes' needs the output layer's input to be [examples, features], "
                         f"got shape {tuple(features.shape)}")
    weight_name = next(n for n in head if n.endswith("weight"))
    bias_name = next(n for n in head if n.endswith("bias"))
    weight, bias = prototype_rows(features, support_y, ways, params[weight_name].shape[0])
    # The inner loop differentiates its loss w.r.t. each tensor of the dict as an independent variable (the
    # head held fixed when the body's gradient is taken, as in fine-tuning). The head was computed from the
    # body's tensors, so the body enters the dict as aliases: torch.autograd.grad w.r.t. an alias follows
    # only the paths through it, while the meta-gradient still reaches the body through the prototypes.
    body = {n: t.view_as(t) for n, t in params.items() if n not in head}
    return {**body, weight_name: weight, bias_name: bias}
