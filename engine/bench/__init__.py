"""`streamwise bench`: the reference workload through the raw Kafka ceiling, two idiomatic
Faust baselines and the Streamwise worker, side by side against one broker (DESIGN §6).

Modules: `workload` (data set, backlog, open-loop producer), `systems` (the four rows),
`ceiling`, `faust_baseline`, `faust_batched` (the comparison processes), `measure`,
`runner` (phases), `report` (table), `online_load` (`--online`), `broker` (a private broker).
"""

from .command import add_arguments, run_command

__all__ = ["add_arguments", "run_command"]
