"""``python -m model.evaluate ...``: the command line of :mod:`model.training.evaluate`.

Kept under this name because the documentation uses it; the code lives in :mod:`model.training`.
"""

from model.training.evaluate import main

if __name__ == "__main__":
    raise SystemExit(main())
