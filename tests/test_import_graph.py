"""finr3d's import graph runs one way: no cycles, at module level or inside functions.

The graph is read from the source (every ``import`` and ``from ... import``
statement anywhere in a module, including function bodies), not from
``sys.modules``, so a function-level back-edge counts as much as a top-level one.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "finr3d"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the finr3d modules it imports (a package import counts as its ``__init__``)."""
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                # "from finr3d import codec" imports the module finr3d.codec
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                while target and target not in modules:  # "finr3d.cli.fit.run" -> finr3d.cli.fit
                    target = target.rpartition(".")[0]
                if target and target != name and target.startswith("finr3d"):
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_is_read():
    graph = import_graph()
    assert "finr3d.codec" in graph["finr3d.field"]  # a top-level import
    assert "finr3d.closed_form" in graph["finr3d.fitting"]  # a function-level one


def test_no_import_cycles():
    found = cycles(import_graph())
    assert found == [], "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_meshes_sit_below_the_ground_truth_and_the_metrics():
    """MeshQuery has one home that both the SDF ground truth and the geometry metrics import."""
    graph = import_graph()
    assert "finr3d.mesh_query" in graph["finr3d.sdf"] and "finr3d.mesh_query" in graph["finr3d.geometry_metrics"]
    assert "finr3d.sdf" not in graph["finr3d.geometry_metrics"]
    assert not {"finr3d.sdf", "finr3d.geometry_metrics", "finr3d.field"} & graph["finr3d.mesh_query"]


def test_low_layers_import_no_torch_backed_module():
    """errors, files, presets, ranks, placement, the header schema, the SDF profiles and the numpy codec (containers, compact
    fields, local detail, the lattice residual) stay below the model: the Blender panel and numpy-only readers import them."""
    graph = import_graph()
    low = {"finr3d.errors", "finr3d.atomic_files", "finr3d.files", "finr3d.presets", "finr3d.ranks", "finr3d.placement",
           "finr3d.codec", "finr3d.compact", "finr3d.local_detail", "finr3d.lattice_residual", "finr3d.header_schema",
           "finr3d.profiles"}
    for name in low:
        assert graph[name] <= low, (name, graph[name] - low)


#: The package's layers, lowest first (docs/DESIGN.md, "Import graph"): a module imports only from its own
#: layer or below. A new module must be placed here, so the layering is a decision, not an accident.
LAYERS = {
    "base": ["finr3d", "finr3d.errors", "finr3d.atomic_files", "finr3d.files", "finr3d.presets", "finr3d.ranks",
             "finr3d.placement", "finr3d.header_schema", "finr3d._o3d", "finr3d.shapes", "finr3d.simulation",
             "finr3d.profiles"],
    "codec": ["finr3d.compact", "finr3d.local_detail", "finr3d.lattice_residual", "finr3d.codec"],
    "geometry": ["finr3d.mesh_query", "finr3d.layers", "finr3d.meshing", "finr3d.geometry_metrics"],
    "model": ["finr3d.coords", "finr3d.backbones", "finr3d.decompositions", "finr3d.config", "finr3d.compact_io",
              "finr3d.field", "finr3d.closed_form"],
    "targets": ["finr3d.targets", "finr3d.video_io", "finr3d.volume", "finr3d.video", "finr3d.sdf",
                "finr3d.sources"],
    "training": ["finr3d.fitting"],
    "analysis": ["finr3d.evaluation", "finr3d.sweep", "finr3d.decoding"],
    "front ends": ["finr3d.batch", "finr3d.cli", "finr3d.__main__"],
}


def _layer_of(module: str) -> int:
    names = list(LAYERS)
    for rank, layer in enumerate(names):
        if module in LAYERS[layer] or (layer == "front ends" and module.startswith("finr3d.cli.")):
            return rank
    raise AssertionError(f"{module} is in no layer: add it to LAYERS (and docs/DESIGN.md)")


def test_every_import_runs_down_the_layers():
    graph = import_graph()
    upward = [f"{src} ({list(LAYERS)[_layer_of(src)]}) imports {dst} ({list(LAYERS)[_layer_of(dst)]})"
              for src, targets in graph.items() for dst in targets if _layer_of(dst) > _layer_of(src)]
    assert upward == [], "\n".join(upward)
