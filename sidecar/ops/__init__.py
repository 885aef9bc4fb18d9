"""Operations: what an operator or DBA checks and maintains.

status (tracked tables, automations, pauses, recent runs), inventory (what
automations touch, with warnings), owners (who can pause and undo each automation),
drill (the launch checklist on a scratch copy of a table, drill_copy), and
retention (purge of old history, only when asked).
"""

from .drill import DrillReport, run_drill
from .inventory import InventoryReport
from .owners import OwnersReport
from .retention import PurgeReport, purge
from .status import StatusReport, gather

# inventory.inventory() and owners.owners() are reached through their modules,
# whose names they share.
__all__ = ["DrillReport", "InventoryReport", "OwnersReport", "PurgeReport", "StatusReport", "gather", "purge",
           "run_drill"]
