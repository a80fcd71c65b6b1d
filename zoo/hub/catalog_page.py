"""The adapters of a hub as rows, and those rows as Markdown, CSV, JSON or the model-zoo page ``docs/zoo.md``.

Everything comes from the hub's index entries (:class:`zoo.hub.schema.HubEntry`): the adapter's size
is the sum of the sizes the entry records for its ``adapter/`` files, so no weight file is opened,
and nothing is fetched beyond ``index.json``. One function builds the rows; each format only writes
them, so CSV and JSON carry the same keys and the Markdown table the same values, grouped to read.
"""

from __future__ import annotations

import csv
import io
import json
import shlex
import textwrap
from pathlib import Path
from typing import Any, Iterable

from zoo.hub.locations import DEFAULT_HUB, FolderHub, Hub

COLUMNS = (
    "adapter",
    "domain",
    "backbone",
    "weights",
    "local_copy",
    "method",
    "trainable_parameters",
    "adapter_bytes",
    "adapter_size",
    "metric",
    "value",
    "interval_low",
    "interval_high",
    "measured_as",
    "dataset",
    "split",
    "examples",
    "try",
    "hub",
)
"""The keys of every JSON object and the header of the CSV, in this order."""
MEASURED_AS = ("test", "val")
"""Which of an entry's results a row shows: its test results where it has them, else its val results."""
EXAMPLE_INPUTS: dict[str, tuple[str, ...]] = {
    "text": ("A gripping, beautifully acted film.",),
    "vision": ("xray.png",),
    "protein": ("MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ",),
    "speech": ("recording.wav",),
    "video_text": ("clip.mp4",),
}
"""What ``zoo predict`` is shown with, by domain; another domain's adapters are shown with ``INPUT``."""
RETRIEVAL_QUERY = "a person cooking in a kitchen"
"""Added to a video-text retrieval adapter's example: it matches text queries against the clips."""
DEFAULT_HUB_ARGUMENT = "zoo/hub/default"
"""The default hub as the page's command names it: from a checkout's root, not this machine's path."""


def human_size(size: int) -> str:
    """``303051`` -> ``295.9 KiB``: binary units, one decimal (bytes as a whole number)."""
    if size < 1024:
        return f"{size} B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


MAX_EXAMPLE_CHARACTERS = 120
"""A reference input longer than this is not shown as the example (the domain's stock input is)."""


def _try_line(entry: dict[str, Any], hub: Hub) -> str:
    """``zoo predict NAME INPUT``: a short text reference input of the entry (a sentence of its own data),
    else the domain's stock input."""
    texts = [r["input"] for r in entry.get("reference_predictions") or [] if isinstance(r["input"], str)]
    shown = next((t for t in texts if 0 < len(t) <= MAX_EXAMPLE_CHARACTERS and t.strip() == t and "\n" not in t), None)
    inputs = (shown,) if shown else EXAMPLE_INPUTS.get(entry["domain"], ("INPUT",))
    if entry["domain"] == "video_text" and entry["task"]["kind"] == "retrieval":
        inputs = (*inputs, RETRIEVAL_QUERY)
    on_hub = [] if _is_default(hub) else ["--hub", hub.url]
    return shlex.join(["zoo", "predict", entry["name"], *inputs, *on_hub])


def adapter_row(hub: Hub, entry: dict[str, Any]) -> dict[str, Any]:
    """One adapter's row (the keys of COLUMNS); None where the entry does not record a value."""
    measured_as = next((key for key in MEASURED_AS if key in entry["metrics"]), next(iter(entry["metrics"]), None))
    measured = entry["metrics"][measured_as] if measured_as else {"metrics": {}, "split": None, "examples": None}
    metric = entry["task"]["main_metric"] or next(iter(measured["metrics"]), None)
    adapter_bytes = sum(item["size"] for item in entry["files"] if item["path"].startswith("adapter/"))
    backbone = entry["backbone"]
    interval = measured.get("interval") or {}
    if interval.get("metric") != metric:
        interval = {}
    return {
        "adapter": f"{entry['name']}@{entry['version']}",
        "domain": entry["domain"],
        "backbone": backbone["name"],
        "weights": backbone["source"],
        "local_copy": backbone["local_copy"],
        "method": entry["method"]["name"],
        "trainable_parameters": entry["method"]["trainable_parameters"],
        "adapter_bytes": adapter_bytes,
        "adapter_size": human_size(adapter_bytes),
        "metric": metric if metric in measured["metrics"] else None,
        "value": measured["metrics"].get(metric) if metric else None,
        "interval_low": interval.get("low"),
        "interval_high": interval.get("high"),
        "measured_as": measured_as,
        "dataset": entry["dataset"]["name"],
        "split": measured["split"],
        "examples": measured["examples"],
        "try": _try_line(entry, hub),
        "hub": hub.url,
    }


