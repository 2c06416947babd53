"""What the state machine answers: tx results, events, block records.

Plain frozen dataclasses, so that both engines and every interface speak of the same things.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from medledger.ledger import codec


@dataclass(frozen=True)
class Event:
    """Something a tx did that others may want to hear about (stream, notifications)."""

    type: str
    attrs: tuple[tuple[str, str], ...] = ()

    def get(self, key: str) -> str | None:
        for k, v in self.attrs:
            if k == key:
                return v
        return None

    def to_obj(self) -> list[object]:
        return [self.type, [list(kv) for kv in self.attrs]]

    @classmethod
    def from_obj(cls, obj: list[object]) -> Event:
        kind, attrs = obj
        assert isinstance(kind, str) and isinstance(attrs, list)
        return cls(kind, tuple((str(k), str(v)) for k, v in attrs))


@dataclass(frozen=True)
class TxResult:
    """The verdict on one tx: code 0 is success; any other code is a stable rejection reason."""

    code: int
    log: str = ""
    events: tuple[Event, ...] = ()

    @property
    def ok(self) -> bool:
        return self.code == 0

    def to_obj(self) -> list[object]:
        return [self.code, self.log, [e.to_obj() for e in self.events]]

    @classmethod
    def from_obj(cls, obj: list[object]) -> TxResult:
        code, log, events = obj
        assert isinstance(code, int) and isinstance(log, str) and isinstance(events, list)
        return cls(code, log, tuple(Event.from_obj(e) for e in events))


@dataclass(frozen=True)
class ValidatorUpdate:
    """A change of a validator's voting power (0 removes it); pub_key is a raw Ed25519 key."""

    pub_key: bytes
    power: int


@dataclass(frozen=True)
class AppInfo:
    height: int
    app_hash: bytes


@dataclass(frozen=True)
class QueryResult:
    code: int
    value: bytes
    log: str
    height: int


@dataclass(frozen=True)
class BlockOutcome:
    results: list[TxResult]
    app_hash: bytes
    validator_updates: list[ValidatorUpdate] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)  # end-of-block events (deadlines, ...)


@dataclass(frozen=True)
class BlockHeader:
    """The per-height record's header; the same shape on both engines.

    Under the solo engine it is signed by the solo key; under CometBFT the signature is empty
    and `consensus_hash` holds CometBFT's block hash for that height.
    """

    chain: str
    height: int
    time_ms: int
    prev_hash: bytes
    tx_root: bytes
    app_hash: bytes
    proposer: bytes
    consensus_hash: bytes = b""

    def to_obj(self) -> dict[str, object]:
        return {
            "chain": self.chain,
            "height": self.height,
            "time": self.time_ms,
            "prev": self.prev_hash,
            "tx_root": self.tx_root,
            "app_hash": self.app_hash,
            "proposer": self.proposer,
            "consensus_hash": self.consensus_hash,
        }

    def encode(self) -> bytes:
        return codec.encode(self.to_obj())

    def hash(self) -> bytes:
        return codec.sha256(self.encode())

    @classmethod
    def decode(cls, data: bytes) -> BlockHeader:
        obj = codec.decode(data)
        if not isinstance(obj, dict):
            raise ValueError("block header is not a map")
        return cls(
            chain=obj["chain"],
            height=obj["height"],
            time_ms=obj["time"],
            prev_hash=obj["prev"],
            tx_root=obj["tx_root"],
            app_hash=obj["app_hash"],
            proposer=obj["proposer"],
            consensus_hash=obj["consensus_hash"],
        )


@dataclass(frozen=True)
class BlockRecord:
    """A committed height: header (as stored bytes), signature, txs and their results."""

    header: BlockHeader
    header_bytes: bytes
    signature: bytes
    txs: list[bytes]
    results: list[TxResult]
    events: tuple[Event, ...] = ()

    @property
    def height(self) -> int:
        return self.header.height

    @property
    def hash(self) -> bytes:
        return codec.sha256(self.header_bytes)
