"""The Slicer extension's structure: what CMake ships, what the .ui files hold, what the Widgets use.

These are the checks Slicer itself would only make at build or load time: a script missing from a
CMakeLists is not installed, a widget name the Widget uses but the .ui lacks fails when the module opens, a
``SlicerParameterName`` without a parameter-node field (or on a widget that cannot show its type) fails when
the GUI is bound.
"""

from __future__ import annotations

import ast
import py_compile
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MODULES = ["PESFSegment", "PESFTrain"]


def module_files(module: str) -> set[str]:
    """Scripts and resources of a module folder, relative to it (byte code and CMake files excluded)."""
    root = REPO / module
    files = set()
    for path in root.rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".cmake"):
            if path.name != "CMakeLists.txt":
                files.add(path.relative_to(root).as_posix())
    return files


def cmake_listed(module: str) -> set[str]:
    """Files a module's CMakeLists names: its scripts, resources and the registered module test."""
    text = (REPO / module / "CMakeLists.txt").read_text(encoding="utf-8")
    text = re.sub(r"#[^\n]*", "", text).replace("${MODULE_NAME}", module)
    listed = set()
    for variable in ("MODULE_PYTHON_SCRIPTS", "MODULE_PYTHON_RESOURCES"):
        match = re.search(rf"set\(\s*{variable}\s+(.*?)\)", text, re.S)
        assert match, f"{module}/CMakeLists.txt does not set {variable}"
        listed |= set(match.group(1).split())
    for script in re.findall(r"slicer_add_python_unittest\(\s*SCRIPT\s+([^\s)]+)", text):
        listed.add(script.replace("${CMAKE_CURRENT_SOURCE_DIR}/", ""))
    return listed


