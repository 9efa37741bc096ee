"""The stages of one trial, one module each, as the README's "One trial" diagram names them.

Each stage is a plain function of plain values (a module, bytes of ONNX, a split of the
data, a dataclass of statistics): it can be tested, timed and replaced alone. Only
``search.study.objective`` chains them (``search.finalize`` through its steps), and only
it sees an Optuna trial. Sampling is the first stage and lives with the search spaces
(``spaces.sample_arch``).
"""


class StageFailed(Exception):
    """A stage of a trial failed: the study records the trial as failed and goes on."""

    def __init__(self, stage: str, reason: str):
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason
