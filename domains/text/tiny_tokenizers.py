"""Small tokenizers built in memory, for the tiny random-weight backbones.

They are real transformers tokenizers of each family (BERT WordPiece, RoBERTa byte-level
BPE, T5 Unigram) with a character-level vocabulary, so ``collate(list of str)`` pads,
truncates and adds special tokens exactly as the pretrained ones do, and they save and
load with ``save_pretrained`` / ``AutoTokenizer.from_pretrained`` like any other.
"""

from __future__ import annotations

import string

CHARACTERS = string.ascii_lowercase + string.digits + string.punctuation


def tiny_wordpiece_tokenizer():
    """BERT-style: lowercasing, [CLS] ... [SEP], characters and ``##`` continuation characters."""
    from transformers import BertTokenizer

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens = specials + list(CHARACTERS) + [f"##{c}" for c in CHARACTERS]
    return BertTokenizer(vocab={token: index for index, token in enumerate(tokens)}, do_lower_case=True)


def tiny_byte_level_tokenizer():
    """RoBERTa-style: byte-level BPE with no merges (one token per byte), <s> ... </s>."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import RobertaTokenizer

    tokens = ["<s>", "<pad>", "</s>", "<unk>"] + sorted(ByteLevel.alphabet()) + ["<mask>"]
    return RobertaTokenizer(vocab={token: index for index, token in enumerate(tokens)}, merges=[])


def tiny_unigram_tokenizer():
    """T5-style: SentencePiece Unigram over characters, ``</s>`` appended, pad=0, eos=1, unk=2."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -3.0) for c in CHARACTERS + string.ascii_uppercase]
    return T5Tokenizer(vocab=pieces, extra_ids=0)
