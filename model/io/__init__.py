"""Weight I/O: official TF2 checkpoints in, safetensors weights files out.

| module | owns |
|---|---|
| :mod:`~model.io.tf_checkpoint` | reading TF2 tensor bundles with numpy alone |
| :mod:`~model.io.weights` | weights files with their construction metadata; strict load; bundled and cached weights |
| :mod:`~model.io.convert` | the pure TF -> PyTorch renaming, a checkpoint loaded into a model, ``python -m model.convert`` |
| :mod:`~model.io.fetch` | download, verify, convert and cache official weights, ``python -m model.weights`` |

Imports go one way: ``fetch -> convert -> tf_checkpoint``, ``convert -> weights``,
``fetch -> weights``; ``tests/model/test_layering.py`` keeps it so. The network itself
(``model.movinet``, ``model.registry``) knows nothing of this package.
"""
