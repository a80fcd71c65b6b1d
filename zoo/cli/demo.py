"""``zoo demo METHOD``: apply a method to a tiny backbone, train it briefly, save and reload it.

A smoke job that needs no download: the backbone is built from a small configuration
with random weights and the task is synthetic, so it shows the whole adapter life cycle
(inject, train, report, save, load, compare) in seconds on a CPU.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("demo", help="train a PEFT method on a tiny random backbone (no download)")
    parser.add_argument("method", help="a method from `zoo ls methods`")
    parser.add_argument("--backbone", choices=("bert", "vit"), default="bert")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="where the adapter is saved")
    parser.add_argument(
        "--option",
        "-o",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="method option, e.g. -o r=16 (values are parsed as JSON when they can be)",
    )
    parser.set_defaults(run=run)


def _options(pairs: list[str]) -> dict:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"option {pair!r} must look like KEY=VALUE, e.g. r=16")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def _backbone(kind: str) -> tuple[torch.nn.Module, dict, torch.Tensor]:
    import torch

    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    if kind == "bert":
        from transformers import BertConfig, BertForSequenceClassification

        config = BertConfig(
            vocab_size=200,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            num_labels=2,
        )
        model = BertForSequenceClassification(config)
        input_ids = torch.randint(1, 200, (32, 16), generator=generator)
        labels = (input_ids[:, 0] % 2).long()  # learnable from the first token
        return model, {"input_ids": input_ids}, labels
    import timm

    vit = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        num_classes=2,
        img_size=32,
        patch_size=8,
        depth=2,
        embed_dim=64,
        num_heads=4,
    )
    images = torch.randn(32, 3, 32, 32, generator=generator)
    labels = (images[:, 0].mean(dim=(1, 2)) > 0).long()
    return vit, {"x": images}, labels


def run(args: argparse.Namespace) -> int:
    import torch

    import zoo.peft as zp

    model, inputs, labels = _backbone(args.backbone)
    base = copy.deepcopy(model)
    zp.apply(model, args.method, **_options(args.option))
    print(f"{args.method} on tiny {args.backbone}: {zp.parameter_report(model)}")
    logits = (lambda m: m(**inputs).logits) if args.backbone == "bert" else (lambda m: m(inputs["x"]))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for step in range(args.steps):
        loss = torch.nn.functional.cross_entropy(logits(model), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step == 0 or (step + 1) % 10 == 0:
            print(f"step {step + 1:>4}  loss {loss.item():.4f}")
    model.eval()
    zp.save_adapter(model, args.out)
    reloaded = zp.load_adapter(base.eval(), args.out)
    with torch.no_grad():
        same = torch.equal(logits(model), logits(reloaded))
    print(f"saved to {args.out}; reloaded adapter reproduces outputs exactly: {same}")
    return 0 if same else 1
