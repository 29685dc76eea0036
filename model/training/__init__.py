"""Training: the generated motion data set, training and evaluation of the bundled model.

- :mod:`.datasets`: the synthetic camera-motion data set and a small video writer.
- :mod:`.train`: training a stream model on it, ``python -m model.train``.
- :mod:`.evaluate`: held-out, codec and long-video evaluation, ``python -m model.evaluate``.

The network and weight I/O (``model.movinet``, ``model.io``) import nothing from here; training
is a client of them, like the service.
"""