def adapter_rows(listed: Iterable[tuple[Hub, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Rows of ``zoo.hub.list_adapters`` output (the latest version of each adapter of each hub), in its order."""
    return [adapter_row(hub, entry) for hub, entry in listed]


def to_json(rows: list[dict[str, Any]]) -> str:
    return json.dumps(rows, indent=2) + "\n"


def to_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)  # None is written as an empty field, a float at full precision
    return out.getvalue()


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _code(text: str | None) -> str:
    return f"`{_cell(text)}`" if text else ""


def _measured_on(row: dict[str, Any]) -> str:
    if row["measured_as"] is None:
        return "no results recorded"
    examples = f", {row['examples']:,} examples" if row["examples"] is not None else ""
    split = f"{row['dataset']} split `{_cell(row['split'])}`" if row["split"] else row["dataset"]
    return f"{row['measured_as']}: {split}{examples}"


MD_COLUMNS = (
    "adapter",
    "domain",
    "backbone",
    "weights",
    "method",
    "trainable parameters",
    "adapter size",
    "metric",
    "measured on",
    "try it",
)


def to_markdown(rows: list[dict[str, Any]]) -> str:
    """A Markdown table: the row's values, with the weights' source and local copy in one cell and the
    metric's split, dataset and examples in another."""
    lines = ["| " + " | ".join(MD_COLUMNS) + " |", "|" + "---|" * len(MD_COLUMNS)]
    for row in rows:
        weights = _code(row["weights"]) or "not recorded"
        if row["local_copy"]:
            weights += f" (local copy {_code(row['local_copy'])})"
        parameters = row["trainable_parameters"]
        metric = f"{row['metric']} {row['value']:.4f}" if row["metric"] is not None else "not recorded"
        if row["interval_low"] is not None and row["metric"] is not None:
            metric += f" (95% CI {row['interval_low']:.3f}-{row['interval_high']:.3f})"
        cells = [
            _code(row["adapter"]),
            _cell(row["domain"]),
            _code(row["backbone"]),
            weights,
            _cell(row["method"]),
            f"{parameters:,}" if parameters is not None else "not recorded",
            row["adapter_size"],
            _cell(metric),
            _measured_on(row),
            _code(row["try"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _is_default(hub: Hub) -> bool:
    return isinstance(hub, FolderHub) and Path(hub.location) == DEFAULT_HUB


def _hub_argument(hub: Hub) -> str:
    """The hub as ``--hub`` takes it; the default hub from a checkout's root, not this machine's path."""
    return DEFAULT_HUB_ARGUMENT if _is_default(hub) else hub.url


def _wrap(paragraph: str) -> str:
    return textwrap.fill(paragraph, 100, break_long_words=False, break_on_hyphens=False)


def to_page(rows: list[dict[str, Any]], hub: Hub | None, pattern: str) -> str:
    """The whole model-zoo page of ``hub`` (None: the hubs searched): what it is, how it is made, the table."""
    words = ["zoo", "ls", "adapters", *([pattern] if pattern != "*" else []), "--page"]
    words += ["--hub", _hub_argument(hub)] if hub is not None else []
    if hub is None:
        hubs = "the hubs of `$ZOO_HUB` and the default hub"
    else:
        hubs = f"the default hub (`{DEFAULT_HUB_ARGUMENT}`)" if _is_default(hub) else f"the hub `{hub.url}`"
    made = f"""The pretrained adapters of {hubs}, one row per adapter at its latest version, as its `index.json`
records them. This page is generated: do not edit it by hand, run from the repository root"""
    explained = """and a test fails if the page differs from what that command writes. The weights are the base
backbone's pretrained source (and the package holding a local copy of it, where one is recorded), which
`zoo predict` fingerprints before it loads the adapter. The adapter size is that of its `adapter/` files.
The metric is the task's main one, from the adapter's test results where it has them, else from its val
results, with its 95% bootstrap interval over the test rows where the entry records one; the split is
the dataset's own split those results were measured on; the example input is one of the adapter's
reference inputs where it has a short one. `zoo pull NAME` fetches an
adapter; `zoo ls adapters --format csv` (or `json`) gives the same rows to scripts."""
    command = f"```bash\n{shlex.join(words)} > docs/zoo.md\n```"
    paragraphs = ["# Model zoo", _wrap(made), command, _wrap(explained)]
    return "\n\n".join(paragraphs) + "\n\n" + to_markdown(rows)
