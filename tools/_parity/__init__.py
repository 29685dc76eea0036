"""The parts of ``tools/make_parity_fixtures.py``, which is their entry point (the command line).

- :mod:`.variants`: the variant names, the CI set, input shapes, class counts and seeds.
- :mod:`.specs`: our ``model/specs.py`` in the official ``BLOCK_SPECS`` form, and the check that
  the two agree.
- :mod:`.oracle`: the official network: built, given seeded non-trivial weights and BN
  statistics, run (XLA and eager, whole clip and frame by frame) and restored from its checkpoint.
- :mod:`.fixtures`: what is written per variant (checkpoint, ``io.npz``, ``meta.json``) and
  ``param_counts.json``.
- :mod:`.tf_checkpoint_fixture`: the small multi-dtype checkpoint that tests
  ``model/io/tf_checkpoint.py``.
- :mod:`.saved_model_fixture`: a fine-tuned user's SavedModel (A0 stream, 3 classes) exported
  the tutorial's way, for ``model.convert SAVED_MODEL_DIR``.

Like the script, this package needs the separate TensorFlow environment and is never imported
by the project; the script imports it from its own folder (``python tools/make_parity_fixtures.py``
puts that folder first on ``sys.path``).
"""
