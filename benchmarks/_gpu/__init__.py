"""The sections of ``benchmarks/gpu.py``; that script is the entry point (the CLI, the section order).

- :mod:`.harness`: what every section shares: the time budget, step timing, the device, a model
  ready for inference, errors as one-line table cells.
- :mod:`.stream`: sections 1 and 2, the server's stream step (H2D, forward, D2H) per model, batch,
  precision, layout and CUDA graph, with its memory.
- :mod:`.agreement`: section 3, fp32 against bf16 on a real video.
- :mod:`.onnx_runtime`: section 4, the ONNX export under onnxruntime (IO binding on CUDA).
- :mod:`.report`: the machine's description and the markdown tables.

``gpu.py`` imports this package from its own folder (``python benchmarks/gpu.py`` puts that folder
first on ``sys.path``); nothing else imports it.
"""
