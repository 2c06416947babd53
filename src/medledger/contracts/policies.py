"""Consortium policies: Cedar rules and the timing parameters of the care contracts.

Contracts *grant* access (a consent, an emergency opening, a referral, an enrolment, being the
custodian); Cedar policies *restrict* it, consortium-wide. `authorize` asks Cedar only once a
contract has found a basis, with a built-in `permit` standing for that basis, so a `forbid`
always wins and a Cedar `permit` can never open access on its own: every allowed access keeps
a basis on the chain that a DPO can trace.

Policies are set by a governance vote (`set_policy`, `remove_policy`, `set_policy_param`
actions; validated at proposal time, so members vote on text that parses and type-checks
against `SCHEMA`). A policy set is compiled once per change and cached by its hash in a
module-level dict: the cache is content-addressed, so every replica gets the same decisions
whatever it has cached.

The Cedar request `authorize` evaluates:
    principal  Hospital::"<org>" or Practitioner::"<org>/<id>"
    action     Action::"treatment" | "emergency" | "research"   (the purpose)
    resource   Category::"<category>"                           (see categories.py)
    context    org, practitioner, roles, custodian, rtype (FHIR resource type or ""),
               basis (custodian|consent|emergency|referral|enrolment|patient), basis_id,
               at_ms (the access time), own (the actor's hospital is the custodian)
There is no entity store: write conditions on `context` (e.g. `context.org == "chu-lyon"`),
since `principal in Hospital::"..."` is never true here.

Default policy (genesis, document `defaults`), kept minimal on purpose:
    no-research-on-documents: free-text documents (letters, reports) are the records most
    likely to carry direct identifiers, so they are never read for research, whatever the
    consent says; studies use structured data.

State (prefix `policy/`):
    policy/doc/<id>     a policy document: Cedar text, its hash, when it was set
    policy/set_hash     hash of the current set (the cache key)
    policy/params       overrides of DEFAULT_PARAMS
    <contract>/next_due the earliest deadline of a DueQueue (see below)
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from typing import Any

import cedarpy

from medledger.contracts import governance
from medledger.contracts.common import DAY_MS, check_id
from medledger.ledger import codec
from medledger.ledger.contract import Context, Contract
from medledger.ledger.errors import Code, TxError
from medledger.ledger.genesis import Genesis
from medledger.ledger.store import StateView

DEFAULT_PARAMS: dict[str, int] = {
    "emergency_default_ms": DAY_MS,  # break-the-glass lasts 24 h unless asked shorter
    "emergency_max_ms": 3 * DAY_MS,  # and never longer than this
    "emergency_window_ms": 30 * DAY_MS,  # overuse is counted over this sliding window
    "emergency_threshold": 5,  # more openings than this in the window flags the practitioner
    "referral_before_ms": 7 * DAY_MS,  # the receiving hospital may read from D - before
    "referral_after_ms": 30 * DAY_MS,  # until D + after
    "referral_delivery_ms": 2 * DAY_MS,  # the referring hospital delivers within this
    "erasure_deadline_ms": 30 * DAY_MS,  # GDPR art. 12(3): one month
    "retention_years": 20,  # French hospital files (Code de la santé publique R1112-7)
    # An erasure or a key rebinding filed by a hospital in the patient's name waits this long,
    # cancellable by the patient's key or an earlier custodian's DPO (patients.py, erasure.py).
    "on_behalf_delay_ms": 3 * DAY_MS,
    # A hospital binds a patient's first key only once its custody is at least this old.
    "custody_min_age_ms": DAY_MS,
    # A study query's counting hospital is chosen by a link (an on-behalf enrolment, a key
    # attestation) only once the link is this old at the query's start: the patient and the
    # earlier custodians had the time to undo it (node/study_partials.py). 0 in a sandbox;
    # a consortium founded across machines starts at 72 h (provisioning/founding.py).
    "study_link_settle_ms": 0,
}
#: Parameters that may be zero (the others must be at least 1).
_MAY_BE_ZERO = frozenset(
    {
        "emergency_threshold",
        "referral_before_ms",
        "referral_after_ms",
        "custody_min_age_ms",
        "study_link_settle_ms",
    }
)

MAX_POLICY_TEXT = 16 * 1024

SCHEMA = """
entity Hospital;
entity Practitioner;
entity Category;
type AccessContext = {
  org: String, practitioner: String, roles: Set<String>, custodian: String,
  rtype: String, basis: String, basis_id: String, at_ms: Long, own: Bool
};
action "treatment", "emergency", "research" appliesTo {
  principal: [Hospital, Practitioner], resource: [Category], context: AccessContext
};
"""

DEFAULT_POLICIES: dict[str, str] = {
    "defaults": (
        "// Free-text documents carry identifiers: never read for research.\n"
        '@id("no-research-on-documents")\n'
        'forbid(principal, action == Action::"research", resource == Category::"documents");\n'
    ),
}

_BASIS_POLICY_ID = "medledger#basis"


def params(state: StateView) -> dict[str, int]:
    stored = state.get("policy/params") or {}
    return {**DEFAULT_PARAMS, **stored}


def param(state: StateView, name: str) -> int:
    stored = state.get("policy/params") or {}
    return int(stored.get(name, DEFAULT_PARAMS[name]))


# -- Cedar: parse, check, compile, cache ----------------------------------------------------


def _est(text: str, where: str) -> dict[str, Any]:
    """The policies of one document in Cedar's JSON form, refusing what we cannot evaluate."""
    if len(text.encode()) > MAX_POLICY_TEXT:
        raise TxError(Code.INVALID_BODY, f"field {where}: longer than {MAX_POLICY_TEXT} bytes")
    try:
        est: dict[str, Any] = json.loads(cedarpy.policies_to_json_str(text))
    except ValueError as exc:
        raise TxError(Code.INVALID_BODY, f"field {where}: Cedar does not parse: {exc}") from None
    if est.get("templates"):
        raise TxError(Code.INVALID_BODY, f"field {where}: templates (?principal) are not allowed")
    if not est.get("staticPolicies"):
        raise TxError(Code.INVALID_BODY, f"field {where}: no policy in the text")
    return est


