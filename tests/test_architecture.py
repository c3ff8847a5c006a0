"""The package's shape: no import circle, and stages that do not reach into the job.

Both checks read the source (no import of nbbatch is needed): an import circle makes a
module depend on the order in which others are loaded, and a stage that names
``BatchJob`` or reads another module's ``_private`` state cannot be read, tested or
changed without the whole job in mind (see docs/architecture.md).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "nbbatch"

#: Modules that may name BatchJob: the job itself, the entry points that build it and the
#: views a user holds it through (for typing only: see test_only_views_name_batchjob).
FACES = {
    "nbbatch",
    "nbbatch.job",
    "nbbatch._submit",
    "nbbatch._jobs",
    "nbbatch.cli",
    "nbbatch._panel",
    "nbbatch._console",
    "nbbatch.labext.views",
}

#: Reads of another module's ``_private`` names that are deliberate, with why.
PRIVATE_READS_ALLOWED = {
    # The stdlib's documented escape hatches.
    ("*", "os._exit"),
    ("*", "sys._getframe"),
    # A namedtuple's public API is underscored to stay out of its fields' way.
    ("*", "._replace"),
    ("*", "._asdict"),
    ("*", "._fields"),
    # IPython's display protocol: calling it on the job is what the notebook does.
    ("*", "._repr_mimebundle_"),
    ("*", "._ipython_display_"),
    # The SDKs keep the headers a client was made with only here; an async client's
    # sync twin must send the same ones (default_headers adds the SDK's own).
    # (openai's and anthropic's through base.sync_twin)
    ("nbbatch.providers.base", "client._custom_headers"),
    ("nbbatch.providers.azure", "client._custom_headers"),
    # AzureOpenAI keeps its api-version and Entra ID token only here; the sync twin of an
    # AsyncAzureOpenAI, and the job's recorded address, need them.
    ("nbbatch.providers.azure", "client._api_version"),
    ("nbbatch.providers.azure", "client._azure_ad_token"),
    ("nbbatch.providers.azure", "client._azure_ad_token_provider"),
    # google.genai.Client keeps its key and HTTP options on its inner API client: a copy
    # sending through the loopback guard is made from them.
    ("nbbatch.providers.gemini", "client._api_client"),
    ("nbbatch.providers.gemini", "inner._http_options"),
    ("nbbatch.providers._compat", "client._custom_headers"),
    # A Dask DataFrame's empty frame of its columns and dtypes: what Dask's own docs tell
    # map_partitions callers to start their ``meta=`` from.
    ("nbbatch._engines", "data._meta"),
}


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _type_checking_lines(tree: ast.AST) -> set[int]:
    """Lines inside ``if TYPE_CHECKING:`` blocks (imports there never run)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
            if name == "TYPE_CHECKING":
                for child in node.body:
                    for sub in ast.walk(child):
                        if hasattr(sub, "lineno"):
                            lines.add(sub.lineno)
    return lines


