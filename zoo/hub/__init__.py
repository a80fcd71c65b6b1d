"""Adapter hubs: publish finished runs (``push``), fetch adapters verified into a cache (``pull``), and
predict with them (``load``). See :mod:`zoo.hub.index` for what a hub is."""

from zoo.hub.index import SCHEMA_VERSION
from zoo.hub.locations import DEFAULT_HUB, cache_root, search_path

__all__ = ["DEFAULT_HUB", "SCHEMA_VERSION", "cache_root", "list_adapters", "load", "pull", "push", "search_path"]


def push(*args, **kwargs):
    """See :func:`zoo.hub.push.push`."""
    from zoo.hub.push import push as push_run

    return push_run(*args, **kwargs)


def pull(*args, **kwargs):
    """See :func:`zoo.hub.pull.pull`."""
    from zoo.hub.pull import pull as pull_adapter

    return pull_adapter(*args, **kwargs)


def load(*args, **kwargs):
    """A Predictor from a hub name, a pulled adapter or a run directory; see :func:`zoo.hub.predict.load`."""
    from zoo.hub.predict import load as load_predictor

    return load_predictor(*args, **kwargs)


def list_adapters(hub=None, log=None):
    """``[(hub, entry of the latest version), ...]`` of every hub searched (``hub``, else ZOO_HUB and the default)."""
    from zoo.hub.index import validate_entry
    from zoo.hub.locations import say_to_stderr

    found = []
    for candidate in search_path(hub):
        index = candidate.index(log or say_to_stderr)
        for name, record in sorted(index["adapters"].items()):
            version = record.get("latest") or list(record["versions"])[-1]
            found.append((candidate, validate_entry(record["versions"][version], name)))
    return found
