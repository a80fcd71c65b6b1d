"""What the installed domains provide, read from the registries and the recipes folder, for tests
that cover every domain without a hand-kept list of domains."""

from __future__ import annotations

from collections import Counter

from zoo.catalog.domains import load_domains
from zoo.experiment.recipes import list_recipes


def domain_names() -> list[str]:
    """Every domain registered through the ``zoo.domains`` entry points."""
    return sorted(load_domains())


def main_task(domain: str) -> str:
    """The task of the domain with the most recipes (``zoo/recipes/<domain>/<task>-<method>.yaml``): the
    one whose recipes cover every method that applies (test_recipes checks that they do)."""
    tasks = Counter(recipe.split("/", 1)[1].rsplit("-", 1)[0] for recipe in list_recipes(f"{domain}/*"))
    if not tasks:
        raise AssertionError(f"domain {domain} has no recipes under zoo/recipes/{domain}/")
    return min(tasks, key=lambda task: (-tasks[task], task))


def main_recipe(domain: str, method: str) -> str:
    return f"{domain}/{main_task(domain)}-{method}"
