"""The console scripts declared in setup.py resolve to callables that take no arguments."""

import ast
import importlib
import inspect
import pathlib

SETUP = pathlib.Path(__file__).resolve().parents[1] / "setup.py"


def _console_scripts() -> list[str]:
    for node in ast.walk(ast.parse(SETUP.read_text())):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and key.value == "console_scripts":
                    return [element.value for element in value.elts]
    raise AssertionError("setup.py declares no console_scripts")


def test_console_scripts_resolve_to_zero_argument_callables():
    scripts = _console_scripts()
    names = {s.split("=")[0] for s in scripts}
    assert names == {"pt-train", "pt-eval", "pt-infer", "pt-serve", "pt-export"}
    for script in scripts:
        module_name, function_name = script.split("=")[1].split(":")
        function = getattr(importlib.import_module(module_name), function_name)
        required = [
            p
            for p in inspect.signature(function).parameters.values()
            if p.default is inspect.Parameter.empty
        ]
        assert not required, f"{script} needs arguments {required}"
