"""Build the request-path modules with mypyc into build/compiled (an experiment, opt-in).

    .venv/bin/python scripts/compile.py             # about 75 s; needs a C compiler
    PYTHONPATH=$PWD/build/compiled make bench       # the bench, with the compiled modules

(The path absolute: the gateway runs from other directories, and from the checkout's own
directory Python finds the sources first.)

mypyc turns the type-annotated modules (the project is `mypy --strict` clean) into C
extensions: measured with `bench/pathcost.py --callgrind`, 41-54% fewer instructions per
request in the Python path, about 46% less CPU. The copy lives in build/compiled, never
beside the sources: a stale compiled module would shadow an edited `.py` (developers and
mutation testing always run the sources). Not yet how the package is installed; see
docs/performance.md.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "compiled"
# the request path; the rest (config, CLI, the stand-in, verification) stays Python
MODULES = (
    "http1",
    "headers",
    "upstream",
    "accesslog",
    "correlation",
    "metrics",
    "runtime",
    "app",
    "decide",
    "decision",
    "responses",
)


def main() -> int:
    mypyc = Path(sys.executable).parent / "mypyc"
    if not mypyc.exists():
        print("mypyc not found beside this Python: `pip install -e '.[test]'` brings mypy")
        return 2
    if BUILD.exists():
        shutil.rmtree(BUILD)
    shutil.copytree(ROOT / "gateway", BUILD / "gateway", ignore=shutil.ignore_patterns("*.so"))
    sources = [f"gateway/{name}.py" for name in MODULES]
    done = subprocess.run([str(mypyc), *sources], cwd=BUILD, check=False)
    if done.returncode != 0:
        return done.returncode
    built = sorted(p.name for p in (BUILD / "gateway").glob("*.so"))
    print(f"{len(built)} compiled modules in {BUILD}/gateway; use PYTHONPATH={BUILD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
