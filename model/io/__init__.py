"""Weight I/O: official TF2 checkpoints and SavedModels in, safetensors weights files out.

- :mod:`.tf_checkpoint`: reading TF2 tensor bundles with numpy alone (finding the prefix, listing
  and loading the tensors); :mod:`.tf_bundle_index` decodes their ``.index`` table and
  :mod:`.crc32c` computes the checksums both carry.
- :mod:`.tf_saved_model`: a SavedModel's ``variables/`` bundle, renamed through its object graph
  to the names a training checkpoint gives the same variables.
- :mod:`.weights`: weights files with their construction metadata, the strict load, and where
  bundled and cached weights live.
- :mod:`.convert`: the pure TF -> PyTorch renaming, a checkpoint or SavedModel loaded into a
  model, and ``python -m model.convert``.
- :mod:`.fetch`: download, verify, convert and cache official weights, and
  ``python -m model.weights``.

Imports go one way: ``fetch -> convert -> tf_checkpoint -> tf_bundle_index -> crc32c``,
``convert -> tf_saved_model -> tf_checkpoint``,
``convert -> weights``, ``fetch -> weights``; ``tests/model/test_layering.py`` keeps it so. The
network itself (``model.movinet``, ``model.registry``) knows nothing of this package.
"""
