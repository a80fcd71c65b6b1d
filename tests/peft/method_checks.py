"""Contract checks shared by the per-method test files: what trains, training lowers the
loss, a saved adapter reloads onto a fresh base with exactly the same outputs, and
disabling gives exactly the base outputs."""

import copy

import torch
import torch.nn.functional as F

import zoo.peft as zp


def logits(model, batch):
    if "input_ids" in batch:
        return model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits
    return model(batch["images"])


def bert_batch(token_batch):
    return dict(token_batch)


def vit_batch(image_batch):
    images, labels = image_batch
    return {"images": images, "labels": labels}


def trainable_names(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def perturb_trainable(model, seed=0, std=0.1):
    """Move every trainable tensor away from its initial value, reproducibly."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * std)


def check_loss_decreases(model, batch, steps=8, lr=1e-2):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(logits(model, batch), batch["labels"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


def check_save_load_exact(base, model, batch, adapter_dir):
    """``base`` is an untouched copy of the backbone ``model`` was adapted from."""
    fresh = copy.deepcopy(base)
    zp.save_adapter(model, adapter_dir)
    loaded = zp.load_adapter(fresh, adapter_dir)
    with torch.no_grad():
        assert torch.equal(logits(loaded, batch), logits(model, batch))


def check_disable_exact(base, model, batch):
    with torch.no_grad():
        adapted = logits(model, batch)
        with zp.disabled(model):
            disabled = logits(model, batch)
        assert torch.equal(disabled, logits(base, batch))
        assert torch.equal(logits(model, batch), adapted)  # re-enabling restores the adapter


SMALL_OPTIONS = {
    "sparse": {"density": 0.2},
    "kadaptation": {"n": 4},
    "vpt": {"num_prompts": 2},
    "prefix": {"num_virtual_tokens": 2},
    "unipelt": {"num_virtual_tokens": 2},
}
"""Options that keep a method small on the tiny backbones of the test matrices (defaults otherwise)."""


def small_options(method: str) -> dict:
    return dict(SMALL_OPTIONS.get(method, {}))
