"""The audit trail at hospital scale: audited FHIR reads per second, with and without audit.

    medledger bench audit [--set seconds=20 --set readers=8 --set direct=20000 --set cometbft=1
                           --set callers=64 --set pairs=4 --set journal_only=0]

Two hospitals serve reads at once, over HTTP on loopback: A its own records, B the copies of
A's records its sync agent fetched under the patient's consent (`readers` client threads
each, a backend token: `authorize` decides every read). Each read's access entry goes
through the hospital's audit journal (node/audit.py): fsync'd before the answer, on the chain
in the journal's next shared `access.log` tx. Figures: reads per second and read latency
p50/p95 (own and copies), audit entries per tx, audit entries committed per second; then the
same load with the audit switched off, for the ratio (`pairs` pairs in alternating order,
each run after the previous one's entries are on the chain: the reads of all "on" runs over
those of all "off" runs, each pair's, and on CometBFT the serving processes', the network's
and this bench's readers' CPU per read in each run); and the latency with one reader per
hospital (on and off), where the machine's queueing does not hide the audit's own cost. The
switch is this bench's alone: a file `bench-audit-off` in a hospital home, read by the
`HospitalServices.log_later` this script installs in its own node processes (never a product
setting). With `journal_only=1` each pair is a round of three runs: the third mode
("journal", switched by a file `bench-audit-journal-only`) makes each read's entry durable
exactly as "on" does, in the node's journal, and marks it done there, never sent to the chain:
it splits the audit's cost into a durable local record's and the chain's (`off_journal_on`).
`journal_only=3` makes it a round of four: "off", "peer" (the fair peer: a plain FHIR
server's durable local audit log, one JSON line per read appended and fsync'd in the read's
own thread before the answer; `_peer_log`), "journal" and "on".
Last, the journal driven
directly (`direct` entries logged by `callers` threads, then drained): audit entries
committed per second (from the first entry logged to the last committed, and from the first
commit to the last), and per tx.

On the 4-validator CometBFT network (1 s blocks; each hospital a node process started from
this script) when CometBFT is built; `cometbft=0` runs the solo sandbox in this process only
(the smoke test does).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson

OFF = "bench-audit-off"
JOURNAL_ONLY = "bench-audit-journal-only"
# The fair peer's audit log (`journal_only=3`, mode "peer"), in each hospital home: one JSON
# line per entry, appended and fsync'd in the read's own thread before the answer.
PEER_LOG = "bench-audit-peer.log"
PEER: dict[str, Any] = {"fds": {}, "fsyncs": 0}  # in a node process: its fd by home, fsyncs
JOURNALS: dict[str, Any] = {}  # in a node process: the journal `log_later` used, by home
# In a node process, per read audited: its thread's CPU in `begin` and in `end`, the wall
# `end` waited, and the wall from `begin` to the end of `end` (seconds).
CALLS: deque[tuple[float, float, float, float]] = deque()
A, B = "chu-lyon", "aphp-paris"
PID = hashlib.sha256(b"bench audit direct").hexdigest()


def install_switch() -> Callable[[], None]:
    """`HospitalServices.log_later` (which `log` calls) skips the audit while the hospital
    home holds `OFF`; while it holds `JOURNAL_ONLY` the entries go through the node's journal
    exactly as with the audit on (`begin`, the writer, its fsync before `end` returns) but
    the writer marks them done as soon as they are durable instead of queueing them for the
    chain (`AuditJournal._push` patched here: this bench's alone, never a product setting).
    With "peer" in `JOURNAL_ONLY`, the fair peer's audit instead of the journal (`_peer_log`).
    Every journal it used is kept in `JOURNALS` (their fsyncs are dumped with the threads')."""
    from medledger.api.services import HospitalServices
    from medledger.node.audit import AuditJournal

    original = HospitalServices.log_later
    push = AuditJournal._push

    def log_later(
        self: HospitalServices, entries: list[dict[str, Any]], *, wait: bool
    ) -> Callable[[], None]:
        home = self.node.config.home
        mode = _mode(home)
        if mode == "off":
            return lambda: None
        if mode == "peer":  # its whole wall in `begin`'s place: the write and the fsync
            cpu, wall = time.thread_time(), time.perf_counter()
            _peer_log(home, entries)
            spent = time.perf_counter() - wall
            CALLS.append((time.thread_time() - cpu, 0.0, spent, spent))
            return lambda: None
        journal = self.node.audit
        JOURNALS.setdefault(str(home), journal)
        journal.bench_local = mode != "on"  # type: ignore[attr-defined]
        cpu, wall = time.thread_time(), time.perf_counter()
        durable = original(self, entries, wait=wait)
        begun = time.thread_time() - cpu

        def timed() -> None:
            cpu, wall_end = time.thread_time(), time.perf_counter()
            try:
                durable()
            finally:
                now = time.perf_counter()
                CALLS.append((begun, time.thread_time() - cpu, now - wall_end, now - wall))

        return (lambda: None) if mode == "unwaited" else timed

    def local_push(self: AuditJournal, group: Any, ready: float, *, first: bool = False) -> None:
        if ready and getattr(self, "bench_local", False):  # just written (not a re-queue)
            self._settle([group])  # as a commit would: its done mark follows, never sent
            return
        push(self, group, ready, first=first)

    HospitalServices.log_later = log_later  # type: ignore[method-assign]
    AuditJournal._push = local_push  # type: ignore[method-assign]

    def undo() -> None:
        HospitalServices.log_later = original  # type: ignore[method-assign]
        AuditJournal._push = push  # type: ignore[method-assign]
        JOURNALS.clear()
        for fd in PEER["fds"].values():
            os.close(fd)
        PEER["fds"].clear()

    return undo


def _peer_log(home: Path, entries: list[dict[str, Any]]) -> None:
    """The fair peer's audit (what a plain FHIR server with a durable local audit log, an IHE
    ATNA secure node, does): one JSON line per entry (who, what, when, purpose: the entry's
    fields and the time in ms), appended to `PEER_LOG` in the home (opened O_APPEND) and
    fsync'd in the read's own thread before the answer: no journal, no writer thread, no
    batching, nothing sent to the chain."""
    fd = PEER["fds"].get(home)
    if fd is None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        fd = PEER["fds"].setdefault(home, os.open(home / PEER_LOG, flags, 0o600))
    when = time.time_ns() // 1_000_000
    data = b"".join(orjson.dumps({**e, "time": when}, default=_hex) + b"\n" for e in entries)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.fsync(fd)
    PEER["fsyncs"] += 1


def _hex(value: Any) -> str:
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(type(value).__name__)


def _peer_lines(homes: list[Path]) -> int:
    """The lines the peer's logs in `homes` hold (entries it recorded)."""
    total = 0
    for home in homes:
        with contextlib.suppress(OSError):
            total += (home / PEER_LOG).read_bytes().count(b"\n")
    return total


_MODES: dict[Path, tuple[float, str]] = {}  # home: (when read, its mode)


def _mode(home: Path) -> str:
    """The audit mode the switch files of `home` say, read at most every 50 ms: the same
    cost per read in every mode (a file read per read cost the journal modes more)."""
    now = time.monotonic()
    at, mode = _MODES.get(home, (-1.0, "on"))
    if now - at >= 0.05:
        if (home / OFF).exists():
            mode = "off"
        elif (home / JOURNAL_ONLY).exists():
            mode = (home / JOURNAL_ONLY).read_text() or "journal"
        else:
            mode = "on"
        _MODES[home] = (now, mode)
    return mode


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)


def _token(home: Path, org: str) -> str:
    from medledger.api.services import issuer_key
    from medledger.api.tokens import mint

    now = int(time.time())
    claims = {
        "iss": f"urn:medledger:{org}:issuer",
        "aud": f"urn:medledger:{org}:fhir",
        "sub": "Device/bench",
        "scope": "system/*.rs",
        "iat": now,
        "exp": now + 3600,
    }
    return mint(issuer_key(home), claims)


def _setup(node: Any, vault: Any) -> tuple[str, list[str]]:
    """A patient's records at A, and a consent for B (whose agent then copies them)."""
    from medledger.interop.synth import generate
    from medledger.node.ingest import Ingestor

    bundle = generate(1, [A, B], seed=21)[A][0]
    result = Ingestor(node, vault).ingest_bytes(orjson.dumps(bundle), "patient.json")
    if result.rejections:
        raise RuntimeError(result.rejections[0])
    (pid,) = result.pids
    node.wallet.send(
        "consent.grant",
        {
            "pid": pid,
            "grantee": f"org:{B}",
            "categories": ["*"],
            "purpose": "treatment",
            "start_ms": 0,
            "evidence_hash": b"\x01" * 32,
            "channel": "portal",
        },
    )
    rids = [r for r in result.rids if vault.info(r).resource_type == "Observation"]
    return pid, rids


def _wait_copies(url: str, token: str, rids: list[str], timeout: float = 120.0) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=url, headers=headers, timeout=10) as client:
        for rid in rids:
            while client.get(f"/fhir/Observation/{rid}").status_code != 200:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"B holds no copy of {rid} after {timeout}s")
                time.sleep(0.2)


