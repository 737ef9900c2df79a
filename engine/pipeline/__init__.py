"""The batch pipeline (framework-free): a poll of records in, decisions, side records and
state changes per partition out. See `batch.Pipeline`."""

from .batch import STAGES, Pipeline
from .decide import Decider, abstain_decision
from .partition import PartitionState, Store
from .preview import Preview, features_now, last_decision, preview, table_view
from .records import BatchResult, InputRecord, PollResult, Record, SideRecord
from .replica import ReplicaView, StandbyRead
from .single import PartitionPipeline

__all__ = ["STAGES", "BatchResult", "Decider", "InputRecord", "PartitionPipeline",
           "PartitionState", "Pipeline", "PollResult", "Preview", "Record", "ReplicaView",
           "SideRecord", "StandbyRead", "Store", "abstain_decision", "features_now",
           "last_decision", "preview", "table_view"]
