"""The stacked mixed path (zoo.peft.stacked_rows): LoRA/DoRA Linear layers compute a mixed batch
from every adapter's factors side by side. Each row is checked against the model run with that
row's adapter alone, with the general per-adapter path made to fail so the stacked one is what ran;
where it must not run (too many adapters, gradients on, training dropout) the general path does."""

import pytest
import torch

import zoo.peft as zp
import zoo.peft.lora as lora_module
import zoo.peft.stacked_rows as stacked_rows
from tests.peft.test_mixed_batch import (
    BACKBONES,
    HIDDEN,
    MIXED_ROWS,
    TOY_STRUCTURE,
    SequenceFirstToy,
    add_adapters,
    check_rows,
    make_batch,
    run,
)


def adapters(method, kind):
    slices = {"target_modules": ["qkv[q,v]"]} if kind == "vit" else {}
    mixed_kinds = [method, method, "lora"]  # a plain LoRA beside DoRA in the same layers
    return [
        (name, kind_of, dict(slices, r=r, lora_alpha=2 * r)) for name, kind_of, r in zip("abc", mixed_kinds, (2, 3, 2))
    ]


@pytest.fixture
def stacked_only(monkeypatch):
    """The general path fails if a LoRA layer reaches it."""
    calls = []

    def general(layer, *args):
        calls.append(layer)
        raise AssertionError("the general mixed path ran")

    monkeypatch.setattr(lora_module, "mixed_forward", general)
    return calls


@pytest.mark.parametrize("kind", sorted(BACKBONES))
@pytest.mark.parametrize("method", ["lora", "dora"])
def test_stacked_rows_equal_each_adapter_alone(kind, method, stacked_only):
    model = add_adapters(BACKBONES[kind]().eval(), adapters(method, kind))
    batch = make_batch(kind)
    check_rows(model, lambda: run(kind, model, batch), MIXED_ROWS)
    check_rows(model, lambda: run(kind, model, batch), ["c", "c", "a", None, "c", "a"])  # b held, unused
    assert not stacked_only


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_the_kept_stack_follows_a_change_of_the_weights(method, stacked_only):
    model = add_adapters(BACKBONES["bert"]().eval(), adapters(method, "bert"))
    batch = make_batch("bert")
    check_rows(model, lambda: run("bert", model, batch), MIXED_ROWS)
    changed = [p for n, p in model.named_parameters() if n.endswith(("lora_B.a.weight", "lora_magnitude_vector.a"))]
    assert changed
    with torch.no_grad():
        for parameter in changed:
            parameter.mul_(-2.0)  # in place: the stack kept from the last batch is stale
    check_rows(model, lambda: run("bert", model, batch), MIXED_ROWS)


def test_sequence_first_rows_lie_along_axis_1(stacked_only):
    torch.manual_seed(0)
    model = SequenceFirstToy().eval()
    options = {"r": 2, "target_modules": ["fc1", "fc2"], "structure": TOY_STRUCTURE}
    # DoRA first: its layer then holds the LoRA adapter too (a LoRA layer first would be wrapped by DoRA's)
    add_adapters(model, [("a", "dora", options), ("b", "lora", dict(options, r=3)), ("c", "dora", options)])
    x = torch.randn(5, 6, HIDDEN, generator=torch.Generator().manual_seed(3))
    padding = torch.zeros(6, 5)
    check_rows(model, lambda: model(x, padding, None), MIXED_ROWS)


_general = lora_module.mixed_forward


def test_with_gradients_on_the_general_path_runs(monkeypatch):
    model = add_adapters(BACKBONES["bert"]().eval(), adapters("lora", "bert"))
    batch = make_batch("bert")
    stacked = check_rows(model, lambda: run("bert", model, batch), MIXED_ROWS)
    general = []
    monkeypatch.setattr(lora_module, "mixed_forward", lambda layer, *a: general.append(layer) or _general(layer, *a))
    with zp.mixed(model, MIXED_ROWS):
        with_grad = run("bert", model, batch)
    assert general and with_grad.requires_grad
    torch.testing.assert_close(with_grad.detach(), stacked, atol=1e-5, rtol=1e-5)


def test_training_dropout_takes_the_general_path(monkeypatch):
    model = add_adapters(BACKBONES["bert"](), [("a", "lora", {"lora_dropout": 0.5}), ("b", "lora", {})])
    model.train()
    general = []
    monkeypatch.setattr(lora_module, "mixed_forward", lambda layer, *a: general.append(layer) or _general(layer, *a))
    with torch.no_grad(), zp.mixed(model, ["a", "b", None, "a", "b", "a"]):
        run("bert", model, make_batch("bert"))
    assert general


def test_the_stack_is_counted_for_a_memory_bound_and_dropped_with_an_adapter(stacked_only):
    model = add_adapters(BACKBONES["bert"]().eval(), adapters("lora", "bert"))
    batch = make_batch("bert")
    check_rows(model, lambda: run("bert", model, batch), MIXED_ROWS)
    layers = [m for _, m in model.named_modules() if isinstance(m, lora_module.LoraLayer)]
    assert layers and all("_stack" in layer.__dict__ for layer in layers)
    factors = sum(p.numel() * 4 for n, p in model.named_parameters() if ".lora_A.a." in n or ".lora_B.a." in n)
    assert stacked_rows.stack_bytes(model, "a") == factors > 0
    zp.delete_adapter(model, "b")
    assert not any("_stack" in layer.__dict__ for layer in layers)
    check_rows(model, lambda: run("bert", model, batch), ["a", "c", None, "c", "a", "a"])