@pytest.mark.parametrize("module", MODULES)
def test_every_script_and_resource_is_listed_in_cmake(module):
    text = (REPO / module / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "WITH_GENERIC_TESTS" in text and "slicerMacroBuildScriptedModule" in text
    assert re.search(
        r"slicer_add_python_unittest\(\s*SCRIPT\s+\S+/Testing/Python/\$\{MODULE_NAME\}ModuleTest\.py", text
    )
    on_disk, listed = module_files(module), cmake_listed(module)
    assert on_disk - listed == set(), f"not listed in {module}/CMakeLists.txt"
    assert listed - on_disk == set(), f"listed in {module}/CMakeLists.txt but missing"
    for required in (
        f"{module}.py",
        f"{module}Lib/__init__.py",
        f"Resources/UI/{module}.ui",
        f"Resources/Icons/{module}.png",
    ):
        assert required in listed


def engine_lists() -> dict[str, list[str]]:
    """Run PESFSegment/PESFEngineFiles.cmake as CMake does (or read its globs when CMake is absent)."""
    script = REPO / "PESFSegment" / "PESFEngineFiles.cmake"
    cmake = shutil.which("cmake")
    lists: dict[str, list[str]] = {"python": [], "data": [], "model": []}
    if cmake:
        run = subprocess.run(
            [cmake, f"-DPESF_ENGINE_SOURCE_DIR={REPO}", "-P", str(script)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        for line in run.stderr.splitlines():  # CMake's message() writes to stderr
            kind, _, path = line.partition(" ")
            lists[kind].append(path)
        return lists
    text = script.read_text(encoding="utf-8")
    assert re.search(r"file\(GLOB_RECURSE PESF_ENGINE_PYTHON_FILES[^)]*/pesf/\*\.py", text)
    lists["python"] = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "pesf").rglob("*.py"))
    return lists


def test_the_engine_ships_inside_PESFSegment():
    """Every pesf/**/*.py is copied into the scripted modules folder, and the package data with it."""
    lists = engine_lists()
    engine = {
        p.relative_to(REPO).as_posix() for p in (REPO / "pesf").rglob("*.py") if "__pycache__" not in p.parts
    }
    assert engine and set(lists["python"]) == engine
    data = {
        p.relative_to(REPO).as_posix()
        for p in (REPO / "pesf").rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts
    }
    if shutil.which("cmake"):
        assert set(lists["data"]) == data and "pesf/data/organs.json" in data
        assert set(lists["model"]) == {
            p.relative_to(REPO).as_posix() for p in (REPO / "Resources" / "Models").glob("*.pt")
        }
    text = (REPO / "PESFSegment" / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "include(${CMAKE_CURRENT_SOURCE_DIR}/PESFEngineFiles.cmake)" in text
    assert re.search(
        r"foreach\(file IN LISTS PESF_ENGINE_PYTHON_FILES\).*?list\(APPEND MODULE_PYTHON_SCRIPTS", text, re.S
    )
    assert re.search(
        r"foreach\(file IN LISTS PESF_ENGINE_DATA_FILES PESF_BUNDLED_MODEL_FILES\).*?install\(FILES",
        text,
        re.S,
    )


def test_top_level_cmake_builds_both_modules():
    text = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    for module in MODULES:
        assert f"add_subdirectory({module})" in text
    assert re.search(r'set\(EXTENSION_DEPENDS\s+"?PyTorch"?\)', text)


# --------------------------------------------------------------------------- .ui files and Widgets


def ui_tree(module: str) -> ET.Element:
    return ET.parse(REPO / module / "Resources" / "UI" / f"{module}.ui").getroot()


def ui_widgets(module: str) -> dict[str, str]:
    """``{name: class}`` of every widget in the module's .ui."""
    return {w.get("name"): w.get("class") for w in ui_tree(module).iter("widget")}


def ui_parameter_bindings(module: str) -> dict[str, str]:
    """``{parameter name: widget class}`` from the ``SlicerParameterName`` properties."""
    bindings = {}
    for widget in ui_tree(module).iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                assert prop.get("stdset") == "0", "dynamic properties need stdset=0 in Designer files"
                bindings[prop.findtext("string")] = widget.get("class")
    return bindings


def module_ast(module: str) -> ast.Module:
    return ast.parse((REPO / module / f"{module}.py").read_text(encoding="utf-8"))


def parameter_fields(module: str) -> dict[str, str]:
    """``{field: annotation source}`` of the class decorated with ``parameterNodeWrapper``."""
    for node in ast.walk(module_ast(module)):
        if isinstance(node, ast.ClassDef) and any(
            getattr(d, "id", getattr(d, "attr", None)) == "parameterNodeWrapper" for d in node.decorator_list
        ):
            return {
                stmt.target.id: ast.unparse(stmt.annotation)
                for stmt in node.body
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
            }
    raise AssertionError(f"{module}.py has no @parameterNodeWrapper class")


@pytest.mark.parametrize("module", MODULES)
def test_ui_file_is_qt_designer_xml(module):
    root = ui_tree(module)
    assert root.tag == "ui" and root.get("version") == "4.0"
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and root.findtext("class") == top.get("name") == module
    widgets = ui_widgets(module)
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    custom = {cls for cls in widgets.values() if not cls.startswith("Q")}
    assert custom <= declared, f"custom widgets not declared: {custom - declared}"
    for c in root.iter("customwidget"):
        assert c.findtext("header") == f"{c.findtext('class')}.h" and c.findtext("extends")
    assert len(widgets) == len(list(root.iter("widget"))), "widget names must be unique"
    for connection in root.iter("connection"):
        assert connection.findtext("sender") in widgets and connection.findtext("receiver") in widgets


@pytest.mark.parametrize("module", MODULES)
def test_every_ui_name_the_widget_uses_exists(module):
    used = set()
    for node in ast.walk(module_ast(module)):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute):
            inner = node.value
            if inner.attr == "ui" and isinstance(inner.value, ast.Name) and inner.value.id == "self":
                used.add(node.attr)
    widgets = ui_widgets(module)
    assert used, "the Widget uses no self.ui names?"
    assert used - set(widgets) == set(), f"{module}.py uses names its .ui does not have"


# Which widget class parameterNodeWrapper connects to which annotation (Slicer's guiConnectors.py).
def _connects(widget_class: str, annotation: str, enums: set[str]) -> bool:
    base = re.sub(r"^Annotated\[(.*?),.*\]$", r"\1", annotation)
    if widget_class in ("QCheckBox", "QPushButton"):
        return base == "bool"
    if widget_class in ("QSpinBox", "QSlider"):
        return base == "int" and (widget_class == "QSpinBox" or "WithinRange" in annotation)
    if widget_class in ("QDoubleSpinBox", "ctkSliderWidget"):
        return base == "float" and (widget_class == "QDoubleSpinBox" or "WithinRange" in annotation)
    if widget_class == "QComboBox":
        return base in enums or (base in ("str", "int", "float") and "Choice(" in annotation)
    if widget_class in ("QLineEdit", "QTextEdit"):
        return base == "str"
    if widget_class in ("ctkPathLineEdit", "ctkDirectoryButton"):
        return base in ("pathlib.Path", "Path")
    if widget_class == "qMRMLNodeComboBox":
        return base.startswith("vtkMRML")
    return False


@pytest.mark.parametrize("module", MODULES)
def test_parameter_names_match_the_parameter_node(module):
    fields = parameter_fields(module)
    bindings = ui_parameter_bindings(module)
    assert bindings, f"{module}.ui binds no parameters"
    assert set(bindings) - set(fields) == set(), "SlicerParameterName without a parameter node field"
    enums = {
        node.name
        for node in ast.walk(module_ast(module))
        if isinstance(node, ast.ClassDef)
        and any(getattr(b, "attr", getattr(b, "id", "")) == "Enum" for b in node.bases)
    }
    for name, widget_class in bindings.items():
        assert _connects(widget_class, fields[name], enums), (
            f"{name}: {widget_class} cannot show {fields[name]}"
        )


# --------------------------------------------------------------------------- code rules


def slicer_facing_files() -> list[Path]:
    files = []
    for module in MODULES:
        files += sorted(p for p in (REPO / module).rglob("*.py") if "__pycache__" not in p.parts)
    return files + [
        REPO / "Testing" / name
        for name in (
            "slicer_scene.py",
            "test_slicer_segment_logic.py",
            "test_slicer_train_logic.py",
            "test_slicer_structure.py",
        )
    ]


def test_slicer_facing_files_compile_and_pass_ruff(tmp_path):
    files = slicer_facing_files()
    for index, path in enumerate(files):
        py_compile.compile(str(path), cfile=str(tmp_path / f"{index}.pyc"), doraise=True)
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    names = [str(p) for p in files]
    check = subprocess.run([ruff, "check", *names], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    fmt = subprocess.run(
        [ruff, "format", "--check", *names], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


_DIALOGS = {
    "errorDisplay", "warningDisplay", "infoDisplay", "delayDisplay", "messageBox",
    "confirmOkCancelDisplay", "confirmYesNoDisplay", "confirmRetryCloseDisplay",
}  # fmt: skip


@pytest.mark.parametrize("module", MODULES)
def test_logic_is_free_of_gui_and_waits(module):
    """The Logic package imports no Qt/CTK, never touches slicer.app, never sleeps, shows no dialog."""
    for path in (REPO / module / f"{module}Lib").glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any(n.split(".")[0] in ("qt", "ctk") for n in names), f"{path.name} imports Qt"
            if isinstance(node, ast.Attribute):
                dotted = ast.unparse(node)
                assert dotted not in ("slicer.app", "time.sleep", "slicer.util.errorDisplay"), (
                    f"{path.name}: {dotted}"
                )
                assert node.attr not in _DIALOGS, f"{path.name} shows a dialog: {dotted}"
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "print":
                raise AssertionError(f"{path.name} prints")


def test_importing_the_logic_imports_no_heavy_dependency():
    paths = [str(REPO / "PESFSegment"), str(REPO / "PESFTrain")]
    code = (
        f"import sys; sys.path[:0] = {paths!r}; import PESFSegmentLib, PESFTrainLib; "
        "print(sorted(m for m in ('torch', 'monai', 'scipy', 'pesf', 'SimpleITK') if m in sys.modules))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert run.stdout.strip() == "[]"


@pytest.mark.parametrize("module", MODULES)
def test_icons_are_small_png(module):
    data = (REPO / module / "Resources" / "Icons" / f"{module}.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (128, 128) and len(data) < 64 * 1024