def check_policy_text(text: str, where: str = "args.text") -> None:
    """Parse and type-check against SCHEMA: a typo would otherwise make a forbid silently fail."""
    _est(text, where)
    result = cedarpy.validate_policies(text, SCHEMA)
    if not result.validation_passed:
        detail = "; ".join(sorted({str(e) for e in result.errors}))
        raise TxError(Code.INVALID_BODY, f"field {where}: does not fit the schema: {detail}")


@dataclass(frozen=True)
class CompiledPolicies:
    policy_set: Any  # cedarpy.PolicySet
    names: dict[str, str]  # Cedar policy id -> "<document>" or "<document>/<@id>"
    empty: bool = False  # no document: the basis alone decides


_compiled: dict[bytes, CompiledPolicies] = {}
_compiled_lock = threading.Lock()
_ENTITIES: list[Any] = []


def _entities() -> Any:
    if not _ENTITIES:
        _ENTITIES.append(cedarpy.Entities.from_json_str("[]"))
    return _ENTITIES[0]


def _set_hash(docs: list[tuple[str, bytes]]) -> bytes:
    return codec.sha256(codec.encode([[d, h] for d, h in docs]))


def _in_order(policies: dict[str, Any]) -> list[Any]:
    """A document's policies in text order (Cedar numbers them policy0, policy1, ...)."""
    return [policies[k] for k in sorted(policies, key=lambda k: (len(k), k))]


def _compile(docs: list[dict[str, Any]]) -> CompiledPolicies:
    basis = json.loads(cedarpy.policies_to_json_str("permit(principal, action, resource);"))
    static: dict[str, Any] = {_BASIS_POLICY_ID: basis["staticPolicies"]["policy0"]}
    names: dict[str, str] = {_BASIS_POLICY_ID: "basis"}
    for doc in docs:
        est = _est(doc["text"], f"policy {doc['id']}")
        for n, body in enumerate(_in_order(est["staticPolicies"])):
            new_id = f"{doc['id']}#{n}"
            static[new_id] = body
            note = (body.get("annotations") or {}).get("id")
            names[new_id] = f"{doc['id']}/{note}" if note else new_id
    combined = {"staticPolicies": static, "templates": {}, "templateLinks": []}
    policy_set = cedarpy.PolicySet.from_json_str(json.dumps(combined, sort_keys=True))
    return CompiledPolicies(policy_set, names, empty=not docs)


