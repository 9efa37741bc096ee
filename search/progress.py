"""How the engine reports progress. The engine calls these; the command line draws them."""

from __future__ import annotations


class SearchProgress:
    """Does nothing: the engine's default, and what tests use."""

    def start(self, n_complete: int, budget: int) -> None:
        """The trial loop begins with ``n_complete`` of ``budget`` trials already done."""

    def stage(self, trial_number: int, stage: str) -> None:
        """Trial ``trial_number`` entered ``stage``."""

    def fraction(self, done: float) -> None:
        """Fraction of the current long step (a training run) done."""

    def trial_finished(self, trial, n_complete: int) -> None:
        """A trial ended (complete, failed or rejected); ``n_complete`` count the study's complete trials."""

    def message(self, text: str) -> None:
        """A line for the user."""

    def close(self) -> None:
        """The trial loop ended."""
