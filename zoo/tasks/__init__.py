"""Task heads (classification, regression, per-residue), training objectives and metrics."""
