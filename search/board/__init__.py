"""What runs on a board, and how the search talks to it. Imports no torch, no Optuna.

- ``timing``: batch-1 latency of an ONNX file under ONNX Runtime, and where it was taken.
- ``agent``: the HTTP server a board runs (``python -m search.board.agent``).
- ``client``: the search side of the agent, a measurer that times on the board.
- ``farm``: several boards of one kind as one measurer, checked to agree first.

A board needs only ``search/__init__.py`` and this folder, with ``onnxruntime`` and
``numpy`` installed (``tests/test_board.py`` starts the agent from exactly that).
"""