def _load(targets: dict[str, tuple[str, str, list[str]]], readers: int, seconds: float) -> Any:
    """`readers` threads per target reading its rids in turn for `seconds`."""
    stop = threading.Event()
    latencies: dict[str, list[float]] = {kind: [] for kind in targets}
    errors: dict[str, int] = dict.fromkeys(targets, 0)

    def reader(kind: str, url: str, token: str, rids: list[str], offset: int) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
            i = offset
            while not stop.is_set():
                start = time.perf_counter()
                answer = client.get(f"/fhir/Observation/{rids[i % len(rids)]}")
                elapsed = time.perf_counter() - start
                if answer.status_code == 200:
                    latencies[kind].append(elapsed)
                else:
                    errors[kind] += 1
                i += 1

    threads = [
        threading.Thread(target=reader, args=(kind, url, token, rids, n))
        for kind, (url, token, rids) in targets.items()
        for n in range(readers)
    ]
    started = time.time()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(60)
    elapsed = time.time() - started
    served = sum(len(v) for v in latencies.values())
    out: dict[str, Any] = {"reads": served, "reads_per_s": round(served / elapsed, 1)}
    for kind, values in latencies.items():
        out[kind] = {
            "reads_per_s": round(len(values) / elapsed, 1),
            "p50_ms": _pct(values, 0.5) if values else None,
            "p95_ms": _pct(values, 0.95) if values else None,
            "errors": errors[kind],
        }
    return out, int(started * 1000), int(time.time() * 1000)