def _package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def runtime_imports(module: str, path: Path, known: set[str], *, typing: bool = False) -> set[str]:
    """The package modules ``module`` imports when it runs (at module level or inside a
    function), leaving out imports under ``if TYPE_CHECKING:`` (unless ``typing``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = set() if typing else _type_checking_lines(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known:
                    found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package_of(module, path)
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in known:
                    found.add(sub)  # `from . import x`: the module x
                elif base in known:
                    found.add(base)
    found.discard(module)
    return found


def import_graph(*, typing: bool = False) -> dict[str, set[str]]:
    """Each package module and the package modules it imports at run time (and, with
    ``typing``, for type checking too)."""
    modules = _modules()
    known = set(modules)
    return {
        name: runtime_imports(name, path, known, typing=typing) for name, path in modules.items()
    }


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def _path_in(group: list[str], graph: dict[str, set[str]]) -> str:
    """One concrete loop through ``group``, e.g. ``a -> b -> a``, for the message."""
    members = set(group)
    start = group[0]
    trail = [start]
    seen = {start}
    node = start
    while True:
        nxt = sorted(graph[node] & members)
        back = [n for n in nxt if n == start]
        if back and len(trail) > 1:
            return " -> ".join([*trail, start])
        fresh = [n for n in nxt if n not in seen]
        if not fresh:
            return " -> ".join([*trail, nxt[0] if nxt else "?"])
        node = fresh[0]
        trail.append(node)
        seen.add(node)


def test_no_import_circle() -> None:
    graph = import_graph()
    found = circles(graph)
    assert not found, "import circles in nbbatch/:\n" + "\n".join(
        f"  {', '.join(g)}\n    e.g. {_path_in(g, graph)}" for g in found
    )


def test_the_graph_sees_a_circle() -> None:
    """The walk itself: a planted circle is found, a type-only import is not one."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from .b import B\n"
        "def f():\n    from . import c\n"
    )
    tmp = PACKAGE.parent / "tests" / "_shape_probe.py"
    try:
        tmp.write_text(source, encoding="utf-8")
        assert runtime_imports("pkg.a", tmp, {"pkg.a", "pkg.b", "pkg.c"}) == {"pkg.c"}
    finally:
        tmp.unlink(missing_ok=True)


def names_batchjob(path: Path) -> bool:
    """Whether a module refers to nbbatch's ``BatchJob`` by name (an SDK's own
    ``types.BatchJob`` is an attribute of another module, not this name)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id == "BatchJob":
            return True
        if isinstance(node, ast.ImportFrom) and any(a.name == "BatchJob" for a in node.names):
            return True
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value.strip() == "BatchJob":  # a string annotation
                return True
    return False


def test_only_faces_name_batchjob() -> None:
    """Stages, snapshots, notes and providers work on what they are given, never on the
    job; only the job, its entry points and its views name ``BatchJob``."""
    offenders = [
        name for name, path in _modules().items() if name not in FACES and names_batchjob(path)
    ]
    assert not offenders, f"modules naming BatchJob (pass them what they need): {offenders}"


def _module_level_names(tree: ast.Module) -> set[str]:
    """Names a module defines itself (classes, functions, assignments): reading their
    ``_private`` members is the module reading its own state."""
    own: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            own.add(node.name)
        elif isinstance(node, ast.Assign):
            own.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            own.add(node.target.id)
    return own


def _own_classes(tree: ast.Module) -> set[str]:
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}


def private_reads(name: str, path: Path) -> list[str]:
    """``x._name`` reads in a module where ``x`` is not ``self``/``cls``, a name the
    module defines, or a parameter annotated with one of its own classes."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    own = _module_level_names(tree)
    classes = _own_classes(tree)
    # Parameters typed as a class of this module, and names bound to a new instance of
    # one, are this module's objects too.
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            made = node.value.func
            if isinstance(made, ast.Name) and made.id in classes:
                own.update(t.id for t in node.targets if isinstance(t, ast.Name))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for arg in [*node.args.args, *node.args.kwonlyargs, *node.args.posonlyargs]:
                note = ast.unparse(arg.annotation) if arg.annotation else ""
                if note.strip("'\"").split("[")[0].split(" ")[0] in classes:
                    own.add(arg.arg)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        attr = node.attr
        if not attr.startswith("_") or (attr.startswith("__") and attr.endswith("__")):
            continue
        base = node.value
        if isinstance(base, ast.Name) and (base.id in ("self", "cls") or base.id in own):
            continue
        text = f"{ast.unparse(base)}.{attr}"
        if any(text.endswith(suffix) for mod, suffix in PRIVATE_READS_ALLOWED if mod == "*"):
            continue
        if (name, text) in PRIVATE_READS_ALLOWED:
            continue
        found.append(f"{name}:{node.lineno}: {text}")
    return found


