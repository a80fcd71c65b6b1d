"""Small tokenizers built in memory, for the tiny random-weight backbones.

They are real transformers tokenizers of each family (BERT WordPiece, RoBERTa byte-level
BPE, T5 Unigram) with a character-level vocabulary, so ``collate(list of str)`` pads,
truncates and adds special tokens exactly as the pretrained ones do, and they save and
load with ``save_pretrained`` / ``AutoTokenizer.from_pretrained`` like any other.

transformers 5 builds a family's tokenizer straight from a vocabulary; transformers 4 builds
its fast tokenizers from vocabulary files (BERT, RoBERTa) or a ``tokenizers`` object (T5, whose
files would need sentencepiece). Both give the same pipeline: the T5 one below is the one
transformers 5's ``T5Tokenizer`` assembles from a vocabulary.
"""

from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path

CHARACTERS = string.ascii_lowercase + string.digits + string.punctuation
WORDPIECE_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _builds_from_vocabulary() -> bool:
    import transformers

    return int(transformers.__version__.split(".")[0]) >= 5


def tiny_wordpiece_tokenizer():
    """BERT-style: lowercasing, [CLS] ... [SEP], characters and ``##`` continuation characters."""
    tokens = WORDPIECE_SPECIALS + list(CHARACTERS) + [f"##{c}" for c in CHARACTERS]
    if _builds_from_vocabulary():
        from transformers import BertTokenizer

        return BertTokenizer(vocab={token: index for index, token in enumerate(tokens)}, do_lower_case=True)
    from transformers import BertTokenizerFast

    with tempfile.TemporaryDirectory() as folder:
        vocab_file = Path(folder) / "vocab.txt"
        vocab_file.write_text("\n".join(tokens) + "\n")
        return BertTokenizerFast(vocab_file=str(vocab_file), do_lower_case=True)


def tiny_byte_level_tokenizer():
    """RoBERTa-style: byte-level BPE with no merges (one token per byte), <s> ... </s>."""
    from tokenizers.pre_tokenizers import ByteLevel

    tokens = ["<s>", "<pad>", "</s>", "<unk>"] + sorted(ByteLevel.alphabet()) + ["<mask>"]
    vocab = {token: index for index, token in enumerate(tokens)}
    if _builds_from_vocabulary():
        from transformers import RobertaTokenizer

        return RobertaTokenizer(vocab=vocab, merges=[])
    from transformers import RobertaTokenizerFast

    with tempfile.TemporaryDirectory() as folder:
        vocab_file, merges_file = Path(folder) / "vocab.json", Path(folder) / "merges.txt"
        vocab_file.write_text(json.dumps(vocab))
        merges_file.write_text("#version: 0.2\n")
        return RobertaTokenizerFast(vocab_file=str(vocab_file), merges_file=str(merges_file))


def tiny_unigram_tokenizer():
    """T5-style: SentencePiece Unigram over characters, ``</s>`` appended, pad=0, eos=1, unk=2."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -3.0) for c in CHARACTERS + string.ascii_uppercase]
    if _builds_from_vocabulary():
        from transformers import T5Tokenizer

        return T5Tokenizer(vocab=pieces, extra_ids=0)
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import Unigram
    from transformers import T5TokenizerFast

    backend = Tokenizer(Unigram(pieces, unk_id=2, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True),
        ]
    )
    backend.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    backend.post_processor = processors.TemplateProcessing(
        single=["$A", "</s>"], pair=["$A", "</s>", "$B", "</s>"], special_tokens=[("</s>", 1)]
    )
    return T5TokenizerFast(
        tokenizer_object=backend, extra_ids=0, eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
