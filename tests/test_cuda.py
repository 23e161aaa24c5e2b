"""Every learner trains and predicts with the model and episodes on the CPU and on a CUDA device (skipped
without one).

Episodes keep their original class ids (``TaskBatch.classes``) on the CPU as metadata when moved with
``.to(device)``; learners that index with them (SNAIL's batch-scope auxiliary loss, the transfer baselines)
must move them first. That bug surfaced only on a GPU, so this file is the check to run on one.
"""

from __future__ import annotations

import pytest
import torch

from attnmeta.compare import build_for
from attnmeta.learners import available
from test_compare import gaussian_benchmark

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                reason="needs a CUDA device"))]

CASES = {name: {} for name in available()}
CASES["snail"] = {"prototype_loss_weight": 1.0, "prototype_loss_scope": "batch"}
CASES["maml"] = {"strategy": "vmap"}
CASES["fomaml"] = {"strategy": "loop"}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("algo", sorted(CASES))
def test_meta_step_and_predict_on_device(algo, device):
    bench = gaussian_benchmark()
    learner = build_for(algo, bench, ways=3, shots=1, options=CASES[algo]).to(device)
    batch = bench.train.sample_batch(4).to(device)
    assert batch.classes.device.type == "cpu"  # the metadata stays behind, as documented
    out = learner.meta_loss(batch)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(p.grad is None or p.grad.device.type == device for p in learner.parameters())
    task = bench.test.fixed_tasks(1)[0].to(device)
    logits = learner.predict(task)
    assert logits.device.type == device and logits.shape[0] == task.query_x.shape[0]
