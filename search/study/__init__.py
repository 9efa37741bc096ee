"""The study: its configuration, its storage, the budgeted trial loop, and the objective.

- ``config``: what every trial of a study shares, stored with the study (no heavy imports:
  the command line reads its defaults for ``--help``).
- ``attrs``: names of what trials and studies record.
- ``storage``: URLs, opening the database, our tables beside Optuna's (``Store``), and
  the request as a study to create or join (``plan_study``, ``open_study``).
- ``loop``: the sampler and the trial loop that stops at exactly ``--budget``.
- ``objective``: one trial, the stages chained; the only code that sees ``optuna.Trial``.
"""
