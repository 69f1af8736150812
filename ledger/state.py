"""The single writer's in-memory state, and how each event type changes it.

Applying an event is trivial and deterministic (replay runs it again): every posting moves a
balance, and a few event types also record domain facts (clients, pending deposits,
withdrawals, holds). Deciders read this state; only ``apply`` writes it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from ledger.journal import GENESIS_HASH, Entry, Posting
from ledger.trading import TRADING_APPLIERS, TradingState

Data = Mapping[str, Any]


@dataclass
class LedgerState:
    position: int = 0
    head_hash: str = GENESIS_HASH
    balances: dict[tuple[str, str], int] = field(default_factory=dict)  # posting sums
    clients: dict[str, dict[str, Any]] = field(default_factory=dict)
    bank_references: set[str] = field(default_factory=set)
    crypto_deposits: dict[str, dict[str, Any]] = field(default_factory=dict)
    destinations: dict[str, dict[str, Any]] = field(default_factory=dict)  # "client/dest"
    withdrawals: dict[str, dict[str, Any]] = field(default_factory=dict)
    holds: dict[str, dict[str, Any]] = field(default_factory=dict)
    reversed: set[int] = field(default_factory=set)
    marks: dict[str, str] = field(default_factory=dict)  # "BTC/USD" -> price
    trading: TradingState = field(default_factory=TradingState)

    def balance(self, account: str, asset: str) -> int:
        """The posting sum of an account in an asset (credit-normal accounts are negative)."""
        return self.balances.get((account, asset), 0)

    def apply(self, entry: Entry) -> None:
        for account, asset, units in entry.postings:
            key = (account, asset)
            total = self.balances.get(key, 0) + units
            if total:
                self.balances[key] = total
            else:
                self.balances.pop(key, None)
        applier = _APPLIERS.get(entry.type)
        if applier is not None:
            applier(self, entry.data, entry.postings)
        self.position = entry.position
        self.head_hash = entry.hash

    # Snapshots: plain JSON so that a snapshot is readable and independent of pickling.
    def to_snapshot(self) -> bytes:
        return orjson.dumps(
            {
                "position": self.position,
                "head_hash": self.head_hash,
                "balances": sorted([a, s, str(u)] for (a, s), u in self.balances.items()),
                "clients": {c: {**v, "subs": sorted(v["subs"])} for c, v in self.clients.items()},
                "bank_references": sorted(self.bank_references),
                "crypto_deposits": self.crypto_deposits,
                "destinations": self.destinations,
                "withdrawals": self.withdrawals,
                "holds": self.holds,
                "reversed": sorted(self.reversed),
                "marks": self.marks,
                "trading": self.trading.to_dict(),
            },
            # Canonical bytes: a replayed state and the live one compare equal byte for byte.
            option=orjson.OPT_SORT_KEYS,
        )

    @classmethod
    def from_snapshot(cls, raw: bytes) -> LedgerState:
        body = orjson.loads(raw)
        return cls(
            position=body["position"],
            head_hash=body["head_hash"],
            balances={(a, s): int(u) for a, s, u in body["balances"]},
            clients={c: {**v, "subs": set(v["subs"])} for c, v in body["clients"].items()},
            bank_references=set(body["bank_references"]),
            crypto_deposits=body["crypto_deposits"],
            destinations=body["destinations"],
            withdrawals=body["withdrawals"],
            holds=body["holds"],
            reversed=set(body["reversed"]),
            marks=body.get("marks", {}),
            trading=TradingState.from_dict(body.get("trading", {})),
        )


def _client_opened(state: LedgerState, data: Data, _: tuple[Posting, ...]) -> None:
    state.clients[data["client"]] = {"name": data["name"], "subs": set(data["sub_accounts"])}


def _sub_account_opened(state: LedgerState, data: Data, _: tuple[Posting, ...]) -> None:
    state.clients[data["client"]]["subs"].add(data["sub_account"])


def _fiat_deposited(state: LedgerState, data: Data, _: tuple[Posting, ...]) -> None:
    state.bank_references.add(f"{data['asset']}/{data['bank_reference']}")


def _crypto_detected(state: LedgerState, data: Data, _: tuple[Posting, ...]) -> None:
    state.crypto_deposits[data["tx_hash"]] = {**data, "status": "pending", "confirmations": 0}


def _crypto_confirmations(state: LedgerState, data: Data, _: tuple[Posting, ...]) -> None:
    state.crypto_deposits[data["tx_hash"]]["confirmations"] = data["confirmations"]


def _crypto_credited(state: LedgerState, data: Data, _: tuple[Posting, ...]) -> None:
    deposit = state.crypto_deposits[data["tx_hash"]]
    deposit["status"] = "credited"
    deposit["confirmations"] = data["confirmations"]


def _crypto_cancelled(state: LedgerState, data: Data, _: tuple[Posting, ...]) -> None:
    state.crypto_deposits[data["tx_hash"]]["status"] = "cancelled"


def _destination_whitelisted(state: LedgerState, data: Data, _: tuple[Posting, ...]) -> None:
    state.destinations[f"{data['client']}/{data['destination']}"] = {
        "asset": data["asset"],
        "address": data["address"],
    }


def _withdrawal_requested(state: LedgerState, data: Data, _: tuple[Posting, ...]) -> None:
    state.withdrawals[data["withdrawal"]] = {**data, "status": "pending", "approved_by": []}


def _withdrawal_approved(state: LedgerState, data: Data, _: tuple[Posting, ...]) -> None:
    state.withdrawals[data["withdrawal"]]["approved_by"].append(data["approver"])


def _withdrawal_closed(status: str) -> Callable[[LedgerState, Data, tuple[Posting, ...]], None]:
    def apply(state: LedgerState, data: Data, _: tuple[Posting, ...]) -> None:
        state.withdrawals[data["withdrawal"]]["status"] = status

    return apply


def _hold_placed(state: LedgerState, data: Data, _: tuple[Posting, ...]) -> None:
    state.holds[data["hold"]] = {**data, "status": "open"}


def _hold_closed(status: str) -> Callable[[LedgerState, Data, tuple[Posting, ...]], None]:
    def apply(state: LedgerState, data: Data, _: tuple[Posting, ...]) -> None:
        state.holds[data["hold"]]["status"] = status

    return apply


def _event_reversed(state: LedgerState, data: Data, _: tuple[Posting, ...]) -> None:
    state.reversed.add(data["reversed_position"])


def _mark_set(state: LedgerState, data: Data, _: tuple[Posting, ...]) -> None:
    state.marks[f"{data['asset']}/{data['quote']}"] = data["price"]


_APPLIERS: dict[str, Callable[[LedgerState, Data, tuple[Posting, ...]], None]] = {
    "client_opened": _client_opened,
    "sub_account_opened": _sub_account_opened,
    "fiat_deposited": _fiat_deposited,
    "crypto_deposit_detected": _crypto_detected,
    "crypto_deposit_confirmations": _crypto_confirmations,
    "crypto_deposit_credited": _crypto_credited,
    "crypto_deposit_cancelled": _crypto_cancelled,
    "destination_whitelisted": _destination_whitelisted,
    "withdrawal_requested": _withdrawal_requested,
    "withdrawal_approved": _withdrawal_approved,
    "withdrawal_executed": _withdrawal_closed("executed"),
    "withdrawal_rejected": _withdrawal_closed("rejected"),
    "withdrawal_expired": _withdrawal_closed("expired"),
    "hold_placed": _hold_placed,
    "hold_posted": _hold_closed("posted"),
    "hold_voided": _hold_closed("voided"),
    "hold_expired": _hold_closed("expired"),
    "event_reversed": _event_reversed,
    "mark_set": _mark_set,
}


def _trading(
    apply: Callable[[TradingState, Data], None],
) -> Callable[[LedgerState, Data, tuple[Posting, ...]], None]:
    return lambda state, data, _: apply(state.trading, data)


_APPLIERS.update({name: _trading(apply) for name, apply in TRADING_APPLIERS.items()})
