"""What the CLI commands do and print, kept apart from argument parsing (cli.py): one module per
command, re-exported here."""

from autotrick.commands._export import run_onnx_export
from autotrick.commands._listings import list_spaces, list_tricks
from autotrick.commands._recipes import export_recipe, run_ui, show_recipe
from autotrick.commands._search import SearchRequest, run_search_command
from autotrick.commands._train import format_epoch, run_train

__all__ = ["SearchRequest", "export_recipe", "format_epoch", "list_spaces", "list_tricks", "run_onnx_export",
           "run_search_command", "run_train", "run_ui", "show_recipe"]
