"""``python -m model.convert CKPT_DIR OUT.safetensors --model NAME``: runs :mod:`model.io.convert`.

Kept under this name because the documentation uses it; the code lives in :mod:`model.io`.
"""

from model.io.convert import main

if __name__ == "__main__":
    raise SystemExit(main())
