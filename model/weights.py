"""``python -m model.weights fetch|list``: the command line of :mod:`model.io.fetch`.

Kept under this name because the documentation uses it; the code lives in :mod:`model.io`.
"""

from model.io.fetch import main

if __name__ == "__main__":
    raise SystemExit(main())