def test_no_module_reads_anothers_privates() -> None:
    found = [hit for name, path in _modules().items() for hit in private_reads(name, path)]
    assert not found, (
        "reads of another module's private names (make it public, or pass what is "
        "needed):\n  " + "\n  ".join(found)
    )


def test_the_private_check_sees_a_read(tmp_path: Path) -> None:
    """The heuristic itself: a stage reading a job's private is found; a module reading
    its own objects' privates is not."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "class Own:\n    _x = 1\n"
        "def stage(job):\n    return job._ledger\n"
        "def mine(o: Own):\n    made = Own()\n    return o._x + made._x + Own._x\n",
        encoding="utf-8",
    )
    assert private_reads("probe", probe) == ["probe:4: job._ledger"]


def test_every_module_imports_first() -> None:
    """Any module can be the first of the package a program imports: an import that
    only works in some orders (pandas' import hook loads the accessor, which imports
    the API, which imports the views...) fails here, not in a user's notebook."""
    import subprocess
    import sys

    names = sorted(
        name
        for name in _modules()
        if name != "nbbatch" and not name.startswith(("nbbatch.labext", "nbbatch.emulator.__"))
    )
    # One interpreter per module, several modules at a time.
    script = "import importlib, sys; importlib.import_module(sys.argv[1])"
    procs = [
        (name, subprocess.Popen([sys.executable, "-c", script, name], stderr=subprocess.PIPE))
        for name in names
    ]
    failed = []
    for name, proc in procs:
        _, err = proc.communicate(timeout=120)
        if proc.returncode:
            failed.append(f"{name}: {err.decode(errors='replace').strip().splitlines()[-1]}")
    assert not failed, "modules that fail when imported first:\n  " + "\n  ".join(failed)


#: The modules of nbbatch/ a user may import by name (see "What is public" in
#: docs/architecture.md); every other one starts with ``_`` and may change freely.
PUBLIC_MODULES = {
    "accessor",
    "cli",
    "columns",
    "datasets",
    "demo",
    "emulator",
    "job",
    "labext",
    "piloting",
    "pricing",
    "providers",
    "snapshot",
    "states",
    "styling",
}


def test_a_module_not_meant_for_users_is_private() -> None:
    """A new module of nbbatch/ is private (``_name.py``) unless it is added to the
    public list, here and in docs/architecture.md."""
    found = {
        path.stem if path.is_file() else path.name
        for path in PACKAGE.iterdir()
        if (path.suffix == ".py" or (path / "__init__.py").exists())
        and not path.name.startswith("_")
    }
    assert found == PUBLIC_MODULES, (
        f"public modules not listed: {sorted(found - PUBLIC_MODULES)}; listed but gone: "
        f"{sorted(PUBLIC_MODULES - found)} (name a module `_x.py` unless users import it)"
    )
    text = (PACKAGE.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    part = text[text.index("## What is public") : text.index("## The flow")]
    assert all(name in part for name in PUBLIC_MODULES), "docs/architecture.md: What is public"


def _public_members(path: Path, class_name: str) -> set[str]:
    """The public methods and properties a class defines in its body."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    [cls] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name]
    return {
        n.name
        for n in cls.body
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and not n.name.startswith("_")
    }


#: Members BatchJob shares with JobContext because a user asks the job for them.
USER_FACING_SHARED = {"endpoint", "id", "model", "models", "output", "output_columns", "spec",
                      "stages"}  # fmt: skip


def test_the_job_does_not_mirror_its_context() -> None:
    """BatchJob's public members are what a user calls: the context's own (stage specs,
    salts, tries, the clock...) are reached through ``job.context``, not forwarded one
    by one."""
    job = _public_members(PACKAGE / "job.py", "BatchJob")
    context = _public_members(PACKAGE / "_context.py", "JobContext")
    assert job & context <= USER_FACING_SHARED, (
        f"BatchJob forwards JobContext's {sorted(job & context - USER_FACING_SHARED)}: "
        "callers inside nbbatch use job.context"
    )
