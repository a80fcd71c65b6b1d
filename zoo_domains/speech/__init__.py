"""Speech domain: torchaudio wav2vec 2.0 / HuBERT backbones; spoken-digit, keyword and folder datasets."""

from zoo_domains.speech import backbones, data, inputs, prefix_attention  # noqa: F401  (importing registers them)
