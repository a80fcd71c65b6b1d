"""Sparse fine-tuning against dense references: masks from torch.topk, masked dense updates."""

import copy

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

import zoo.peft as zp
from tests.peft.method_checks import check_loss_decreases, vit_batch
from tests.peft.test_lora import randomise_trainable
from zoo.errors import ConfigError
from zoo.peft.engine import peft_state


def inputs_of(batch):
    return {k: batch[k] for k in ("input_ids", "attention_mask")}


def block_linears(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and ".layer." in n}


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 3))


def test_trainable_count_is_density_times_numel(bert):
    linears = block_linears(bert)
    assert len(linears) == 2 * 6
    zp.apply(bert, "sparse", density=0.3)
    expected = sum(max(1, int(0.3 * m.weight.numel() + 0.5)) for m in linears.values())
    head = 32 * 3 + 3
    assert sum(p.numel() for p in bert.parameters() if p.requires_grad) == expected + head
    assert zp.parameter_report(bert).trainable == expected + head
    trainable = {n for n, p in bert.named_parameters() if p.requires_grad and "classifier" not in n}
    assert trainable == {f"{n}.sparse_delta.default.values" for n in linears}


def test_magnitude_selection_is_top_abs_weight():
    model = mlp()
    base = copy.deepcopy(model)
    zp.apply(model, "sparse", density=0.25, target_modules=["0", "2"], modules_to_save=[])
    for index in (0, 2):
        weight = base[index].weight
        k = int(0.25 * weight.numel() + 0.5)  # round half up, at least 1
        expected = torch.topk(weight.abs().flatten(), k).indices
        assert torch.equal(model[index].sparse_delta["default"].indices, expected.sort().values)


def test_forward_matches_dense_scatter():
    model = mlp()
    base = copy.deepcopy(model)
    zp.apply(model, "sparse", density=0.5, selection="random", seed=3, target_modules=["0", "2"], modules_to_save=[])
    randomise_trainable(model, seed=1)
    weights = []
    for index in (0, 2):
        delta = model[index].sparse_delta["default"]
        dense = base[index].weight.detach().clone().flatten()
        for position, value in zip(delta.indices.tolist(), delta.values.tolist()):
            dense[position] += value
        weights.append(dense.view_as(base[index].weight))
    x = torch.randn(4, 6)
    expected = F.linear(torch.tanh(F.linear(x, weights[0], base[0].bias)), weights[1], base[2].bias)
    torch.testing.assert_close(model(x), expected)


def test_only_masked_entries_change_and_match_masked_dense_sgd():
    model = mlp()
    base = copy.deepcopy(model)
    zp.apply(model, "sparse", density=0.2, target_modules=["0", "2"], modules_to_save=[])
    x, target = torch.randn(8, 6), torch.randn(8, 3)
    # Dense reference: train W itself with its gradient masked.
    masks = {}
    for index in (0, 2):
        mask = torch.zeros(base[index].weight.numel(), dtype=torch.bool)
        mask[model[index].sparse_delta["default"].indices] = True
        masks[index] = mask.view_as(base[index].weight)
    reference = copy.deepcopy(base)
    for p in reference.parameters():
        p.requires_grad_(False)
    dense_weights = [reference[i].weight for i in (0, 2)]
    for w in dense_weights:
        w.requires_grad_(True)
    ours = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    theirs = torch.optim.SGD(dense_weights, lr=0.5)
    for _ in range(3):
        ours.zero_grad()
        F.mse_loss(model(x), target).backward()
        ours.step()
        theirs.zero_grad()
        F.mse_loss(reference(x), target).backward()
        for index, w in zip((0, 2), dense_weights):
            w.grad *= masks[index]
        theirs.step()
    for index in (0, 2):
        effective = model[index].effective_weight("default").detach()
        changed = effective != base[index].weight
        assert changed.any() and not (changed & ~masks[index]).any()
        torch.testing.assert_close(effective, reference[index].weight.detach())
    # AdamW (with weight decay on the deltas) changes no entry outside the mask either
    adamw = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    F.mse_loss(model(x), target).backward()
    adamw.step()
    for index in (0, 2):
        changed = model[index].effective_weight("default").detach() != base[index].weight
        assert not (changed & ~masks[index]).any()


def test_gradient_selection_uses_summed_abs_gradients():
    model = mlp()
    base = copy.deepcopy(model)
    batches = [(torch.randn(5, 6, generator=torch.Generator().manual_seed(i)), torch.randn(5, 3)) for i in range(2)]

    def calibration(m):
        return (F.mse_loss(m(x), y) for x, y in batches)

    zp.apply(
        model,
        "sparse",
        density=0.3,
        selection="gradient",
        calibration=calibration,
        target_modules=["0", "2"],
        modules_to_save=[],
    )
    assert peft_state(model).adapters["default"].config.calibration is None
    scores = [torch.zeros_like(base[i].weight) for i in (0, 2)]
    for x, y in batches:
        base.zero_grad()
        F.mse_loss(base(x), y).backward()
        for score, index in zip(scores, (0, 2)):
            score += base[index].weight.grad.abs()
    for score, index in zip(scores, (0, 2)):
        expected = torch.topk(score.flatten(), round(0.3 * score.numel())).indices.sort().values
        assert torch.equal(model[index].sparse_delta["default"].indices, expected)
    # calibration leaves no gradient and no requires_grad behind on the base weights
    assert model[0].base_layer.weight.grad is None and not model[0].base_layer.weight.requires_grad


