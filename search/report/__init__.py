"""What a study leaves for the meeting.

As in Optuna's visualization code, building *what to draw* (``front``: pure functions of
the trials' recorded attributes, tested on data) is kept apart from drawing and writing
it (``draw``: matplotlib, the CSV and the front's ONNX files).
"""
