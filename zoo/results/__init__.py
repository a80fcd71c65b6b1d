"""Result tables: specs (``zoo/recipes/tables/``), ``reproduce`` (cells as runs), the SQLite results store,
and Markdown/CSV/PNG rendering."""

from zoo.results.reproduce import reproduce
from zoo.results.spec import list_tables, load_table
from zoo.results.store import ResultsStore, rebuild

__all__ = ["reproduce", "list_tables", "load_table", "ResultsStore", "rebuild"]
