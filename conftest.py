"""Keeps this checkout's folders from shadowing installed distributions while testing.

`python -m pytest` puts the repository root first on `sys.path`, where the design card's
top-level `kernels/` folder would hide Hugging Face's `kernels` distribution, which
transformers imports. The project itself is installed under the `radixmesh` namespace, so the
root is only needed for the `tests` package: it moves behind site-packages.
"""

import os
import sys

_ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [entry for entry in sys.path
               if os.path.abspath(entry or os.curdir) != _ROOT] + [_ROOT]
