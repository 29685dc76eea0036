"""``python -m model.train ...``: the command line of :mod:`model.training.train`.

Kept under this name because the documentation uses it; the code lives in :mod:`model.training`.
"""

from model.training.train import main

if __name__ == "__main__":
    raise SystemExit(main())