def compiled(state: StateView) -> CompiledPolicies:
    """The current policy set, compiled once per distinct set (cache keyed by its hash)."""
    key = state.get("policy/set_hash")
    key = b"" if key is None else bytes(key)
    found = _compiled.get(key)
    if found is not None:
        return found
    docs = [d for _, d in state.scan("policy/doc/")]
    result = _compile(docs)
    with _compiled_lock:
        if len(_compiled) > 64:
            _compiled.clear()
        _compiled[key] = result
    return result


def forbidding(
    state: StateView,
    principal: tuple[str, str],
    purpose: str,
    category: str,
    context: dict[str, Any],
) -> str | None:
    """None when the consortium's policies let the basis stand; else why not (deny wins).

    A policy that errors during evaluation also denies: failing closed is the only safe
    reading of a rule that could not be evaluated.
    """
    policies = compiled(state)
    if policies.empty:
        return None
    request = {
        "principal": {"type": principal[0], "id": principal[1]},
        "action": {"type": "Action", "id": purpose},
        "resource": {"type": "Category", "id": category},
        "context": context,
    }
    result = cedarpy.is_authorized(request, policies.policy_set, _entities())
    if result.allowed:
        return None
    errors = result.diagnostics.errors
    reasons = [policies.names.get(r, r) for r in result.diagnostics.reasons]
    if errors and not reasons:
        return f"policy error: {errors[0]}"
    return "policy forbid " + ", ".join(sorted(reasons))


# -- governance actions ---------------------------------------------------------------------


@dataclass
class SetPolicy:
    id: str
    text: str


@dataclass
class RemovePolicy:
    id: str


@dataclass
class SetPolicyParam:
    name: str
    value: int


def _validate_set(state: StateView, msg: SetPolicy) -> None:
    check_id(msg.id, "args.id")
    check_policy_text(msg.text)


def _refresh_hash(state: StateView) -> None:
    docs = [(d["id"], bytes(d["hash"])) for _, d in state.scan("policy/doc/")]
    state.put("policy/set_hash", _set_hash(docs) if docs else b"")


def _store_doc(state: StateView, doc_id: str, text: str, time_ms: int, tx: bytes) -> None:
    state.put(
        f"policy/doc/{doc_id}",
        {
            "id": doc_id,
            "text": text,
            "hash": hashlib.sha256(text.encode()).digest(),
            "time": time_ms,
            "tx": tx,
        },
    )


def _apply_set(ctx: Context, msg: SetPolicy) -> None:
    _store_doc(ctx.state, msg.id, msg.text, ctx.time_ms, ctx.tx_id)
    _refresh_hash(ctx.state)
    ctx.emit("policy.set", id=msg.id)


def _validate_remove(state: StateView, msg: RemovePolicy) -> None:
    if not state.has(f"policy/doc/{msg.id}"):
        raise TxError(Code.NOT_FOUND, f"no policy {msg.id!r}")


def _apply_remove(ctx: Context, msg: RemovePolicy) -> None:
    ctx.state.delete(f"policy/doc/{msg.id}")
    _refresh_hash(ctx.state)
    ctx.emit("policy.removed", id=msg.id)


def _validate_param(state: StateView, msg: SetPolicyParam) -> None:
    if msg.name not in DEFAULT_PARAMS:
        raise TxError(
            Code.INVALID_BODY,
            f"field args.name: unknown parameter {msg.name!r} (known: {', '.join(DEFAULT_PARAMS)})",
        )
    problem = param_problem(msg.name, msg.value)
    if problem:
        raise TxError(Code.INVALID_BODY, f"field args.value: {problem}")


def param_problem(name: str, value: int) -> str:
    """Why policy parameter `name` may not be `value` ("" when it may): the one rule of a
    `set_policy_param` vote and of a genesis."""
    low = 0 if name in _MAY_BE_ZERO else 1
    return f"must be at least {low}" if value < low else ""


