"""Text generation with an encoder-decoder backbone (FLAN-T5), scored with ROUGE-L.

:class:`Seq2SeqModel` wraps the ``T5ForConditionalGeneration`` of a ``flan_t5_*`` backbone.
Training is teacher-forced: the decoder reads the target shifted right (starting from the
decoder start token) and the loss is the token-level cross-entropy of the target, padding
ignored, as in Chung et al. 2022 and the FLAN-T5 PEFT data-scale studies. Evaluation
generates greedily (or with beams) and reports the mean ROUGE-L F-measure against the
references (:func:`zoo.tasks.metrics.rouge_l`).

PEFT methods apply to it like to any model: its T5 blocks are described by the ``hf-t5``
structure (default LoRA targets: q and v of self- and cross-attention).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from zoo.errors import ConfigError
from zoo.tasks import metrics
from zoo.tasks.heads import IGNORE_INDEX
from zoo.tasks.train_tasks import TaskRequest, register_task_builder, unwrap


class Seq2SeqModel(nn.Module):
    """Sequence-to-sequence generation on a FLAN-T5 backbone (``create_backbone("flan_t5_small")``)."""

    main_metric = "rougeL"

    def __init__(self, backbone: nn.Module, max_target_length: int = 128) -> None:
        super().__init__()
        model = getattr(backbone, "model", None)
        if getattr(model, "decoder", None) is None or not hasattr(model, "generate"):
            raise ValueError(
                f"Seq2SeqModel needs an encoder-decoder backbone (flan_t5_small, flan_t5_base) built with "
                f"encoder_only=False; got {type(model).__name__}"
            )
        self.backbone = backbone
        self.max_target_length = max_target_length

    @property
    def model(self) -> nn.Module:
        return self.backbone.model

    @property
    def tokenizer(self):
        return self.backbone.tokenizer

    def collate(self, examples: Sequence[tuple[str, str]]) -> dict[str, torch.Tensor]:
        """Batch of (source, target) pairs: source ids and mask, target ids as ``labels`` (padding = -100)."""
        sources = [source for source, _ in examples]
        targets = [target for _, target in examples]
        batch = self.backbone.collate(sources)
        encoded = self.tokenizer(
            targets, padding=True, truncation=True, max_length=self.max_target_length, return_tensors="pt"
        )
        batch["labels"] = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, IGNORE_INDEX)
        return batch

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Teacher-forced next-token logits (batch, target tokens, vocabulary)."""
        labels = batch["labels"]
        decoder_input_ids = self.model._shift_right(labels)  # start token, then the target; -100 becomes pad
        return self.model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            decoder_input_ids=decoder_input_ids,
            use_cache=False,
        ).logits

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX)

    @torch.no_grad()
    def generate(self, sources: Sequence[str], max_new_tokens: int = 64, num_beams: int = 1) -> list[str]:
        batch = self.backbone.collate(list(sources))
        device = next(self.parameters()).device
        output = self.model.generate(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            do_sample=False,
        )
        return self.tokenizer.batch_decode(output, skip_special_tokens=True)

    def evaluate(
        self, pairs: Sequence[tuple[str, str]], batch_size: int = 16, max_new_tokens: int = 64, num_beams: int = 1
    ) -> dict[str, float]:
        """Mean ROUGE-L F-measure of generated against reference targets over (source, target) pairs."""
        pairs = [pairs[index] for index in range(len(pairs))]  # a list or any Dataset of pairs
        was_training = self.training
        self.eval()
        predictions: list[str] = []
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            predictions += self.generate([source for source, _ in chunk], max_new_tokens, num_beams)
        self.train(was_training)
        return {"rougeL": metrics.rouge_l([target for _, target in pairs], predictions)}


# -- recipes: the "generation" task kind ------------------------------------------------------
GENERATION_OPTIONS = ("max_target_length", "max_new_tokens", "num_beams")


class GenerationTask:
    """TrainTask for :class:`Seq2SeqModel`: teacher-forced cross-entropy, ROUGE-L of greedy (or beam) outputs."""

    main_metric = "rougeL"
    greater_is_better = True

    def __init__(self, model: Seq2SeqModel, max_new_tokens: int = 64, num_beams: int = 1) -> None:
        self.model, self.max_new_tokens, self.num_beams = model, max_new_tokens, num_beams

    def collate(self, examples: Sequence[tuple[str, str]]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        batch = self.model.collate(list(examples))
        return batch, batch["labels"]

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        return unwrap(model).loss(model(batch), labels)

    def evaluate(self, model: nn.Module, dataset, batch_size: int) -> dict[str, float]:
        return unwrap(model).evaluate(dataset, batch_size, self.max_new_tokens, self.num_beams)


@register_task_builder(
    "generation",
    "sequence-to-sequence generation (FLAN-T5): teacher-forced cross-entropy; ROUGE-L",
    backbone_options={"encoder_only": False},
)
def build_generation(backbone: nn.Module, request: TaskRequest) -> tuple[Seq2SeqModel, GenerationTask]:
    unknown = sorted(set(request.options) - set(GENERATION_OPTIONS))
    if unknown:
        valid = ", ".join(f"task.options.{name}" for name in GENERATION_OPTIONS)
        raise ConfigError(f"task generation: unknown task.options {', '.join(unknown)}; valid: {valid}")
    options = dict(request.options)
    model = Seq2SeqModel(backbone, max_target_length=options.pop("max_target_length", 128))
    return model, GenerationTask(model, **options)
