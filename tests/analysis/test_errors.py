"""The analysis library raises typed errors (analysis/errors.py), never click's; only the ``analyze`` CLI
turns them into one line and an exit code (1 for AnalysisError, 2 and the option's name for BadOption).
"""
import ast

import pytest
from click.testing import CliRunner

from analysis import compare, faces, gradcam
from analysis.cli import cli
from analysis.errors import AnalysisError, BadOption
from tests.helpers.paths import ROOT


def test_no_library_module_imports_click():
    users = []
    for f in sorted((ROOT / "analysis").glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] == "click" for n in names):
                users.append(f.name)
    assert users == ["cli.py"]


def test_library_errors_are_typed(tmp_path):
    with pytest.raises(AnalysisError, match="no such folder") as e:
        compare.load_study(tmp_path / "nope")
    assert type(e.value) is AnalysisError
    with pytest.raises(BadOption, match="expected finite numbers") as e:
        faces.parse_floats("nan", "--alphas")
    assert e.value.option == "--alphas"
    with pytest.raises(BadOption, match="is not a class") as e:
        gradcam.resolve_class("zebra", ["cat", "dog"])
    assert e.value.option is None


@pytest.mark.parametrize("args, code, line", [
    (["compare", "{tmp}/nope"], 1, "Error: {tmp}/nope: no such folder"),
    (["vae", "--server", "127.0.0.1:1", "--model", "m", "--alphas", "0,2"], 2,
     "Error: Invalid value for --alphas: values must lie in [0.0, 1.0], got '0,2'"),
    (["vae", "--server", "127.0.0.1:1", "--model", "m", "--direction", "A"], 2,
     "Error: Invalid value for --direction: expected two groups of names like 'A1,A2;B1,B2' (group A minus "
     "group B), got 'A'"),
])
def test_the_cli_turns_them_into_one_line_and_an_exit_code(tmp_path, args, code, line):
    r = CliRunner().invoke(cli, [a.format(tmp=tmp_path) for a in args])
    assert (r.exit_code, r.output.strip().splitlines()[-1]) == (code, line.format(tmp=tmp_path)), r.output
    assert "Traceback" not in r.output and not isinstance(r.exception, AnalysisError)
    assert (f"Usage: cli {args[0]} " in r.output) == (code == 2), r.output  # a bad option shows its command's usage
