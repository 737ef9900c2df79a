"""`streamwise bench`: the reference workload through the raw Kafka ceiling, two idiomatic
Faust baselines, an idiomatic Quix Streams app, the Streamwise worker and its replay, side by
side against one broker (DESIGN §6).

Modules: `workload` (data set, backlog, open-loop producer), `systems` (the rows), `ceiling`,
`faust_baseline`, `faust_batched`, `quix_baseline` (the comparison processes; Faust and Quix
Streams come with the `bench` extra), `baseline_model` (their model and features),
`replay_run` (the replay row), `measure`, `runner` (phases), `report` (table), `online_load`
(`--online`), `broker` (a private broker).
"""

from .command import add_arguments, run_command

__all__ = ["add_arguments", "run_command"]
