"""Video-text domain: CLIP backbones over frame sequences, MSR-VTT style captioned clips."""

from zoo_domains.video_text import backbones, data, inputs, tasks  # noqa: F401  (registration side effects)