def genesis_params(given: dict[str, Any], governance_version: int) -> dict[str, int]:
    """The policy parameters among a genesis's `given` ones, each an integer a vote could set;
    TxError naming the first that is not, or the first name neither contract knows (a
    misspelt setting would look applied and not be; governance's own values are left to
    it; from GENESIS_NAMES_VERSION). Under a governance version before its
    GENESIS_RULE_VERSION, each as given; before GENESIS_NAMES_VERSION unknown names are
    ignored (older chains replay so)."""
    if governance_version < governance.GENESIS_RULE_VERSION:
        return governance.as_given(given, DEFAULT_PARAMS)
    found: dict[str, int] = {}
    for name, value in sorted(given.items()):
        if name not in DEFAULT_PARAMS:
            if (
                name not in governance.DEFAULT_PARAMS
                and governance_version >= governance.GENESIS_NAMES_VERSION
            ):
                raise TxError(Code.INVALID_BODY, f"field params.{name}: no such parameter")
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            raise TxError(Code.INVALID_BODY, f"field params.{name}: an integer expected")
        problem = param_problem(name, value)
        if problem:
            raise TxError(Code.INVALID_BODY, f"field params.{name}: {problem}")
        found[name] = value
    return found


def _apply_param(ctx: Context, msg: SetPolicyParam) -> None:
    stored = ctx.state.get("policy/params") or {}
    stored[msg.name] = msg.value
    ctx.state.put("policy/params", stored)
    ctx.emit("policy.param", name=msg.name, value=msg.value)


governance.EXTRA_ACTIONS["set_policy"] = (SetPolicy, _validate_set, _apply_set)
governance.EXTRA_ACTIONS["remove_policy"] = (RemovePolicy, _validate_remove, _apply_remove)
governance.EXTRA_ACTIONS["set_policy_param"] = (SetPolicyParam, _validate_param, _apply_param)


# -- deadlines ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DueQueue:
    """A contract's deadlines, indexed `<prefix><time:016d>/<id:012d>`, earliest kept aside.

    end_block hooks run every block; reading one key (`next`) tells them whether anything is
    due, so a block with nothing due never scans the queue.
    """

    prefix: str  # e.g. "referral/due/"

    def _next(self) -> str:
        return self.prefix.rstrip("/") + "_next"

    def add(self, state: StateView, at_ms: int, item: int) -> None:
        state.put(f"{self.prefix}{at_ms:016d}/{item:012d}", item)
        earliest = state.get(self._next())
        if earliest is None or at_ms < int(earliest):
            state.put(self._next(), at_ms)

    def remove(self, state: StateView, at_ms: int, item: int) -> None:
        # The `next` time may now be early: the next pop finds nothing and moves it on.
        state.delete(f"{self.prefix}{at_ms:016d}/{item:012d}")

    def pop_due(self, state: StateView, now_ms: int) -> list[int]:
        """Items whose deadline is at or before now, in deadline order; removes them."""
        earliest = state.get(self._next())
        if earliest is None or int(earliest) > now_ms:
            return []
        due: list[tuple[str, int]] = []
        later: int | None = None
        for key, item in state.scan(self.prefix):
            at = int(key[len(self.prefix) : len(self.prefix) + 16])
            if at > now_ms:
                later = at
                break
            due.append((key, int(item)))
        for key, _ in due:
            state.delete(key)
        if later is None:
            state.delete(self._next())
        else:
            state.put(self._next(), later)
        return [item for _, item in due]


# -- genesis and queries --------------------------------------------------------------------


def genesis(state: StateView, g: Genesis) -> None:
    overrides = genesis_params(g.params, governance.contract_version(state, "governance"))
    if overrides:
        state.put("policy/params", overrides)
    for doc_id, text in sorted(DEFAULT_POLICIES.items()):
        _store_doc(state, doc_id, text, g.time_ms, b"")
    _refresh_hash(state)


def q_list(state: StateView, args: dict[str, Any]) -> list[dict[str, Any]]:
    return [d for _, d in state.scan("policy/doc/")]


def q_params(state: StateView, args: dict[str, Any]) -> dict[str, int]:
    return params(state)


def q_schema(state: StateView, args: dict[str, Any]) -> str:
    return SCHEMA


CONTRACTS = [
    Contract(
        name="policies",
        version=1,
        messages={},
        queries={"policies/list": q_list, "policies/params": q_params, "policies/schema": q_schema},
        genesis=genesis,
    )
]
