"""Review rules a Slicer core developer checks, read from the module's source (no Slicer needed)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "MedCLIPSAM" / "MedCLIPSAM.py"
TREE = ast.parse(MODULE.read_text())
USER_FACING = {"errorDisplay", "confirmOkCancelDisplay", "infoDisplay", "warningDisplay", "QProgressDialog",
               "setLabelText", "setWindowTitle"}
USER_ATTRIBUTES = {"text", "toolTip", "title", "helpText", "acknowledgementText"}


def classes() -> dict:
    return {node.name: node for node in TREE.body if isinstance(node, ast.ClassDef)}


def is_plain_text(node) -> bool:
    """A literal sentence (not wrapped in _()): a str constant or f-string with letters and a space."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return " " in node.value.strip() and any(c.isalpha() for c in node.value)
    if isinstance(node, ast.JoinedStr):
        return any(isinstance(v, ast.Constant) and " " in str(v.value) for v in node.values)
    if isinstance(node, (ast.IfExp,)):
        return is_plain_text(node.body) or is_plain_text(node.orelse)
    if isinstance(node, ast.BinOp):
        return is_plain_text(node.left) or is_plain_text(node.right)
    return False


def test_texts_shown_to_the_user_are_marked_for_translation():
    """As Slicer's module template does: ``from slicer.i18n import tr as _`` and _() around every shown text."""
    imports = [n for n in TREE.body if isinstance(n, ast.ImportFrom) and n.module == "slicer.i18n"]
    assert any(alias.name == "tr" and alias.asname == "_" for n in imports for alias in n.names)
    untranslated = []
    for cls in (classes()["MedCLIPSAM"], classes()["MedCLIPSAMWidget"]):
        for node in ast.walk(cls):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "attr", getattr(node.func, "id", ""))
                if name in USER_FACING and node.args and is_plain_text(node.args[0]):
                    untranslated.append((node.lineno, ast.unparse(node.args[0])[:60]))
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Attribute) and target.attr in USER_ATTRIBUTES and is_plain_text(node.value):
                        untranslated.append((node.lineno, ast.unparse(node.value)[:60]))
    assert not untranslated, f"texts shown without _(): {untranslated}"


def test_the_logic_opens_no_dialog_and_imports_no_qt_widgets():
    logic = classes()["MedCLIPSAMLogic"]
    calls = {getattr(n.func, "attr", "") for n in ast.walk(logic) if isinstance(n, ast.Call)}
    dialogs = calls & {"errorDisplay", "confirmOkCancelDisplay", "infoDisplay", "warningDisplay", "QProgressDialog",
                       "QMessageBox", "delayDisplay"}
    assert not dialogs, f"the Logic opens dialogs: {sorted(dialogs)}"
    assert not any(isinstance(n, ast.Name) and n.id == "qt" for n in ast.walk(logic))


def test_the_module_never_imports_torch_in_slicers_process():
    imported = {alias.name.split(".")[0] for n in ast.walk(TREE) if isinstance(n, (ast.Import, ast.ImportFrom))
                for alias in n.names} | {n.module.split(".")[0] for n in ast.walk(TREE)
                                         if isinstance(n, ast.ImportFrom) and n.module}
    assert not {"torch", "PyTorchUtils", "open_clip"} & imported


def test_the_self_test_skips_where_the_engines_packages_are_missing():
    test = classes()["MedCLIPSAMTest"]
    run = next(n for n in test.body if isinstance(n, ast.FunctionDef) and n.name == "runTest")
    source = ast.unparse(run)
    assert "find_spec" in source and "skipped" in source and source.index("return") < source.index("setUp")
    modules = next(n for n in test.body if isinstance(n, ast.Assign) and n.targets[0].id == "ENGINE_MODULES")
    assert "torch" in ast.literal_eval(modules.value)


def names_bound_in(function) -> set[str]:
    """Names a function binds itself (assignments, loop and with targets, except-as, imports), not in nested scopes."""
    bound: set[str] = set()
    for node in ast.walk(function):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            bound.add(node.id)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return bound


def test_no_function_binds_the_translation_function_name():
    """``a, _ = f()`` makes ``_`` local to the whole function: every ``_("...")`` in it, before or after, then
    fails (UnboundLocalError, or calling what was unpacked)."""
    shadowing = [(node.name, node.lineno) for node in ast.walk(TREE)
                 if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and "_" in names_bound_in(node)]
    assert not shadowing, f"functions that bind '_' (the translation function): {shadowing}"


def test_slicer_packaging_is_imported_not_looked_up():
    """``slicer.packaging`` is a submodule Slicer's package does not import itself (main), so
    ``getattr(slicer, "packaging", None)`` is None there and Slicer's own installer is never used."""
    source = MODULE.read_text()
    assert 'getattr(slicer, "packaging"' not in source
    imports = [node for node in ast.walk(TREE) if isinstance(node, ast.Import)
               and any(alias.name == "slicer.packaging" for alias in node.names)]
    guarded = [node for node in ast.walk(TREE) if isinstance(node, ast.Try)
               and any(isinstance(h.type, ast.Name) and h.type.id == "ImportError" for h in node.handlers)
               and any(inner in imports for inner in node.body)]
    assert imports and len(guarded) == len(imports)  # inside try/except ImportError: 5.10.0 has no slicer.packaging
