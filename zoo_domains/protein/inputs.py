"""What ``zoo predict`` reads for protein adapters: sequences typed as arguments, or FASTA files.

A sequence argument is upper-case one-letter codes (ESM's alphabet); a lower-case argument is
refused rather than guessed, since most English words spell valid sequences. FASTA sequences
are upper-cased (lower case there marks soft-masked residues, not other amino acids); each
record is shown as ``file:identifier``. ``-`` reads FASTA from standard input when it starts
with ``>``, else one sequence a non-empty line.
"""

from __future__ import annotations

from pathlib import Path

from zoo.errors import DataError
from zoo.hub.inputs import InputExample, InputReader, Read, register_input_reader
from zoo_domains.protein.backbones import check_sequence
from zoo_domains.protein.files import read_fasta

SUFFIXES = (".fasta", ".fa", ".faa", ".fas")
KINDS = {**{suffix: "a FASTA file" for suffix in SUFFIXES}, ".fna": "a nucleotide FASTA file"}
SHOWN_RESIDUES = 30


def _shown(sequence: str) -> str:
    return sequence if len(sequence) <= SHOWN_RESIDUES else sequence[: SHOWN_RESIDUES - 3] + "..."


def _records(text: str, source: str) -> Read:
    read = []
    for number, (header, sequence) in enumerate(read_fasta(text, source), 1):
        identifier = header.split()[0] if header.split() else f"record{number}"
        where = f"{source}, record {identifier}"
        if not sequence:
            raise DataError(f"{where}: the record has no sequence")
        read.append((check_sequence(sequence.upper(), where), f"{source}:{identifier}"))
    return read


def read_fasta_file(path: Path) -> Read:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot be read as FASTA text ({error})") from None
    return _records(text, str(path))


def read_sequence_lines(lines: list[str]) -> Read:
    lines = [line.strip() for line in lines if line.strip()]
    if lines and lines[0].startswith(">"):
        return _records("\n".join(lines), "standard input")
    return [read_sequence(line) for line in lines]


def read_sequence(argument: str) -> tuple[str, str]:
    sequence = "".join(argument.split())
    return check_sequence(sequence, f"sequence {_shown(argument)!r}"), _shown(sequence)


def write_example(folder: Path) -> InputExample:
    """A FASTA file of two records (the second soft-masked, in lower case) and a typed sequence."""
    (folder / "proteins.fasta").write_text(">first some description\nMKTAYIAKQR\nQISFVKSHFS\n\n>second\nmktayiak\n")
    return InputExample(
        (str(folder / "proteins.fasta"), "GVSERTIDPK"), ("MKTAYIAKQRQISFVKSHFS", "MKTAYIAK", "GVSERTIDPK")
    )


register_input_reader(
    InputReader(
        domain="protein",
        takes=f"amino-acid sequences (upper-case one-letter codes) or FASTA files ({'/'.join(SUFFIXES)})",
        suffixes=SUFFIXES,
        read_file=read_fasta_file,
        write_example=write_example,
        read_argument=read_sequence,
        read_lines=read_sequence_lines,
        kinds=KINDS,
    )
)
