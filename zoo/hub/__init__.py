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


def list_adapters(hub=None, log=None, on_broken_hub=None):
    """``[(hub, entry of the latest version), ...]`` of every hub searched (``hub``, else ZOO_HUB and the default).

    ``on_broken_hub(hub, error)``: called for a hub (or a ``ZOO_HUB`` item that is not a hub URL) that
    cannot be read or whose index is refused, which is then skipped; an error only when every hub is
    broken. Without it, the first error is raised."""
    from zoo.errors import DownloadError, HubError
    from zoo.hub.index import find_entry
    from zoo.hub.locations import say_to_stderr

    found, broken, read = [], [], 0

    def skip(hub_found, error) -> None:
        broken.append(str(hub_found))
        on_broken_hub(hub_found, error)

    for candidate in search_path(hub, on_bad_url=skip if on_broken_hub else None):
        try:
            index = candidate.index(log or say_to_stderr)
            entries = [find_entry(index, name, str(candidate)) for name in sorted(index["adapters"])]
        except (DownloadError, HubError) as error:
            if on_broken_hub is None:
                raise
            skip(candidate, error)
            continue
        read += 1
        found += [(candidate, entry) for entry in entries]
    if broken and not read:
        raise HubError(f"no hub could be read: {', '.join(broken)}")
    return found
