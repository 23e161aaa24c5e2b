"""attnmeta as a library: any nn.Module, a task family, MAML, the evaluation protocol (about a minute).

    python examples/library_quickstart.py
"""

import torch
from torch import nn

import attnmeta.learners as learners
from attnmeta.eval import evaluate
from attnmeta.tasks import Sinusoid

torch.set_num_threads(1)  # a 40-40 MLP gains nothing from more threads; they only contend on a busy machine
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1))
maml = learners.build("maml", model=model, task_type="regression", inner_lr=0.01, inner_steps=1)
family = Sinusoid(shots=10, queries=10, seed=0)
optimizer = torch.optim.Adam(maml.parameters(), lr=1e-3)

for step in range(500):
    out = maml.meta_loss(family.sample_batch(25))  # outer loss of a meta-batch of 25 tasks
    optimizer.zero_grad()
    out.loss.backward()
    optimizer.step()
    if step % 100 == 0:
        print(f"step {step:4d}  query MSE after adaptation {out.metrics['loss']:.3f}")

test_tasks = Sinusoid(shots=10, queries=100).fixed_tasks(n=200, seed=1)  # same tasks for every learner
print("test:", evaluate(maml, test_tasks))
