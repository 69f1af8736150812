"""The one switch for the C accelerators: ``PRIMELEDGER_PURE_PYTHON=1`` turns all three off.

They are the writer's fast path (``ledger._fastpath``), the store's commit through libpq
(``ledger._store``) and the read side's decoder (``projections._native``); each module that
uses one reads this flag, so the whole process runs one way or the other.
"""

from __future__ import annotations

import os
from typing import Final

PURE_PYTHON: Final = bool(os.environ.get("PRIMELEDGER_PURE_PYTHON"))
