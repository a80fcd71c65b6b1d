"""LoReFT against h + R^T (W h + b - R h) applied by hand to the base blocks' outputs."""

import copy

import pytest
import torch

import zoo.peft as zp
from tests.peft.method_checks import (
    bert_batch,
    check_disable_exact,
    check_loss_decreases,
    check_save_load_exact,
    logits,
    perturb_trainable,
    trainable_names,
    vit_batch,
)
from zoo.errors import ConfigError
from zoo.peft.loreft import position_mask


def raw_tensors(block):
    """R, W, b of adapter 'default' as plain tensors."""
    intervention = block.zoo_loreft
    rotate = intervention.rotate_layer["default"].weight.detach()
    source = intervention.learned_source["default"]
    return rotate, source.weight.detach(), source.bias.detach()


def reference_logits(base, base_blocks, adapted_blocks, selected, run):
    """Run ``base`` with hand-written edits on the outputs of ``base_blocks``; ``selected`` is a
    (batch, tokens) bool of edited positions, or None for all."""
    handles = []
    for base_block, adapted_block in zip(base_blocks, adapted_blocks):
        r, w, b = raw_tensors(adapted_block)

        def edit(module, args, output, r=r, w=w, b=b):
            h = output[0] if isinstance(output, tuple) else output
            delta = torch.einsum(
                "rd,btr->btd", r, torch.einsum("rd,btd->btr", w, h) + b - torch.einsum("rd,btd->btr", r, h)
            )
            if selected is not None:
                delta = delta * selected[..., None]
            # transformers 4 blocks return a tuple (hidden, ...), transformers 5 ones a tensor
            return (h + delta, *output[1:]) if isinstance(output, tuple) else h + delta

        handles.append(base_block.register_forward_hook(edit))
    try:
        with torch.no_grad():
            return run(base)
    finally:
        for handle in handles:
            handle.remove()


def test_bert_all_layers_first_and_last_positions(bert, token_batch):
    base = copy.deepcopy(bert)
    zp.apply(bert, "loreft", r=3, positions="f1+l2", modules_to_save=[])
    perturb_trainable(bert, std=0.3)
    # rows have 9 tokens; row 1 is padded after 6, so its last two real tokens are 4 and 5
    selected = torch.zeros(4, 9, dtype=torch.bool)
    selected[:, 0] = True
    selected[[0, 2, 3], 7:] = True
    selected[1, 4:6] = True
    expected = reference_logits(
        base, base.bert.encoder.layer, bert.bert.encoder.layer, selected, lambda m: logits(m, token_batch)
    )
    with torch.no_grad():
        torch.testing.assert_close(logits(bert, token_batch), expected, atol=1e-5, rtol=1e-4)


def test_left_padding_counts_from_the_real_tokens(bert):
    base = copy.deepcopy(bert)
    zp.apply(bert, "loreft", positions="f2+l1", modules_to_save=[])
    perturb_trainable(bert, std=0.3)
    batch = {
        "input_ids": torch.randint(0, 100, (2, 6), generator=torch.Generator().manual_seed(0)),
        "attention_mask": torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]]),
    }
    selected = torch.tensor([[False, False, True, True, False, True], [True, True, False, False, False, True]])
    assert torch.equal(position_mask((2, 1), 2, 6, batch["attention_mask"], "cpu"), selected)
    expected = reference_logits(
        base, base.bert.encoder.layer, bert.bert.encoder.layer, selected, lambda m: logits(m, batch)
    )
    with torch.no_grad():
        torch.testing.assert_close(logits(bert, batch), expected, atol=1e-5, rtol=1e-4)


def test_vit_chosen_layers_all_positions(vit, image_batch):
    base = copy.deepcopy(vit)
    zp.apply(vit, "loreft", r=2, layers=[1], modules_to_save=[])
    perturb_trainable(vit, std=0.3)
    assert not hasattr(vit.blocks[0], "zoo_loreft")
    expected = reference_logits(base, [base.blocks[1]], [vit.blocks[1]], None, lambda m: m(image_batch[0]))
    with torch.no_grad():
        torch.testing.assert_close(vit(image_batch[0]), expected, atol=1e-5, rtol=1e-4)


def test_rotation_rows_stay_orthonormal_while_training(vit, image_batch):
    zp.apply(vit, "loreft", r=4)
    initial = vit.blocks[0].zoo_loreft.rotate_layer["default"].weight.detach().clone()
    check_loss_decreases(vit, vit_batch(image_batch))  # AdamW with its default weight decay
    for block in vit.blocks:
        rotate = block.zoo_loreft.rotate_layer["default"].weight
        assert rotate.shape == (4, 32)
        torch.testing.assert_close(rotate @ rotate.T, torch.eye(4), atol=1e-5, rtol=0)
    assert not torch.allclose(vit.blocks[0].zoo_loreft.rotate_layer["default"].weight, initial)


def test_trainable_parameters(bert):
    zp.apply(bert, "loreft", r=2, layers=[0], modules_to_save=[])
    prefix = "bert.encoder.layer.0.zoo_loreft"
    assert trainable_names(bert) == {
        f"{prefix}.rotate_layer.default.parametrizations.weight.original",
        f"{prefix}.learned_source.default.weight",
        f"{prefix}.learned_source.default.bias",
    }


@pytest.mark.parametrize("kind", ["bert", "vit"])
def test_train_save_load_disable(kind, bert, vit, token_batch, image_batch, tmp_path):
    model, batch = (bert, bert_batch(token_batch)) if kind == "bert" else (vit, vit_batch(image_batch))
    base = copy.deepcopy(model)
    zp.apply(model, "loreft", r=2, positions="f2+l2")
    with torch.no_grad():
        assert not torch.allclose(logits(model, batch), logits(base, batch))  # not identity at init
    check_loss_decreases(model, batch)
    perturb_trainable(model)
    check_save_load_exact(base, model, batch, tmp_path / "adapter")
    check_disable_exact(base, model, batch)
    zp.unload(model)
    with torch.no_grad():
        assert torch.equal(logits(model, batch), logits(base, batch))
    assert not any("zoo_loreft" in n for n, _ in model.named_modules())


@pytest.mark.parametrize(
    "options, option_name",
    [
        ({"r": 0}, "r="),
        ({"r": 64}, "r="),
        ({"layers": [5]}, "layers"),
        ({"layers": "some"}, "layers"),
        ({"positions": "first3"}, "positions"),
        ({"positions": "+"}, "positions"),
        ({"target_modules": ["query"]}, "target_modules"),
    ],
)
def test_bad_options(bert, options, option_name):
    with pytest.raises(ConfigError, match=option_name):
        zp.apply(bert, "loreft", **options)


def test_mask_inside_a_batch_dict_is_used(bert):
    """Models called with one batch dict (zoo's TaskModel) carry the attention mask inside it."""

    class DictModel(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, batch):
            return self.inner(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    base = copy.deepcopy(bert)
    model = DictModel(bert)
    zp.apply(model, "loreft", positions="l1", structure="hf-bert", modules_to_save=[])
    perturb_trainable(model, std=0.3)
    batch = {
        "input_ids": torch.randint(0, 100, (2, 5), generator=torch.Generator().manual_seed(0)),
        "attention_mask": torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]),
    }
    selected = torch.tensor([[False, False, True, False, False], [False, False, False, False, True]])
    expected = reference_logits(
        base, base.bert.encoder.layer, bert.bert.encoder.layer, selected, lambda m: logits(m, batch)
    )
    with torch.no_grad():
        torch.testing.assert_close(model(batch), expected, atol=1e-5, rtol=1e-4)
