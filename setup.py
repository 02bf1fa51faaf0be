"""Maps the design card's top-level folders into the `radixmesh` import namespace, and
generates the gRPC stubs from `protos/` at install time.

`services/`, `shared/` and `kernels/` live at the repository root, but are installed as
`radixmesh.services`, `radixmesh.shared` and `radixmesh.kernels` so that no generic name
(`kernels` above all, which transformers probes for) lands at the top level.
"""

import re
from pathlib import Path

from setuptools import setup

ROOTS = {"radixmesh": "radixmesh", "radixmesh.services": "services",
         "radixmesh.shared": "shared", "radixmesh.kernels": "kernels"}
PROTOS = Path("protos")
GENERATED = Path("shared/protos_gen")


def generate_stubs() -> None:
    """protos/*.proto -> shared/protos_gen/*_pb2*.py, imports made package-relative."""
    from grpc_tools import protoc  # a build requirement, see pyproject.toml

    GENERATED.mkdir(parents=True, exist_ok=True)
    protos = sorted(str(path) for path in PROTOS.glob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    status = protoc.main(["protoc", f"-I{PROTOS}", f"-I{include}", f"--python_out={GENERATED}",
                          f"--pyi_out={GENERATED}", f"--grpc_python_out={GENERATED}", *protos])
    if status != 0:
        raise RuntimeError(f"protoc failed ({status}) on {protos}")
    for module in GENERATED.glob("*_pb2*.py*"):
        text = module.read_text()
        module.write_text(re.sub(r"^import (\w+_pb2) as", r"from . import \1 as", text,
                                 flags=re.MULTILINE))
    (GENERATED / "__init__.py").write_text('"""Generated from protos/ at install; never edit."""\n')


def discover_packages() -> list[str]:
    packages = []
    for namespace, folder in ROOTS.items():
        for init in sorted(Path(folder).rglob("__init__.py")):
            relative = init.parent.relative_to(folder).parts
            packages.append(".".join((namespace, *relative)))
    return packages


# Every build (wheel, sdist or editable) regenerates the stubs before packages are listed.
generate_stubs()
# Tilings swept on GPUs (kernels/tuned_configs.py) ship with the kernels.
setup(package_dir=ROOTS, packages=discover_packages(),
      package_data={"radixmesh.kernels": ["configs/*.json"]})
