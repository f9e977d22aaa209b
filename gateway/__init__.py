"""clerk-gateway: Clerk authentication in front of any HTTP service."""

__version__ = "0.1.0"


def build() -> str:
    """How this installation runs its request path: "compiled" (C extensions built by
    mypyc, what `pip install .` makes where a C compiler exists; setup.py) or "python"
    (the pure fallback, and every editable install)."""
    from gateway import http1  # the modules are compiled all together or not at all

    return "python" if http1.__file__.endswith(".py") else "compiled"