def _on_chain(
    engine: Any, orgs: list[str], since_ms: int, until_ms: int, reads: int
) -> dict[str, Any]:
    """The audit entries the load's `reads` put on the chain: per tx, and per second."""
    from medledger.contracts.access import journal_ref

    entries = [
        e
        for org in orgs
        for e in engine.query("access/by_custodian", {"org": org})
        if e["actor"] == f"org:{org}" and since_ms <= e["time"]
    ]
    if not entries:
        return {"entries": 0, "reads_without_entry": reads}
    txs = {bytes(e["tx"]) for e in entries}
    span_s = max(1.0, (until_ms - since_ms) / 1000)
    return {
        "entries": len(entries),
        "txs": len(txs),
        "entries_per_tx": round(len(entries) / len(txs), 1),
        "entries_committed_per_s": round(len(entries) / span_s, 1),
        "ids_unique": len({journal_ref(e) for e in entries}) == len(entries),
        "reads_without_entry": max(0, reads - len(entries)),
    }


def _settle(engine: Any, orgs: list[str], since_ms: int, reads: int, timeout: float = 60.0) -> None:
    """Until every read served since `since_ms` has its entry on the chain (one each; one
    missing shows in `_on_chain` as `reads_without_entry`), or none came for 3 s: the next
    run starts once the last block carrying them commits, not after polls that find none."""
    deadline = time.monotonic() + timeout
    last, grew = -1, time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - grew < 3.0:
        count = sum(
            1
            for org in orgs
            for e in engine.query("access/by_custodian", {"org": org})
            if e["actor"] == f"org:{org}" and since_ms <= e["time"]
        )
        if count >= reads:
            return
        if count != last:
            last, grew = count, time.monotonic()
        time.sleep(0.2)


# The order of the modes in each round with `journal_only=1`: each mode first, second and
# last twice over six rounds, and the first two rounds keep "off" before "on", then after it.
ORDERS = (
    ("off", "journal", "on"),
    ("on", "journal", "off"),
    ("journal", "off", "on"),
    ("on", "off", "journal"),
    ("off", "on", "journal"),
    ("journal", "on", "off"),
)


