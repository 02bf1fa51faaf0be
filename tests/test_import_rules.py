"""The layout's rule, read from the code (issue 11): `shared/` is the only bridge between
services.

- `services/<name>/` imports only its own package, `shared/` and, for the worker, `kernels/`;
  the generated protobuf stubs only in its gRPC edge (`server.py`, `servicer.py`, `*link.py`).
- `shared/` imports only `shared/`; of the stubs, only `wire.py` (and the parts it re-exports,
  `wire_common.py`, `wire_deltas.py`), `grpc_service.py` and the
  public front door's gRPC edge, `front_door/servicer.py` (the one `Generation` servicer that
  a mesh's tokenizer service and the router in front of several meshes both serve).
- `kernels/` imports only `kernels/` and `shared/`.
- `radixmesh/` (CLI, launcher, bench, client, offline) may compose anything.

The import graph is walked with `ast`: nothing is imported or executed.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {"services": "radixmesh.services", "shared": "radixmesh.shared",
           "kernels": "radixmesh.kernels"}
STUBS = "radixmesh.shared.protos_gen"
GRPC_EDGE_FILES = ("server.py", "servicer.py")
SHARED_STUB_USERS = ("shared/wire.py", "shared/wire_common.py", "shared/wire_deltas.py",
                     "shared/grpc_service.py", "shared/front_door/servicer.py")


@dataclass(frozen=True)
class Edge:
    path: str     # repository-relative file
    line: int
    target: str   # the imported module, absolute


def module_name(relative: Path) -> str:
    """`services/scheduler/loop.py` -> `radixmesh.services.scheduler.loop`."""
    parts = relative.with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join((FOLDERS[parts[0]], *parts[1:]))


def imports_of(relative: Path, source: str) -> list[Edge]:
    """Every radixmesh module `source` imports, relative imports resolved."""
    package = module_name(relative).split(".")
    if relative.name != "__init__.py":
        package = package[:-1]
    edges = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package[:len(package) - node.level + 1], *filter(None, [base])])
            targets = [base]
        else:
            continue
        edges += [Edge(str(relative), node.lineno, target) for target in targets
                  if target.split(".")[0] == "radixmesh"]
    return edges


def allowed(relative: Path, target: str) -> bool:
    top = relative.parts[0]
    if target.startswith(STUBS):
        if top == "services":
            return relative.name in GRPC_EDGE_FILES or relative.name.endswith("link.py")
        return relative.as_posix() in SHARED_STUB_USERS
    if target.startswith("radixmesh.shared"):
        return True
    if top == "services":
        service = relative.parts[1]
        own = f"radixmesh.services.{service}"
        return (target == own or target.startswith(own + ".")
                or (service == "worker" and target.startswith("radixmesh.kernels")))
    if top == "kernels":
        return target.startswith("radixmesh.kernels")
    return False  # shared/ reaches nothing but shared/


def violations(relative: Path, source: str) -> list[str]:
    return [f"{edge.path}:{edge.line} imports {edge.target}"
            for edge in imports_of(relative, source) if not allowed(relative, edge.target)]


def checked_files() -> list[Path]:
    files = []
    for folder in FOLDERS:
        files += [path.relative_to(REPO) for path in sorted((REPO / folder).rglob("*.py"))
                  if "protos_gen" not in path.parts]
    return files


def test_the_tree_keeps_the_rule() -> None:
    found = [v for path in checked_files() for v in violations(path, (REPO / path).read_text())]
    assert not found, "imports that cross the layout's rule:\n" + "\n".join(found)


@pytest.mark.parametrize(("path", "source", "edge"), [
    ("services/scheduler/loop.py",
     "from radixmesh.services.detokenizer.incremental import X",
     "services/scheduler/loop.py:1 imports radixmesh.services.detokenizer.incremental"),
    ("services/tokenizer/router.py", "from radixmesh.shared.protos_gen import generate_pb2",
     "services/tokenizer/router.py:1 imports radixmesh.shared.protos_gen"),
    ("services/worker/x.py", "import radixmesh.make_model",
     "services/worker/x.py:1 imports radixmesh.make_model"),
    ("services/tokenizer/x.py", "\n\nfrom radixmesh.kernels import rmsnorm",
     "services/tokenizer/x.py:3 imports radixmesh.kernels"),
    ("shared/front_door/openai_api.py", "from radixmesh.shared.protos_gen import generate_pb2",
     "shared/front_door/openai_api.py:1 imports radixmesh.shared.protos_gen"),
    ("shared/x.py", "from ..services.scheduler import loop",
     "shared/x.py:1 imports radixmesh.services.scheduler"),
    ("services/detokenizer/sub/x.py", "from ...tokenizer import router",
     "services/detokenizer/sub/x.py:1 imports radixmesh.services.tokenizer"),
])
def test_a_broken_rule_names_the_edge(path: str, source: str, edge: str) -> None:
    assert violations(Path(path), source) == [edge]


@pytest.mark.parametrize(("path", "source"), [
    ("services/scheduler/loop.py", "from radixmesh.services.scheduler.request import SchedReq"),
    ("services/scheduler/loop.py", "from .request import SchedReq"),
    ("services/worker/model_runner.py", "from radixmesh.kernels.rmsnorm import rms_norm"),
    ("services/worker/servicer.py", "from radixmesh.shared.protos_gen import internal_pb2"),
    ("services/tokenizer/mesh_link.py", "from radixmesh.shared.protos_gen import common_pb2"),
    ("shared/wire.py", "from radixmesh.shared.protos_gen import common_pb2"),
    ("shared/front_door/servicer.py", "from radixmesh.shared.protos_gen import generate_pb2"),
    ("kernels/attention/decode.py", "from radixmesh.kernels.attention.common import x"),
])
def test_what_the_rule_allows(path: str, source: str) -> None:
    assert violations(Path(path), source) == []
