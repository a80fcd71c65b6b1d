"""Every registered method on a tiny BERT and a tiny ViT: the contract each must keep.

Adding a method adds it here automatically: what each test expects of it (identity at init,
options for these tiny models) comes from its registration.
"""

import copy

import pytest
import torch
import torch.nn.functional as F

import zoo.peft as zp
from tests.conftest import tiny_bert, tiny_vit
from tests.peft.method_checks import small_options
from zoo.peft.layers import logical_path

METHODS = zp.list_methods()
STARTS_AT_IDENTITY = [m for m in METHODS if zp.get_method(m).starts_at_identity]
BACKBONES = {"bert": tiny_bert, "vit": tiny_vit}


def forward(kind, model, batch):
    if kind == "bert":
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return model(batch["images"])


@pytest.fixture(params=sorted(BACKBONES))
def setup(request):
    kind = request.param
    generator = torch.Generator().manual_seed(5)
    if kind == "bert":
        ids = torch.randint(0, 100, (6, 8), generator=generator)
        mask = torch.ones_like(ids)
        mask[0, 5:] = 0
        batch = {"input_ids": ids, "attention_mask": mask}
    else:
        batch = {"images": torch.randn(6, 3, 32, 32, generator=generator)}
    batch["labels"] = torch.tensor([0, 1, 2, 0, 1, 2])
    return kind, BACKBONES[kind](), batch


def apply(kind, model, method):
    return zp.apply(model, method, **small_options(method))


@pytest.mark.parametrize("method", METHODS)
def test_only_intended_parameters_train(setup, method):
    kind, model, _ = setup
    base_names = {n for n, _ in model.named_parameters()}
    apply(kind, model, method)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, f"{method} trains nothing"
    if method == "full":
        assert trainable == {n for n, _ in model.named_parameters()}
        return
    # No original backbone tensor trains: every trainable tensor is a new, per-adapter one.
    for name in trainable:
        assert ".default" in name, f"{method}: {name} is trainable but belongs to no adapter"
    frozen_originals = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert {logical_path(n) for n in frozen_originals} >= base_names - {
        n for n in base_names if n.startswith(("classifier", "head"))
    }


@pytest.mark.parametrize("method", STARTS_AT_IDENTITY)
def test_identity_at_init(setup, method):
    kind, model, batch = setup
    base = copy.deepcopy(model)
    apply(kind, model, method)
    with torch.no_grad():
        torch.testing.assert_close(forward(kind, model, batch), forward(kind, base, batch), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_optimizer_steps_lower_the_loss(setup, method):
    kind, model, batch = setup
    apply(kind, model, method)
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(8):
        loss = F.cross_entropy(forward(kind, model, batch), batch["labels"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], f"{method}: loss went {losses}"


@pytest.mark.parametrize("method", METHODS)
def test_save_load_reproduces_outputs_exactly(setup, method, tmp_path):
    kind, model, batch = setup
    base = copy.deepcopy(model)
    apply(kind, model, method)
    generator = torch.Generator().manual_seed(9)
    with torch.no_grad():  # move every trainable tensor away from its initial value
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    model.eval()
    zp.save_adapter(model, tmp_path / "adapter")
    loaded = zp.load_adapter(base, tmp_path / "adapter")
    with torch.no_grad():
        assert torch.equal(forward(kind, loaded, batch), forward(kind, model, batch))


@pytest.mark.parametrize("method", sorted(set(METHODS) - {"full"}))
def test_disable_gives_the_base_model(setup, method):
    kind, model, batch = setup
    base = copy.deepcopy(model)
    apply(kind, model, method)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.1)
        with zp.disabled(model):
            assert torch.equal(forward(kind, model, batch), forward(kind, base, batch))