def test_gradient_selection_with_a_single_loss(bert, token_batch):
    zp.apply(bert, "sparse", density=0.1, selection="gradient", calibration=lambda m: m(**token_batch).loss)
    layer = bert.bert.encoder.layer[0].attention.self.query
    assert layer.sparse_delta["default"].indices.numel() == round(0.1 * 32 * 32)
    bert(**inputs_of(token_batch))


def test_gradient_selection_without_calibration_refuses_to_run(bert, token_batch):
    zp.apply(bert, "sparse", selection="gradient")
    with pytest.raises(ConfigError, match="calibration"):
        bert(**inputs_of(token_batch))


def test_save_load_restores_indices_and_values(bert, token_batch, tmp_path):
    base = copy.deepcopy(bert)
    zp.apply(bert, "sparse", density=0.2, selection="gradient", calibration=lambda m: m(**token_batch).loss)
    randomise_trainable(bert, seed=2, std=0.2)
    zp.save_adapter(bert, tmp_path / "adapter")
    keys = set(load_file(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert "base_model.model.bert.encoder.layer.0.attention.self.query.sparse_delta.indices" in keys
    assert "base_model.model.bert.encoder.layer.0.attention.self.query.sparse_delta.values" in keys
    loaded = zp.load_adapter(base, tmp_path / "adapter")  # no calibration: the indices come from the file
    for (name, ours), (_, theirs) in zip(bert.named_buffers(), loaded.named_buffers()):
        assert torch.equal(ours, theirs), name
    assert torch.equal(loaded(**inputs_of(token_batch)).logits, bert(**inputs_of(token_batch)).logits)


def test_random_selection_is_seeded(bert):
    first, second, third = bert, copy.deepcopy(bert), copy.deepcopy(bert)
    for model, seed in ((first, 1), (second, 1), (third, 2)):
        zp.apply(model, "sparse", selection="random", seed=seed, density=0.5)
    indices = [m.bert.encoder.layer[1].output.dense.sparse_delta["default"].indices for m in (first, second, third)]
    assert torch.equal(indices[0], indices[1]) and not torch.equal(indices[0], indices[2])
    assert indices[0].unique().numel() == indices[0].numel() == round(0.5 * 64 * 32)


def test_merge_unmerge(bert, token_batch):
    base = copy.deepcopy(bert)
    zp.apply(bert, "sparse", density=0.6)
    randomise_trainable(bert, seed=3, std=0.2)
    unmerged = bert(**inputs_of(token_batch)).logits
    zp.merge(bert)
    torch.testing.assert_close(bert(**inputs_of(token_batch)).logits, unmerged, atol=1e-5, rtol=1e-5)
    zp.unmerge(bert)
    restored = zp.unload(copy.deepcopy(bert)).state_dict()
    for name, original in base.state_dict().items():
        assert torch.equal(restored[name], original), name
    plain = zp.merge_and_unload(bert)
    assert not any("sparse" in n for n, _ in plain.named_parameters())
    torch.testing.assert_close(plain(**inputs_of(token_batch)).logits, unmerged, atol=1e-5, rtol=1e-5)


def test_composes_with_lora(bert, token_batch):
    zp.apply(bert, "lora", adapter_name="l", r=2, target_modules=["query"])
    zp.apply(bert, "sparse", adapter_name="s", density=0.2)
    query = bert.bert.encoder.layer[0].attention.self.query
    assert type(query).__name__ == "SparseLayer" and type(query.base_layer).__name__ == "LoraLayer"
    randomise_trainable(bert, seed=4, std=0.2)
    with torch.no_grad():
        expected = F.linear(torch.ones(1, 32), query.effective_weight("s"), query.bias)
    torch.testing.assert_close(query(torch.ones(1, 32)), expected)


def test_a_few_steps_lower_the_loss(vit, image_batch):
    zp.apply(vit, "sparse", density=0.2)
    vit.train()
    check_loss_decreases(vit, vit_batch(image_batch))


@pytest.mark.parametrize(
    "options, name",
    [
        ({"density": 0}, "density"),
        ({"density": 1.5}, "density"),
        ({"density": -0.1}, "density"),
        ({"selection": "fisher"}, "selection"),
        ({"calibration": 3}, "calibration"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_bad_options_name_the_option(bert, options, name):
    with pytest.raises(ConfigError, match=rf"sparse: {name}="):
        zp.apply(bert, "sparse", **options)


def test_density_one_trains_every_entry():
    model = mlp()
    zp.apply(model, "sparse", density=1.0, target_modules=["2"], modules_to_save=[])
    assert torch.equal(model[2].sparse_delta["default"].indices, torch.arange(30))
