"""Maps the design card's top-level folders into the `radixmesh` import namespace.

`services/`, `shared/` and `kernels/` live at the repository root, but are installed as
`radixmesh.services`, `radixmesh.shared` and `radixmesh.kernels` so that no generic name
(`kernels` above all, which transformers probes for) lands at the top level.
"""

from pathlib import Path

from setuptools import setup

ROOTS = {"radixmesh": "radixmesh", "radixmesh.services": "services",
         "radixmesh.shared": "shared", "radixmesh.kernels": "kernels"}


def discover_packages() -> list[str]:
    packages = []
    for namespace, folder in ROOTS.items():
        for init in sorted(Path(folder).rglob("__init__.py")):
            relative = init.parent.relative_to(folder).parts
            packages.append(".".join((namespace, *relative)))
    return packages


setup(package_dir=ROOTS, packages=discover_packages())
