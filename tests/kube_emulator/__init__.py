"""A Kubernetes API emulator for wxpush's end-to-end tests: the PyPI package `kmock`'s
`KubernetesEmulator`, plus the object semantics kubectl and kube-rs need (see README.md).

Run it as `python -m kube_emulator --kubeconfig PATH` with `tests/` on `PYTHONPATH`.
"""

from .server import ApiServer, ApiError

__all__ = ['ApiServer', 'ApiError']
