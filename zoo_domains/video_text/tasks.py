"""Text-to-video retrieval with a symmetric contrastive loss (CLIP, Radford et al. 2021,
arXiv:2103.00020; for video, CLIP4Clip, Luo et al. 2021, arXiv:2104.08860).

Each pair i gives a video embedding v_i (frame embeddings averaged over time) and a caption
embedding t_i, both L2-normalised. With a learnable log-scale tau (CLIP's ``logit_scale``,
exp(tau) clamped to 100 as in CLIP),

    S_ij = exp(tau) * t_i . v_j        (text i against video j)
    L = (CE(S, I) + CE(S^T, I)) / 2    (symmetric InfoNCE, the true pairs on the diagonal)

Pairs in a batch that show the same video as pair i (same label) are left out of pair i's
negatives, since MSR-VTT trains on several captions per video. The scale lives in a module
named ``temperature``, which PEFT methods train and save with the adapter like a task head.

Evaluation ranks, for every caption, all videos of the split (text-to-video R@1/5/10 and
median rank, :func:`zoo.tasks.metrics.retrieval_metrics`).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from zoo.errors import ConfigError, DataError
from zoo.tasks import metrics
from zoo.tasks.heads import TaskSpec
from zoo.tasks.train_tasks import ModelTask, TaskRequest, register_task_builder
from zoo_domains.video_text.backbones import clip_tokenizer

MAX_LOGIT_SCALE = math.log(100.0)

metrics.register_lower_is_better("median_rank")  # rank 1 is the best retrieval


class Temperature(nn.Module):
    """exp(logit_scale), clamped to at most 100."""

    def __init__(self, logit_scale: float = math.log(1 / 0.07)) -> None:
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale)))

    def forward(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()


def similarity(outputs: torch.Tensor) -> torch.Tensor:
    """(texts, videos) cosine similarities from stacked outputs (N, 2, D) = [video, text]."""
    return outputs[:, 1] @ outputs[:, 0].T


def contrastive_loss(outputs: torch.Tensor, scale: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    logits = scale * similarity(outputs)
    if labels is not None:
        labels = labels.to(logits.device)
        same_video = labels[:, None] == labels[None, :]
        same_video.fill_diagonal_(False)
        logits = logits.masked_fill(same_video, float("-inf"))
    targets = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def _distinct(names: list[str]) -> list[str]:
    """The names, a repeated one numbered (``clip.npy``, ``clip.npy (2)``), so each keys its own score."""
    seen: dict[str, int] = {}
    distinct = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        distinct.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    return distinct


def retrieval_evaluate(outputs: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, float]:
    """Text-to-video metrics over a whole split. A video paired with several captions appears
    once per pair; its copies score exactly as the true one, and ranks count only videos
    scored strictly higher, so the copies do not count against a caption."""
    return metrics.retrieval_metrics(similarity(outputs.float()))


class RetrievalModel(nn.Module):
    """A video-text backbone with CLIP's contrastive objective.

    ``forward(batch)`` returns the L2-normalised embeddings stacked as (B, 2, D): [video, text];
    ``loss(outputs, labels)`` is the symmetric InfoNCE above (labels: video index of each pair).
    """

    def __init__(self, backbone: nn.Module, logit_scale: float | None = None) -> None:
        super().__init__()
        if not getattr(backbone, "has_text_tower", False):
            raise ValueError("retrieval needs a backbone with a text tower (build it with text_tower=True)")
        self.backbone = backbone
        if logit_scale is None:  # start from the backbone's own (pretrained) scale
            logit_scale = float(backbone.clip.logit_scale.detach().reshape(-1)[0])
        self.temperature = Temperature(logit_scale)
        self.task = TaskSpec("retrieval", False, self.loss, retrieval_evaluate, "R@1")

    def encode_video(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.normalize(self.backbone.pool(self.backbone(batch), batch), dim=-1)

    def encode_text(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.normalize(self.backbone.encode_text(batch), dim=-1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.stack([self.encode_video(batch), self.encode_text(batch)], dim=1)

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return contrastive_loss(outputs, self.temperature(), labels)

    @torch.no_grad()
    def predict_inputs(
        self, inputs: Sequence[Any], batch_size: int = 32, names: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        """What ``zoo predict`` shows for a mix of clips (frame tensors) and text queries (strings): for
        each query the clips, for each clip the queries, as CLIP's zero-shot probabilities (softmax of
        exp(tau)-scaled cosine similarities over the other kind); ``label`` is the best match by name."""
        names = (
            list(names)
            if names is not None
            else [x if isinstance(x, str) else f"clip {i}" for i, x in enumerate(inputs)]
        )
        queries = [i for i, item in enumerate(inputs) if isinstance(item, str)]
        clips = [i for i, item in enumerate(inputs) if not isinstance(item, str)]
        if not queries or not clips:
            raise DataError(
                f"retrieval matches text queries against clips; got {len(queries)} queries and {len(clips)} clips: "
                f"give at least one of each"
            )
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        tokenize = clip_tokenizer(self.backbone.context_length)
        try:
            videos, texts = [], []
            for start in range(0, len(clips), batch_size):
                batch = self.backbone.collate([inputs[i] for i in clips[start : start + batch_size]])
                videos.append(self.encode_video({k: v.to(device) for k, v in batch.items()}).float().cpu())
            for start in range(0, len(queries), batch_size):
                tokens = tokenize([inputs[i] for i in queries[start : start + batch_size]]).to(device)
                texts.append(self.encode_text({"input_ids": tokens}).float().cpu())
            logits = float(self.temperature()) * torch.cat(texts) @ torch.cat(videos).T  # (queries, clips)
        finally:
            self.train(was_training)
        results: dict[int, dict[str, Any]] = {}
        for rows, row_indices, column_indices in ((logits, queries, clips), (logits.T, clips, queries)):
            shown = _distinct([names[i] for i in column_indices])
            for index, row in zip(row_indices, rows):
                best = int(row.argmax())
                scores = dict(zip(shown, row.softmax(-1).tolist()))
                results[index] = {"label": shown[best], "index": best, "scores": scores}
        return [results[i] for i in range(len(inputs))]

    @torch.no_grad()
    def evaluate(self, dataset: Dataset, batch_size: int = 16, device: Any = None) -> dict[str, float]:
        """Text-to-video R@1/5/10 and median rank over ``dataset`` of ((frames, caption), video_index) items."""
        was_training = self.training
        self.eval()
        device = device or next(self.parameters()).device
        outputs = []
        try:
            for start in range(0, len(dataset), batch_size):
                items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
                batch = self.backbone.collate([inputs for inputs, _ in items])
                outputs.append(self({k: v.to(device) for k, v in batch.items()}).cpu())
        finally:
            self.train(was_training)
        if not outputs:
            raise ValueError("evaluate got an empty dataset")
        return retrieval_evaluate(torch.cat(outputs))


# -- recipes: the "retrieval" task kind -------------------------------------------------------
@register_task_builder(
    "retrieval",
    "text-to-video retrieval: symmetric InfoNCE over the batch; R@1/5/10 and median rank",
    backbone_options={"text_tower": True},
)
def build_retrieval(backbone: nn.Module, request: TaskRequest) -> tuple[RetrievalModel, ModelTask]:
    """A :class:`RetrievalModel`; ``task.options.logit_scale`` sets the starting log-temperature
    (default: the backbone's own)."""
    unknown = sorted(set(request.options) - {"logit_scale"})
    if unknown:
        raise ConfigError(f"task retrieval: unknown task.options {', '.join(unknown)}; valid: task.options.logit_scale")
    model = RetrievalModel(backbone, logit_scale=request.options.get("logit_scale"))
    return model, ModelTask(backbone.collate, model.task, request.main_metric or "")
