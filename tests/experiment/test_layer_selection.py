"""method.layers=auto:K: blocks ranked by the gradient norm of the method's parameters, the K best
trained, the choice recorded so the adapter reloads the same way."""

import json

import pytest
import torch

import zoo
from zoo.experiment.layer_selection import block_importance, most_important


def test_most_important_keeps_block_order_and_prefers_the_earlier_block_on_ties():
    assert most_important([0.1, 0.9, 0.5, 0.9], 2) == [1, 3]
    assert most_important([0.2, 0.2, 0.1], 1) == [0]
    assert most_important([3.0, 1.0, 2.0], 3) == [0, 1, 2]


def test_importance_is_the_gradient_norm_of_each_blocks_trainable_parameters():
    """Against torch.autograd.grad on a two-block model with a hand-written loss."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 1))
    data = [(torch.randn(3), torch.randn(1)) for _ in range(8)]

    class Task:
        @staticmethod
        def collate(items):
            return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])

        @staticmethod
        def loss(model, batch, labels):
            return ((model(batch) - labels) ** 2).mean()

    scores = block_importance(model, Task, data, ["0", "1"], batches=1, batch_size=8, seed=0)
    batch, labels = Task.collate(data)  # one batch holds the whole (shuffled) set; the mean loss ignores order
    grads = torch.autograd.grad(Task.loss(model, batch, labels), list(model.parameters()))
    expected = [torch.cat([g.flatten() for g in grads[:2]]).norm(), torch.cat([g.flatten() for g in grads[2:]]).norm()]
    assert scores == pytest.approx([float(e) for e in expected], rel=1e-5)
    assert all(p.grad is None for p in model.parameters())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("layers")
    made = {}
    for label, extra in {"all": [], "last": ["method.layers=last:1"], "auto": ["method.layers=auto:1"]}.items():
        made[label] = zoo.run("text/sst2-lora", ["scale=tiny", *extra], out=root / label, log=None)
    return made


def test_last_one_trains_fewer_parameters_than_every_block(runs):
    assert runs["last"].record.parameters.trainable < runs["all"].record.parameters.trainable


def test_auto_trains_the_most_important_block_and_the_adapter_remembers_it(runs):
    selection = runs["auto"].record.layer_selection
    scores = selection["importance"]
    assert selection["chosen"] == [max(range(len(scores)), key=lambda i: (scores[i], -i))]
    adapter = json.loads((runs["auto"].dir / "adapter" / "adapter_config.json").read_text())
    assert adapter["zoo"]["config"]["layers"] == selection["chosen"]
    built = runs["auto"].build()
    blocks = {int(n.split(".layer.")[1].split(".")[0]) for n, _ in built.model.named_parameters() if "lora_A" in n}
    assert blocks == set(selection["chosen"])
