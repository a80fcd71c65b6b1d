"""A predictor's task model as an ONNX graph: the backbone's tensor inputs to the task's logits.

:func:`export_onnx` folds the adapter into the base weights in fp32 (:func:`zoo.peft.merge_and_unload`) where
its method is mergeable, and otherwise keeps the method's modules in the graph; the head is part of the
model either way. The graph takes the tensors the backbone's ``collate`` makes (text: ``input_ids`` and
``attention_mask``, dynamic in batch and sequence; vision: ``pixel_values``, dynamic in batch) and
:func:`check_parity` runs it through onnxruntime on shapes other than the export example's, against the
torch model. :class:`OnnxPredictor` predicts through the exported file with the same readers and outputs
as the torch :class:`~zoo.hub.predict.Predictor`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo.errors import ConfigError
from zoo.hub.predict import Predictor

EXPORTERS = ("dynamo", "torchscript")
EXPORT_EXAMPLES = 2
"""Inputs in the example the graph is traced on; the parity shapes differ from it."""
TEXT_PARITY_SHAPES = ((3, 7), (5, 19))
"""(batch, sequence length) of the token inputs the exported graph is checked on."""
VISION_PARITY_BATCHES = (3, 5)
PARITY_ATOL = 1e-4
OPSET = 18
UNMERGEABLE_NOTE = "cannot be folded into the weights, so its modules are exported in the graph"


def require_onnx() -> None:
    """onnx, onnxscript and onnxruntime, or an error that names the extra that installs them."""
    import importlib.util

    missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"{', '.join(missing)} not installed: ONNX export and the onnx runtime need the export extra; "
            f'install it with pip install "zoo-peft[export]"'
        )


class TensorInputs(nn.Module):
    """The task model called on positional tensors (the ONNX graph's inputs) instead of a batch dict."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.model, self.names = model, tuple(names)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(dict(zip(self.names, tensors)))


def input_kind(batch: dict[str, torch.Tensor], domain: str) -> str:
    """``text`` (token ids and their mask) or ``vision`` (one pixel tensor); other inputs are refused."""
    if set(batch) == {"input_ids", "attention_mask"}:
        return "text"
    if set(batch) == {"pixel_values"}:
        return "vision"
    raise ConfigError(
        f"zoo export takes backbones whose inputs are input_ids + attention_mask (text) or pixel_values (vision); "
        f"the {domain} backbone takes {', '.join(batch)}"
    )


def adapter_method(model: nn.Module) -> str | None:
    import zoo.peft as zp

    name = zp.active_adapter(model)
    return zp.list_adapters(model).get(name) if name is not None else None


def adapter_fingerprint(model: nn.Module) -> str:
    """sha256 over the adapter's tensors and the task head (every tensor not of the base backbone), as loaded."""
    from zoo.experiment.fingerprint import state_fingerprint
    from zoo.peft.engine import adapter_modules

    prefixes = tuple(
        f"{name}.{group}." if name else f"{group}."
        for name, module in adapter_modules(model)
        for group in module.adapter_groups
    )
    state = model.state_dict()
    return state_fingerprint(
        {key: value for key, value in state.items() if key.startswith(prefixes) or key.startswith("head.")}
    )


@dataclass
class ExportPlan:
    """What is exported: the torch model as the graph computes it, and what the metadata says of it."""

    model: nn.Module
    names: tuple[str, ...]
    kind: str
    example: dict[str, torch.Tensor]
    method: str | None
    merged: bool
    source: dict[str, Any] = field(default_factory=dict)


def plan_export(predictor: Predictor) -> ExportPlan:
    """The predictor's model in fp32 on the CPU, the adapter merged where its method allows."""
    import zoo.peft as zp
    from zoo.experiment.fingerprint import base_weights_fingerprint

    if getattr(predictor.model, "predict_inputs", None) is not None:
        raise ConfigError(
            f"{predictor.name} predicts each input against the others given (retrieval); zoo export writes "
            f"models that map one input to its outputs"
        )
    model = predictor.model.float().cpu().eval()
    example = predictor.collate(model.backbone.example_inputs(EXPORT_EXAMPLES))
    kind = input_kind(example, predictor.domain)
    method = adapter_method(model)
    source = {
        "model": predictor.name,
        "method": method,
        "base_fingerprint": base_weights_fingerprint(model.backbone),
        "adapter_fingerprint": adapter_fingerprint(model),
    }
    mergeable = method is not None and zp.get_method(method).mergeable
    if mergeable:
        model = zp.merge_and_unload(model)
    return ExportPlan(model.eval(), tuple(example), kind, example, method, mergeable, source)


def _dynamic_shapes(plan: ExportPlan) -> tuple[tuple[dict[int, Any], ...]]:
    batch = torch.export.Dim("batch", min=1)
    if plan.kind == "text":
        sequence = torch.export.Dim("sequence", min=1)
        return (tuple({0: batch, 1: sequence} for _ in plan.names),)  # one entry: forward's *tensors
    return (({0: batch},),)


def _dynamic_axes(plan: ExportPlan) -> dict[str, dict[int, str]]:
    axes = {name: {0: "batch", 1: "sequence"} if plan.kind == "text" else {0: "batch"} for name in plan.names}
    return {**axes, "logits": {0: "batch"}}


def write_graph(plan: ExportPlan, path: Path, exporter: str = "dynamo") -> None:
    """The ONNX file of ``plan`` at ``path`` (weights inside it); a failed export names the exporter and why."""
    if exporter not in EXPORTERS:
        raise ConfigError(f"--exporter {exporter!r}: choose {' or '.join(EXPORTERS)}")
    module = TensorInputs(plan.model, plan.names).eval()
    inputs = tuple(plan.example[name] for name in plan.names)
    try:
        with torch.no_grad():
            if exporter == "dynamo":
                program = torch.onnx.export(
                    module,
                    inputs,
                    input_names=list(plan.names),
                    output_names=["logits"],
                    dynamic_shapes=_dynamic_shapes(plan),
                    opset_version=OPSET,
                    dynamo=True,
                    verbose=False,
                )
                assert program is not None  # dynamo=True without f returns the program
                program.save(str(path), external_data=False)
            else:
                torch.onnx.export(
                    module,
                    inputs,
                    str(path),
                    input_names=list(plan.names),
                    output_names=["logits"],
                    dynamic_axes=_dynamic_axes(plan),
                    opset_version=OPSET,
                    dynamo=False,
                )
    except Exception as error:
        what = f"the {plan.method} adapter {UNMERGEABLE_NOTE}, and " if plan.method and not plan.merged else ""
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = next(
            (line for line in lines if line.startswith("<class")), lines[0] if lines else type(error).__name__
        )
        other = next(name for name in EXPORTERS if name != exporter)
        raise ConfigError(
            f"{what}torch.onnx's {exporter} exporter failed on {type(plan.model.backbone).__name__}: {reason}; "
            f"--exporter {other} tries the other exporter"
        ) from error


def parity_inputs(plan: ExportPlan, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Batches of shapes other than the export example's: random tokens (the last row padded) or pixels."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    if plan.kind == "text":
        backbone: Any = plan.model.backbone  # a TextBackbone; nn.Module types its attributes as Tensor | Module
        vocabulary = int(backbone.model.config.vocab_size)
        for size, length in TEXT_PARITY_SHAPES:
            ids = torch.randint(0, vocabulary, (size, length), generator=generator)
            mask = torch.ones(size, length, dtype=plan.example["attention_mask"].dtype)
            mask[-1, length // 2 :] = 0  # a shorter text in the batch, padded as collate pads it
            batches.append({"input_ids": ids.to(plan.example["input_ids"].dtype), "attention_mask": mask})
    else:
        pixels = plan.example["pixel_values"]
        for size in VISION_PARITY_BATCHES:
            batches.append({"pixel_values": torch.randn(size, *pixels.shape[1:], generator=generator)})
    return batches


def session(path: str | Path):
    """An onnxruntime CPU session of the file at ``path``."""
    require_onnx()
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: the graph's shape notes are not the user's concern
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_session(runner, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    feed = {name: batch[name].cpu().numpy() for name in (item.name for item in runner.get_inputs())}
    return torch.from_numpy(runner.run(["logits"], feed)[0])


def check_parity(plan: ExportPlan, path: Path, atol: float = PARITY_ATOL) -> dict[str, Any]:
    """The exported graph against the torch model on :func:`parity_inputs`: each shape's max abs difference."""
    runner = session(path)
    checks: list[dict[str, Any]] = []
    for batch in parity_inputs(plan):
        with torch.no_grad():
            expected = plan.model(batch).float()
        actual = run_session(runner, batch)
        difference = (actual - expected).abs().max().item() if expected.numel() else 0.0
        checks.append({"shape": list(next(iter(batch.values())).shape), "max_abs_diff": difference})
    worst = max(float(check["max_abs_diff"]) for check in checks)
    return {"atol": atol, "max_abs_diff": worst, "passed": worst <= atol, "checks": checks}


def preprocessing(predictor: Predictor, kind: str) -> dict[str, Any]:
    """What a caller without zoo needs to make the graph's inputs."""
    backbone = predictor.model.backbone
    backbone_name = predictor.config.backbone.name if predictor.config else predictor.domain
    if kind == "text":
        tokenizer = backbone.tokenizer
        return {
            # a tiny run's tokenizer is made by zoo, not named on a hub
            "tokenizer": str(getattr(tokenizer, "name_or_path", "") or f"zoo's tiny {backbone_name} tokenizer"),
            "max_length": int(backbone.max_length),
            "padding_side": str(tokenizer.padding_side),
            "pad_token_id": int(tokenizer.pad_token_id),
            "special_tokens": "added, as the tokenizer adds them by default; texts cut to max_length",
        }
    return {
        "image": {
            key: list(value) if isinstance(value, tuple) else value for key, value in backbone.data_config.items()
        }
    }


def metadata(predictor: Predictor, plan: ExportPlan, exporter: str, parity: dict[str, Any]) -> dict[str, Any]:
    config = predictor.config
    axes = _dynamic_axes(plan)
    return {
        "format": "onnx",
        "exporter": exporter,
        "opset": OPSET,
        "inputs": [
            {"name": name, "dtype": str(plan.example[name].dtype).removeprefix("torch."), "dynamic_axes": axes[name]}
            for name in plan.names
        ],
        "outputs": [{"name": "logits", "dynamic_axes": axes["logits"]}],
        "task_kind": predictor.task_kind,
        "labels": predictor.labels,
        "domain": predictor.domain,
        "backbone": {"name": config.backbone.name, "options": dict(config.backbone.options)} if config else None,
        "preprocessing": preprocessing(predictor, plan.kind),
        "source": {**plan.source, "merged": plan.merged},
        "parity": parity,
    }


def metadata_path(onnx_path: Path) -> Path:
    return onnx_path.with_suffix(".json")


class OnnxPredictor(Predictor):
    """A :class:`Predictor` whose outputs come from an exported graph through onnxruntime."""

    def __init__(self, predictor: Predictor, onnx_path: Path) -> None:
        super().__init__(
            predictor.model,
            predictor.collate,
            predictor.task_kind,
            predictor.labels,
            predictor.domain,
            predictor.name,
            predictor.task,
            predictor.config,
            predictor.input_transform,
        )
        described = metadata_path(onnx_path)
        if not onnx_path.is_file() or not described.is_file():
            raise FileNotFoundError(
                f"{onnx_path} or {described} is missing; write them with zoo export {predictor.name} --out {onnx_path}"
            )
        recorded = json.loads(described.read_text())["source"]["adapter_fingerprint"]
        if recorded != adapter_fingerprint(predictor.model):
            raise ConfigError(
                f"{onnx_path} was exported from another adapter than {predictor.name} (adapter fingerprint "
                f"{recorded}); export it again with zoo export {predictor.name} --out {onnx_path} --force"
            )
        self.runner = session(onnx_path)

    def model_outputs(self, model_inputs: Sequence[Any], batch_size: int = 32) -> torch.Tensor:
        batches = [
            run_session(self.runner, self.collate(list(model_inputs[start : start + batch_size])))
            for start in range(0, len(model_inputs), batch_size)
        ]
        return torch.cat(batches) if batches else torch.empty(0)