def _compare(
    homes: list[Path],
    urls: dict[str, str],
    engine: Any,
    rids: list[str],
    readers: int,
    seconds: int,
    pairs: int = 4,
    cpu: Callable[[], tuple[float, float]] | None = None,
    journal_only: int = 0,
) -> dict[str, Any]:
    """Reads with the audit on and off, in `pairs` pairs of alternating order (off then on,
    on then off, ...): with an even count each mode sits as often early as late, so a machine
    that speeds up or slows down over the minute weighs on both alike. The ratio is the
    reads of every "on" run over those of every "off" run (same durations); each pair's is
    in `reads_ratio_pairs`. No run pays for another's entries: the warm-up, the one-reader
    runs and every "on" run are followed by the wait until their entries are on the chain.
    `cpu()`: the CPU seconds so far of the two serving hospitals' node processes, and of the
    whole network (every node process and CometBFT), for the CPU per read in each run.
    With `journal_only`, each pair is a round of three runs (`ORDERS`): the third mode,
    "journal", makes each read's entry durable exactly as "on" does (the node's journal,
    fsync'd before the answer) and never sends it to the chain (`install_switch`): what a
    durable local audit record alone costs, against which "on" shows what the chain adds.
    `journal_only=2` adds a fourth, a diagnostic ("unwaited"): the entry written as with
    "journal" but the answer sent without waiting for it (never a product behaviour: it
    breaks "durable before the data leaves"), which splits the local journal's cost into the
    work of writing it and the cost of the read waiting for it. `journal_only=3` adds the
    fair peer instead ("peer", `_peer_log`): one JSON line per entry appended and fsync'd in
    the read's own thread before the answer, what a plain FHIR server's durable local audit
    log costs, side by side with the journal's in the same rounds."""
    tokens = {org: _token(home, org) for org, home in zip((A, B), homes, strict=False)}
    targets = {
        "own_records": (urls[A], tokens[A], rids),
        "copies": (urls[B], tokens[B], rids),
    }

    def audit(mode: str) -> None:
        _MODES.clear()  # this process's cache (solo); a node process's lasts 50 ms
        for home in homes[:2]:
            (home / JOURNAL_ONLY).unlink(missing_ok=True)
            if mode == "off":
                (home / OFF).touch()
            else:
                (home / OFF).unlink(missing_ok=True)
            if mode in ("journal", "unwaited", "peer"):
                (home / JOURNAL_ONLY).write_bytes(mode.encode())
        time.sleep(0.1)  # past the node processes' 50 ms cache of the switch (`_mode`)

    def measured(mode: str, count: int = readers, span: float = seconds) -> dict[str, Any]:
        audit(mode)
        before = cpu() if cpu is not None else (0.0, 0.0)
        threads = _threads(homes[:2]) if cpu is not None else {}
        lines = _peer_lines(homes[:2])
        client = os.times()
        result, since, until = _load(targets, count, span)
        client_after = os.times()
        result["mode"] = mode
        if mode == "peer":  # one fsync'd line per entry: one per read served
            result["peer_lines"] = _peer_lines(homes[:2]) - lines
        if cpu is not None:
            reads = max(1.0, result["reads_per_s"] * (until - since) / 1000)
            # This bench's own readers (HTTP clients) share the cores with the network.
            spent = (client_after.user - client.user) + (client_after.system - client.system)
            result["client_cpu_ms_per_read"] = round(spent / reads * 1e3, 3)
            servers, network = (after - at for after, at in zip(cpu(), before, strict=True))
            result["servers_cpu_ms_per_read"] = round(servers / reads * 1e3, 3)
            by_name = _by_name(threads, _threads(homes[:2]))
            fsyncs = by_name.get("#fsyncs audit", 0) + by_name.get("#fsyncs peer", 0)
            result["fsyncs_per_read"] = round(fsyncs / reads, 3)
            result["writes_held_per_read"] = round(by_name.get("#fsyncs held", 0) / reads, 3)
            # `begin` and `end` as the read's thread saw them (µs per read audited)
            calls = {k.split(" ", 1)[1]: v for k, v in by_name.items() if k.startswith("#calls ")}
            result["log_calls_us"] = {
                key: round(calls.get(key, 0.0) / max(1.0, calls.get("calls", 0.0)) * 1e6, 1)
                for key in CALL_KEYS
            }
            result["servers_threads_ms_per_read"] = {
                name: round(seconds / reads * 1e3, 3)
                for name, seconds in sorted(by_name.items())
                if not name.startswith("#")
            }
            result["network_cpu_ms_per_read"] = round(network / reads * 1e3, 3)
        if mode == "on":  # its entries on the chain before the next run (none of its cost)
            _settle(engine, [A, B], since, result["reads"])
            result["audit"] = _on_chain(engine, [A, B], since, until, result["reads"])
        return result

    # Warm-up, audit on (the journal's and the chain's path warm too), settled: before, its
    # entries were committed during the first "off" run and made that pair's ratio ≈ 1.
    measured("on", span=min(2.0, seconds / 4))
    if journal_only:
        measured("journal", span=min(2.0, seconds / 4))
    if journal_only == 3:
        measured("peer", span=min(2.0, seconds / 4))
    light_off = measured("off", 1, seconds / 2)
    light_on = measured("on", 1, seconds / 2)
    rounds: list[dict[str, dict[str, Any]]] = []
    modes: tuple[str, ...] = ("off", "journal", "on")
    if journal_only == 2:
        modes = ("off", "unwaited", "journal", "on")
    elif journal_only == 3:
        modes = ("off", "peer", "journal", "on")
    for k in range(pairs):
        if journal_only == 1:
            order: tuple[str, ...] = ORDERS[k % len(ORDERS)]
        elif journal_only:  # each mode in each place, then the same rotations reversed
            order = modes[k % 4 :] + modes[: k % 4]
            order = order[::-1] if (k // 4) % 2 else order
        else:  # off first in the first pair, on first in the second...
            order = ("on", "off") if k % 2 == 1 else ("off", "on")
        rounds.append({mode: measured(mode) for mode in order})
    runs = [(r["on"], r["off"]) for r in rounds]
    ratios = [
        round(r_on["reads_per_s"] / max(r_off["reads_per_s"], 0.1), 3) for r_on, r_off in runs
    ]
    total_on = sum(r_on["reads_per_s"] for r_on, _ in runs)
    total_off = sum(r_off["reads_per_s"] for _, r_off in runs)
    on, off = runs[0]
    out: dict[str, Any] = {
        "audit_on": on,
        "audit_off": off,
        "reads_ratio_on_vs_off": round(total_on / max(total_off, 0.1), 3),
        "reads_ratio_pairs": ratios,
        "reads_per_s_pairs": [[r_on["reads_per_s"], r_off["reads_per_s"]] for r_on, r_off in runs],
        "one_reader_each_audit_on": light_on,
        "one_reader_each_audit_off": light_off,
    }
    keys = ["servers_cpu_ms_per_read", "network_cpu_ms_per_read", "client_cpu_ms_per_read"]
    if cpu is not None:
        for key in [*keys, "fsyncs_per_read"]:
            out[f"{key}_pairs"] = [[r_on[key], r_off[key]] for r_on, r_off in runs]
        out["servers_threads_ms_per_read_on_off"] = _by_thread(runs)
    if journal_only:
        out["by_mode"] = _split(rounds, modes, cpu is not None)
    return out


MODES = {
    "off": "no entry: the read is decided and its entry built, never written",
    "unwaited": "DIAGNOSTIC, never a product behaviour: the entry fsync'd in the node's "
    "journal as with 'journal', but the answer leaves without waiting for it",
    "peer": "the fair peer (a FHIR server's durable local audit log, an IHE ATNA secure node): "
    "one JSON line per entry appended (O_APPEND) and fsync'd in the read's own thread before "
    "the answer; no journal, no writer thread, no batching, never sent to the chain",
    "journal": "the entry fsync'd in the node's journal before the answer as with 'on', "
    "then marked done there, never sent to the chain",
    "on": "the entry fsync'd in the node's journal before the answer, then on the chain in a "
    "shared access.log tx",
}


def _split(
    rounds: list[dict[str, dict[str, Any]]], modes: tuple[str, ...], cpu: bool
) -> dict[str, Any]:
    """Each mode's figures over the rounds: reads over "off"'s, and the means per read."""
    total = {m: sum(r[m]["reads_per_s"] for r in rounds) for m in modes}
    split: dict[str, Any] = {
        "modes": {m: MODES[m] for m in modes},
        "orders": [list(r) for r in rounds],
        "reads_ratio_vs_off": {m: round(total[m] / max(total["off"], 0.1), 3) for m in modes},
        "reads_per_s": {m: [r[m]["reads_per_s"] for r in rounds] for m in modes},
        "own_p50_ms": {m: [r[m]["own_records"]["p50_ms"] for r in rounds] for m in modes},
    }
    if "peer" in modes:  # the lines its log took in each run, against the reads it served
        split["peer_reads_lines"] = [[r["peer"]["reads"], r["peer"]["peer_lines"]] for r in rounds]
    if not cpu:
        return split
    for key in (
        "servers_cpu_ms_per_read",
        "network_cpu_ms_per_read",
        "client_cpu_ms_per_read",
        "fsyncs_per_read",
        "writes_held_per_read",
    ):
        split[key] = {m: [r[m][key] for r in rounds] for m in modes}
        split[f"{key}_mean"] = {
            m: round(sum(r[m][key] for r in rounds) / len(rounds), 3) for m in modes
        }
    split["log_calls_us"] = {
        m: {
            key: round(sum(r[m]["log_calls_us"][key] for r in rounds) / len(rounds), 1)
            for key in CALL_KEYS
        }
        for m in modes
        if m != "off"
    }
    by_mode = {m: _pooled([r[m] for r in rounds]) for m in modes}
    names = sorted({n for pooled in by_mode.values() for n in pooled})
    split["servers_threads_ms_per_read"] = {
        name: {m: by_mode[m].get(name, 0.0) for m in modes}
        for name in names
        if any(by_mode[m].get(name) for m in modes)
    }
    return split


def _pooled(runs: list[dict[str, Any]]) -> dict[str, float]:
    """The serving processes' CPU per read by thread over `runs` (weighted by reads)."""
    reads = sum(run["reads"] for run in runs)
    spent: dict[str, float] = {}
    for run in runs:
        for name, ms in run["servers_threads_ms_per_read"].items():
            spent[name] = spent.get(name, 0.0) + ms * run["reads"]
    return {name: round(ms / max(1, reads), 3) for name, ms in spent.items()}


def _by_thread(runs: list[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, list[float]]:
    """The serving processes' CPU per read by thread, audit on and off, over every pair
    (weighted by reads: one run's figures move with the dumps' 0.5 s steps)."""
    names = {name for pair in runs for run in pair for name in run["servers_threads_ms_per_read"]}
    out: dict[str, list[float]] = {}
    for name in sorted(names):
        pooled = []
        for side in (0, 1):
            reads = sum(pair[side]["reads"] for pair in runs)
            spent = sum(
                pair[side]["servers_threads_ms_per_read"].get(name, 0.0) * pair[side]["reads"]
                for pair in runs
            )
            pooled.append(round(spent / max(1, reads), 3))
        if any(pooled):
            out[name] = pooled
    return out


def _direct(node: Any, directory: Path, total: int, callers: int = 64) -> dict[str, Any]:
    """The journal alone: `total` entries logged by `callers` threads (as many requests at
    once), until all are committed. `committed_per_s` counts from the first entry logged to
    the last committed: it includes the wait for the first block that carries any
    (`first_commit_s`) and, after the last entry is logged, the commit of the block that
    carries it (`last_commit_wait_s`), about a block time each whatever the rate, so it grows
    with the phase's length. `steady_committed_per_s`, the entries of every commit after the
    first over the time from the first commit to the last, is the rate the chain took them
    at; `blocks`, how many blocks carried them (few blocks: a coarse figure)."""
    from medledger.contracts.authorize import Decision
    from medledger.node import decisions
    from medledger.node.audit import AuditJournal
    from medledger.node.wallet import Wallet

    org = node.config.org
    access = decisions.Access(f"org:{org}", org, PID, "read", "treatment")
    wallet = Wallet(node.org_key, node.config.chain_id, node.engine)
    journal = AuditJournal(directory, wallet).start()
    per_thread = max(1, total // callers)
    commits: list[tuple[float, int]] = []  # (when, entries committed so far) at each change
    heights: set[int] = set()  # the chain's height at each change: the blocks that took them
    watching = threading.Event()

    def watch() -> None:
        while not watching.wait(0.01):
            if journal.stats["entries"] != (commits[-1][1] if commits else 0):
                commits.append((time.perf_counter(), journal.stats["entries"]))
                heights.add(node.engine.height())

    def drive(n: int) -> None:
        for i in range(per_thread):
            entry = decisions.audit(access, Decision(True, "custodian", ""), [f"obs-{n}-{i}"])
            journal.log(entry, wait=False)

    try:
        cpu = os.times()
        started = time.perf_counter()
        watcher = threading.Thread(target=watch)
        watcher.start()
        threads = [threading.Thread(target=drive, args=(n,)) for n in range(callers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        logged = time.perf_counter() - started
        drained = journal.drain(600)
        elapsed = time.perf_counter() - started
        spent = os.times()
    finally:
        watching.set()
        journal.stop()
    entries = per_thread * callers
    # From the first commit to the last: the entries of every commit after the first.
    steady = (
        (commits[-1][1] - commits[0][1]) / (commits[-1][0] - commits[0][0])
        if len(commits) > 1
        else None
    )
    busy = (spent.user - cpu.user) + (spent.system - cpu.system)
    return {
        "entries": entries,
        "all_committed": drained,
        "logged_per_s": round(entries / logged, 1),
        "committed_per_s": round(journal.stats["entries"] / elapsed, 1),
        "steady_committed_per_s": None if steady is None else round(steady, 1),
        "blocks": len(heights),
        "first_commit_s": round(commits[0][0] - started, 2) if commits else None,
        "last_commit_wait_s": round(elapsed - logged, 2),
        "callers": callers,
        "entries_per_tx": round(journal.stats["entries"] / max(1, journal.stats["txs"]), 1),
        "fsyncs": journal.stats["fsyncs"],
        # This process's CPU per entry: on CometBFT the journal's alone (the validators are
        # other processes); solo, the journal's, its validator's and the engine's.
        "process_cpu_us_per_entry": round(busy / max(1, entries) * 1e6, 1),
        "resent": journal.stats["resent"],
        # txs told NOT_YET at CheckTx (resting on one of ours not in this node's check state)
        "held": journal.stats["held"],
    }


def run_solo(
    seconds: int,
    readers: int,
    direct: int,
    callers: int = 64,
    pairs: int = 4,
    journal_only: int = 0,
) -> dict[str, Any]:
    from medledger.cli._runtime import Sandbox
    from medledger.provisioning import create_consortium

    undo = install_switch()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            homes = create_consortium(Path(tmp) / "net", 3, genesis_time_ms=int(time.time() * 1000))
            with Sandbox(homes, interval=0.05) as sandbox:
                a, b, c = sandbox.runtimes
                _, rids = _setup(a.node, a.vault)
                _wait_copies(b.api_url, _token(homes[1], B), rids)
                urls = {A: a.api_url, B: b.api_url}
                result = _compare(
                    homes, urls, a.node.engine, rids, readers, seconds, pairs, None, journal_only
                )
                result["direct"] = _direct(c.node, Path(tmp) / "direct", direct, callers)
    finally:
        undo()
    return {"engine": "solo", "block_cut_ms": 50, **result}


def _cpu(consortium: Path, homes: list[Path], role: str) -> float:
    """CPU seconds (user and system) so far of every hospital's process of `role`."""
    from medledger.consensus.cometbft import processes

    total = 0.0
    for home in homes:
        pid = processes.read_pid(consortium, home.name, role)
        if pid is not None:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


@contextlib.contextmanager
def _cometbft(block_time_ms: int) -> Iterator[list[Path]]:
    from medledger.consensus.cometbft import processes, testnet
    from medledger.provisioning import create_consortium

    def app_command(consortium_dir: Path, org: str) -> list[str]:
        home = str(testnet.hospital_home(consortium_dir, org))
        return [sys.executable, str(Path(__file__).resolve()), "node", "--home", home]

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "net"
        homes = create_consortium(
            directory,
            4,
            engine="cometbft",
            chain_id="medledger-bench",
            block_time_ms=block_time_ms,
            genesis_time_ms=int(time.time() * 1000),
        )
        processes.up(directory, app_command=app_command, timeout=90)
        try:
            yield homes
        finally:
            processes.down(directory)


def run_cometbft(
    seconds: int,
    readers: int,
    direct: int,
    callers: int = 64,
    pairs: int = 4,
    journal_only: int = 0,
) -> dict[str, Any]:
    from medledger.node import Node
    from medledger.node.config import load_config
    from medledger.vault import Vault

    with _cometbft(1000) as homes:
        a = Node.open(homes[0])
        c = Node.open(homes[2])
        try:
            with Vault.open(a.config.vault_config()) as vault:
                _, rids = _setup(a, vault)
            urls = {}
            for org, home in ((A, homes[0]), (B, homes[1])):
                host, port = load_config(home).api.address
                urls[org] = f"http://{host}:{port}"
            _wait_copies(urls[B], _token(homes[1], B), rids)
            consortium = homes[0].parent.parent

            def cpu() -> tuple[float, float]:
                """The two serving hospitals' node processes (API, journal and app in each),
                and every node process and CometBFT of the network."""
                servers = _cpu(consortium, homes[:2], "app")
                rest = _cpu(consortium, homes[2:], "app") + _cpu(consortium, homes, "cometbft")
                return servers, servers + rest

            result = _compare(
                homes, urls, a.engine, rids, readers, seconds, pairs, cpu, journal_only
            )
            before = {role: _cpu(consortium, homes, role) for role in ("app", "cometbft")}
            with tempfile.TemporaryDirectory() as tmp:
                result["direct"] = _direct(c, Path(tmp) / "direct", direct, callers)
            # The validators' share (four apps, four CometBFTs) of the direct phase's CPU.
            for role in ("app", "cometbft"):
                spent = _cpu(consortium, homes, role) - before[role]
                key = f"{role}s_cpu_us_per_entry"
                result["direct"][key] = round(spent / result["direct"]["entries"] * 1e6, 1)
        finally:
            a.close()
            c.close()
    return {"engine": "cometbft", "validators": 4, "block_time_ms": 1000, **result}


def run(
    seconds: int = 20,
    readers: int = 8,
    direct: int = 20000,
    cometbft: int = 1,
    callers: int = 64,
    pairs: int = 4,
    journal_only: int = 0,
) -> Any:
    result: dict[str, Any] = {}
    if cometbft:
        from medledger.consensus.cometbft import testnet

        try:
            testnet.cometbft_binary()
        except testnet.TestnetError as exc:
            result["cometbft"] = f"skipped: {exc}"
        else:
            result["cometbft"] = run_cometbft(
                seconds, readers, direct, callers, pairs, journal_only
            )
    else:
        result["solo"] = run_solo(seconds, readers, direct, callers, pairs, journal_only)
    result["goals"] = {
        "reads_ratio_on_vs_off": 0.9,
        "own_read_p95_ms_cometbft_1s": 50,
        "direct_committed_per_s": 5000,
    }
    return result


THREADS = "bench-threads.json"
CALL_KEYS = ("begin_cpu", "end_cpu", "end_wall", "begin_to_end_wall")


def _thread_cpu_dumper(home: Path, every: float = 0.5) -> None:
    """In a node process: every `every` s, the CPU seconds so far of its Python threads, by
    name without its numbers (`AnyIO worker thread`, `audit-writer`, ...), written
    to `THREADS` in the home, for `_threads`: where a read's CPU goes, audit on and off."""
    import re
    import threading

    tick = os.sysconf("SC_CLK_TCK")
    calls = dict.fromkeys(("calls", *CALL_KEYS), 0.0)

    def dump() -> None:
        while True:
            spent: dict[str, float] = {}  # "<name> <native id>": its CPU seconds
            for thread in threading.enumerate():
                stat = Path(f"/proc/self/task/{thread.native_id}/stat")
                try:
                    fields = stat.read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue  # ended meanwhile
                name = re.sub(r"[-_]?[0-9]+", "", thread.name) or "thread"
                spent[f"{name} {thread.native_id}"] = (int(fields[11]) + int(fields[12])) / tick
            fsyncs = {"audit": sum(j.stats["fsyncs"] for j in JOURNALS.values())}
            fsyncs["peer"] = PEER["fsyncs"]
            for journal in JOURNALS.values():
                fsyncs["held"] = journal.stats.get("writes_held", 0)
            while CALLS:
                for key, value in zip(CALL_KEYS, CALLS.popleft(), strict=True):
                    calls[key] += value
                calls["calls"] += 1
            tmp = home / f"{THREADS}.tmp"
            tmp.write_bytes(orjson.dumps({"threads": spent, "fsyncs": fsyncs, "calls": calls}))
            tmp.replace(home / THREADS)
            time.sleep(every)

    threading.Thread(target=dump, name="bench-threads", daemon=True).start()


def _threads(homes: list[Path]) -> dict[str, float]:
    """The serving hospitals' node processes' threads' CPU seconds so far (`_thread_cpu_dumper`),
    keyed "<home> <name> <native id>", and their journals' fsyncs so far, keyed
    "<home> #fsyncs audit" (the node's journal's)."""
    total: dict[str, float] = {}
    for home in homes:
        with contextlib.suppress(OSError, ValueError):
            dumped = orjson.loads((home / THREADS).read_bytes())
            for key, seconds in dumped["threads"].items():
                total[f"{home.name} {key}"] = seconds
            for key, count in dumped["fsyncs"].items():
                total[f"{home.name} #fsyncs {key}"] = count
            for key, count in dumped["calls"].items():
                total[f"{home.name} #calls {key}"] = count
    return total


def _by_name(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds spent between two `_threads` readings, by thread name: a thread is counted
    from the first reading (or its start); one that ended between them is missing from the
    second, and its share with it (never counted below zero)."""
    spent: dict[str, float] = {}
    for key, seconds in after.items():
        name = key.split(" ", 1)[1]
        name = name if name.startswith("#") else name.rsplit(" ", 1)[0]  # less its thread id
        spent[name] = spent.get(name, 0.0) + seconds - before.get(key, 0.0)
    return spent


def _node(argv: list[str]) -> None:
    """`bench_audit.py node --home H`: `medledger node run` with this bench's audit switch."""
    install_switch()
    _thread_cpu_dumper(Path(argv[argv.index("--home") + 1]))
    from medledger.cli import main

    sys.argv = ["medledger", "node", "run", *argv]
    main()


if __name__ == "__main__":
    if sys.argv[1:2] == ["node"]:
        _node(sys.argv[2:])
    else:
        print(orjson.dumps(run(), option=orjson.OPT_INDENT_2).decode())
