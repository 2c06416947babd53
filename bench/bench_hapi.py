"""Ingestion side by side with the fair peer, HAPI FHIR's JPA server (issue 12): the same
Bundles, in the same run, alternately, with the same concurrency.

medledger ingests them as `medledger bench ingest` does (validation workers, encryption, the
vault, registration on the chain through the solo engine). HAPI FHIR 8.8.0's JPA server
(bench/hapi, built by `make hapi`) runs on 127.0.0.1 on a free port, on a throw-away
PostgreSQL server with PostgreSQL's durable defaults (fsync on: medledger fsyncs too), and
`clients` threads POST the same Bundles to it: the transaction Bundles to the base (one
database transaction each), the IPS documents twice, as HAPI keeps a document (POST /Bundle:
one Bundle resource, its entries not split) and as a transaction of their entries (what
medledger does with them: each entry a resource of its own, references resolved).

Both sides first ingest warm-up Bundles (other patients, not counted), batch after batch,
each until its CPU per resource stops falling (two batches in a row not 10 % better than the
best before them): HAPI's JIT compiler needs it
(cold, the JVM spends 5-8 times more), and medledger's processes import the FHIR models they
meet on first use. Then each round ingests new patients on both sides, medledger first in
even rounds, HAPI first in odd ones. Figures per side: resources/s, and CPU per resource of
every process of that side (medledger: the storing process and its validation workers; HAPI:
the JVM and the PostgreSQL server), read from /proc.

With `profile=1` one more round runs under the profilers (not counted with the others; the
JVM then runs with Flight Recorder on from its start, see `_hapi`): py-spy
on medledger's processes (the storing process and the validation workers apart), Java Flight
Recorder on the JVM (`jcmd JFR.start`, its default settings: 20 ms samples), summarized as
the share of samples per function (self, and inclusive below the common trunk, plumbing left
out) and, for HAPI, per layer. The raw files stay in $TMPDIR/medledger-bench-profiles/.

    make hapi
    medledger bench hapi [--set patients=100 --set documents=100 --set rounds=2
                          --set workers=2 --set clients=2 --set warmup=20 --set warmup_rounds=8
                          --set profile=0 --set heap_mb=2048]
"""

from __future__ import annotations

import http.client
import importlib.util
import os
import queue
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from medledger.interop.synth import as_document, generate
from medledger.node import Node, heap
from medledger.node.ingest import Ingestor
from medledger.provisioning import create_consortium
from medledger.vault import Vault

REPO = Path(__file__).resolve().parent.parent
JAR = REPO / "bench" / "hapi" / "target" / "hapi-peer.jar"
ORG = "chu-lyon"
HOSPITALS = [ORG, "aphp-paris", "chu-bordeaux"]
PROFILE_TOP = 20
# Frames left out of the inclusive lists: plumbing every call goes through.
JAVA_PLUMBING = (
    "org.springframework.aop.",
    "org.springframework.web.",
    "org.springframework.transaction.",
    "jdk.internal.reflect.",
    "java.lang.reflect.",
    "java.lang.Thread.",
    "java.util.concurrent.",
    "org.apache.catalina.",
    "org.apache.coyote.",
    "org.apache.tomcat.",
    "jakarta.servlet.",
)
PY_PLUMBING = (
    "<module>",
    "main (",
    "Thread.",
    "_serve_one",
    "_main (",
    "_process_worker",
    "run (",
    "Typer",
    "Command.",
    "Context.",
    "get_callback",
    "register.",
    "_Ours.",
    "_launch",
    "BaseProcess.",
    "Popen.",
    "spawn_main",
    "_bootstrap",
)
# Where HAPI spends its time, by the packages a sample's stack goes through.
HAPI_LAYERS = {
    "HTTP (Tomcat, servlet filters)": ("org.apache.catalina.", "org.apache.coyote."),
    "FHIR JSON parsing (request)": ("ca.uhn.fhir.rest.server.method.ResourceParameter.",),
    "search index extraction": ("ca.uhn.fhir.jpa.searchparam.extractor.",),
    "index rows synchronised": ("ca.uhn.fhir.jpa.dao.index.DaoSearchParamSynchronizer.",),
    "resource text encoded for storage": ("ca.uhn.fhir.jpa.dao.ResourceHistoryCalculator.",),
    "Hibernate session flush": ("ca.uhn.fhir.jpa.dao.TransactionProcessor.flushSession",),
    "Hibernate (ORM), all": ("org.hibernate.",),
    "JDBC driver (PostgreSQL)": ("org.postgresql.",),
}


def run(
    patients: int = 100,
    documents: int = 100,
    rounds: int = 2,
    workers: int = 2,
    clients: int = 0,
    warmup: int = 20,
    warmup_rounds: int = 8,
    profile: int = 0,
    heap_mb: int = 2048,
) -> dict[str, Any]:
    if not JAR.exists():
        raise SystemExit(f"{JAR} is missing: build the peer first with `make hapi`")
    clients = clients or workers
    load = os.getloadavg()[0]
    with (
        tempfile.TemporaryDirectory() as tmp,
        _postgres() as pg_dsn,
        _hapi(pg_dsn, heap_mb, Path(tmp), recorded=bool(profile)) as hapi,
    ):
        homes = create_consortium(Path(tmp) / "net", 3, genesis_time_ms=int(time.time() * 1000))
        with Node.open(homes[0]) as node, Vault.open(node.config.vault_config()) as vault:
            ours = _Ours(Ingestor(node, vault), workers)
            heap.settle()  # as `medledger ingest` and a node do once started
            warming = _warm_up(ours, hapi, warmup, warmup_rounds, clients)
            measured: list[dict[str, Any]] = []
            for r in range(rounds):
                work = _workload(patients, documents, seed=101 + 2 * r)
                sides: list[tuple[str, _Ours | _Hapi]] = [("medledger", ours), ("hapi", hapi)]
                for name, side in sides if r % 2 == 0 else reversed(sides):
                    ingested = side.ingest(work, clients)
                    measured.append({"round": r, "side": name, **ingested})
            profiled = None
            if profile:
                work = _workload(patients, documents, seed=99)
                profiled = {
                    "medledger": ours.ingest(work, clients, profile_dir=Path(tmp)),
                    "hapi": hapi.ingest(work, clients, profile_dir=Path(tmp)),
                }
    return {
        "patients_per_round": patients,
        "documents_per_round": documents,
        "rounds": rounds,
        "validation_workers": workers,
        "hapi_clients": clients,
        "load_average_at_start": load,
        "warmup_cpu_ms_per_resource": warming,
        "runs": measured,
        "medians": _medians(measured),
        "profiled_round": profiled,
    }


def _warm_up(
    ours: _Ours, hapi: _Hapi, patients: int, most: int, clients: int
) -> dict[str, list[float]]:
    """Warm-up batches of other patients, not counted, until each side's CPU per resource
    settles (`_settled`; at most `most` batches): HAPI's JIT
    compiles its hot code, medledger's processes import the FHIR models they meet. Returns
    each side's CPU per resource (transactions) batch by batch."""
    found: dict[str, list[float]] = {"medledger": [], "hapi": []}
    sides: dict[str, _Ours | _Hapi] = {"medledger": ours, "hapi": hapi}
    for batch in range(max(1, most)):
        work = _workload(patients, patients, seed=1000 + batch)
        for name, side in sides.items():
            if not _settled(found[name]):
                got = side.ingest(work, clients)["transactions"]["cpu_ms_per_resource"]
                found[name].append(got)
    return found


def _settled(seen: list[float]) -> bool:
    """Two batches in a row not 10 % better than the best before them (the load is noisy)."""
    if len(seen) < 3:
        return False
    best = min(seen[:-2])
    return min(seen[-2:]) > 0.9 * best


# --------------------------------------------------------------------------- workload


class _Workload:
    """The Bundles of one round: transactions, documents, the documents as transactions."""

    def __init__(self, transactions: list[dict[str, Any]], docs: list[dict[str, Any]]):
        self.transactions = [orjson.dumps(b) for b in transactions]
        self.tx_resources = sum(len(b["entry"]) for b in transactions)
        self.documents = [orjson.dumps(d) for d in docs]
        self.doc_resources = sum(len(d["entry"]) for d in docs)
        self.documents_as_transactions = [orjson.dumps(_as_transaction(d)) for d in docs]


def _workload(patients: int, documents: int, seed: int) -> _Workload:
    """The bench's generator, as `medledger bench ingest` uses it (other seeds per round)."""
    transactions = generate(patients, HOSPITALS, seed=seed)[ORG]
    made = generate(documents, HOSPITALS, seed=seed + 1)[ORG][:documents]
    return _Workload(transactions, [as_document(b) for b in made])


def _as_transaction(document: dict[str, Any]) -> dict[str, Any]:
    """A document Bundle's entries as a transaction: each entry created, references kept."""
    entries = [
        {
            "fullUrl": e["fullUrl"],
            "resource": e["resource"],
            "request": {"method": "POST", "url": e["resource"]["resourceType"]},
        }
        for e in document["entry"]
    ]
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


# --------------------------------------------------------------------------- medledger


class _Ours:
    """medledger's ingestion, as `medledger bench ingest` drives it."""

    def __init__(self, ingestor: Ingestor, workers: int):
        self.ingestor = ingestor
        self.workers = workers

    def ingest(
        self, work: _Workload, clients: int, profile_dir: Path | None = None
    ) -> dict[str, Any]:
        phases = [("transactions", work.transactions, work.tx_resources)]
        phases.append(("documents", work.documents, work.doc_resources))
        found: dict[str, Any] = {}
        for label, payloads, resources in phases:
            with _py_spy(profile_dir, label) as spied:
                found[label] = self._timed(payloads, resources, label)
            if spied:
                found[label]["profile"] = spied
        return found

    def _timed(self, payloads: list[bytes], resources: int, label: str) -> dict[str, Any]:
        inputs = [(data, f"{label}-{i}.json") for i, data in enumerate(payloads)]
        me = os.getpid()
        others = _foreign_children(me)
        cpu0, own0 = _tree_cpu(me, others), time.process_time()
        start = time.perf_counter()
        stored = 0
        for result in self.ingestor.ingest_many(inputs, workers=self.workers):
            if result.rejections:
                first = result.rejections[0]
                raise RuntimeError(
                    f"medledger refused {first.source} {first.where}: {first.reason}"
                )
            stored += result.accepted
        elapsed = time.perf_counter() - start
        cpu, own = _tree_cpu(me, others) - cpu0, time.process_time() - own0
        return _figures(stored, resources, elapsed, cpu, storing_cpu_s=own)


# --------------------------------------------------------------------------- HAPI


class _Hapi:
    """The running HAPI JPA server: POSTs Bundles to it from `clients` threads."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, pg_pid: int):
        self.proc = proc
        self.port = port
        self.pg_pid = pg_pid

    def ingest(
        self, work: _Workload, clients: int, profile_dir: Path | None = None
    ) -> dict[str, Any]:
        phases = [
            ("transactions", "/fhir", work.transactions, work.tx_resources),
            ("documents", "/fhir/Bundle", work.documents, work.doc_resources),
            (
                "documents_as_transactions",
                "/fhir",
                work.documents_as_transactions,
                work.doc_resources,
            ),
        ]
        found: dict[str, Any] = {}
        for label, path, payloads, resources in phases:
            with self._jfr(profile_dir, label) as recorded:
                found[label] = self._timed(path, payloads, resources, clients)
            if recorded:
                found[label]["profile"] = recorded
        return found

    def _timed(
        self, path: str, payloads: list[bytes], resources: int, clients: int
    ) -> dict[str, Any]:
        jvm0, pg0 = _tree_cpu(self.proc.pid), _tree_cpu(self.pg_pid)
        start = time.perf_counter()
        _post_all(self.port, path, payloads, clients)
        elapsed = time.perf_counter() - start
        jvm, pg = _tree_cpu(self.proc.pid) - jvm0, _tree_cpu(self.pg_pid) - pg0
        found = _figures(resources, resources, elapsed, jvm + pg)
        found["jvm_cpu_ms_per_resource"] = round(jvm / resources * 1000, 3)
        found["postgres_cpu_ms_per_resource"] = round(pg / resources * 1000, 3)
        return found

    @contextmanager
    def _jfr(self, profile_dir: Path | None, label: str) -> Iterator[dict[str, Any]]:
        """A Flight Recorder recording of the JVM while the block runs, then its summary."""
        found: dict[str, Any] = {}
        jcmd = shutil.which("jcmd")
        if profile_dir is None or jcmd is None:
            yield found
            return
        out = profile_dir / f"hapi-{label}.jfr"
        pid = str(self.proc.pid)
        since = time.strftime("%H:%M:%S.000")  # the JVM's clock, local time as ours
        subprocess.run(
            [jcmd, pid, "JFR.start", f"name={label}", "settings=default"],
            check=True,
            capture_output=True,
        )
        try:
            yield found
        finally:
            subprocess.run(
                [jcmd, pid, "JFR.stop", f"name={label}", f"filename={out}"],
                check=True,
                capture_output=True,
            )
        kept = _kept_profile(out)
        found.update(_jfr_top(out, since), file=str(kept))


def _post_all(port: int, path: str, payloads: list[bytes], clients: int) -> None:
    """POST every payload, `clients` at a time on kept-alive connections; raise on a refusal."""
    todo: queue.SimpleQueue[bytes] = queue.SimpleQueue()
    for data in payloads:
        todo.put(data)
    errors: list[str] = []

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        headers = {"Content-Type": "application/fhir+json", "Prefer": "return=minimal"}
        try:
            while not errors:
                try:
                    data = todo.get_nowait()
                except queue.Empty:
                    return
                conn.request("POST", path, body=data, headers=headers)
                answer = conn.getresponse()
                body = answer.read()
                if answer.status >= 300:
                    errors.append(f"HAPI answered {answer.status} to POST {path}: {body[:600]!r}")
        finally:
            conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(errors[0])


@contextmanager
def _postgres() -> Iterator[tuple[str, int]]:
    """A throw-away PostgreSQL server (tests/postgres_server.py) with durable settings, and a
    database for HAPI; yields the JDBC URL and the postmaster's pid."""
    path = REPO / "tests" / "postgres_server.py"
    spec = importlib.util.spec_from_file_location("postgres_server", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    server = module.PostgresServer(durable=True)
    server.start()
    try:
        server.execute("CREATE DATABASE hapi")
        pid = int((server.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        yield f"jdbc:postgresql://{server.host}:{server.port}/hapi", pid
    finally:
        server.stop()


@contextmanager
def _hapi(pg: tuple[str, int], heap_mb: int, tmp: Path, recorded: bool) -> Iterator[_Hapi]:
    """HAPI's JPA server on a free loopback port, started and stopped around the block.

    `recorded`: Flight Recorder on from the start (default settings, kept in memory), so that
    the profiled round's `JFR.start` instruments no class anew: done on a warm JVM, that
    threw compiled code away and made the round 3-4 times costlier than the ones before."""
    url, pg_pid = pg
    port = _free_port()
    log = tmp / "hapi.log"
    java = shutil.which("java") or "java"
    command = [java, f"-Xmx{heap_mb}m", "-XX:FlightRecorderOptions:stackdepth=256"]
    if recorded:
        command.append("-XX:StartFlightRecording:name=boot,settings=default,disk=false")
    command += ["-jar", str(JAR)]
    command += [f"--server.port={port}", f"--spring.datasource.url={url}"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_ready(proc, port, log)
        yield _Hapi(proc, port, pg_pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path, timeout: float = 600) -> None:
    """Until GET /fhir/metadata answers 200 (HAPI creates its schema on the first start)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"HAPI exited with {proc.returncode} while starting:\n{tail}")
        try:  # one request at a time: the first builds the CapabilityStatement, slowly
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
            conn.request("GET", "/fhir/metadata")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(1)
    raise RuntimeError(f"HAPI did not answer within {timeout} s (log: {log})")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- CPU, figures


_TICK = os.sysconf("SC_CLK_TCK")


def _proc_table() -> dict[int, tuple[int, float]]:
    """Every process: its parent and its CPU seconds (its own and its reaped children's)."""
    table: dict[int, tuple[int, float]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks = sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
        table[int(entry.name)] = (int(fields[1]), ticks / _TICK)
    return table


def _descendants(root: int, table: dict[int, tuple[int, float]]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in table and pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    return found


def _tree_cpu(root: int, exclude: frozenset[int] = frozenset()) -> float:
    """CPU seconds of a process and its descendants, less the subtrees of `exclude`."""
    table = _proc_table()
    skipped: set[int] = set()
    for pid in exclude:
        skipped |= _descendants(pid, table)
    return sum(table[p][1] for p in _descendants(root, table) - skipped)


def _foreign_children(me: int) -> frozenset[int]:
    """This process's children that are not medledger's: the JVM, the profilers, jcmd."""
    foreign = {"java", "py-spy", "jcmd", "jfr", "pg_ctl", "postgres"}
    found = set()
    for pid, (parent, _) in _proc_table().items():
        try:
            if parent == me and Path(f"/proc/{pid}/comm").read_text().strip() in foreign:
                found.add(pid)
        except OSError:
            continue
    return frozenset(found)


def _figures(
    stored: int, resources: int, elapsed: float, cpu_s: float, storing_cpu_s: float | None = None
) -> dict[str, Any]:
    found: dict[str, Any] = {
        "resources": resources,  # the Bundles' entries: the rate's unit on both sides
        "stored": stored,
        "seconds": round(elapsed, 3),
        "resources_per_s": round(resources / elapsed),
        "cpu_ms_per_resource": round(cpu_s / resources * 1000, 3),
    }
    if storing_cpu_s is not None:
        found["storing_cpu_ms_per_resource"] = round(storing_cpu_s / resources * 1000, 3)
    return found


def _medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per phase: each side's median rate and CPU per resource, and medledger / HAPI."""
    found: dict[str, Any] = {}
    for phase in ("transactions", "documents", "documents_as_transactions"):
        row: dict[str, Any] = {}
        for side in ("medledger", "hapi"):
            got = [r[phase] for r in runs if r["side"] == side and phase in r]
            if got:
                row[side] = {
                    "resources_per_s": statistics.median(g["resources_per_s"] for g in got),
                    "cpu_ms_per_resource": statistics.median(g["cpu_ms_per_resource"] for g in got),
                }
        if len(row) == 2:
            ours, theirs = row["medledger"], row["hapi"]
            row["rate_ratio_medledger_to_hapi"] = round(
                ours["resources_per_s"] / theirs["resources_per_s"], 2
            )
            row["cpu_ratio_medledger_to_hapi"] = round(
                ours["cpu_ms_per_resource"] / theirs["cpu_ms_per_resource"], 2
            )
        found[phase] = row
    ours_docs = found["documents"].get("medledger")
    theirs = found["documents_as_transactions"].get("hapi")
    if ours_docs and theirs:  # the same work: every entry a resource of its own
        found["documents_as_transactions"]["medledger"] = ours_docs
        found["documents_as_transactions"]["rate_ratio_medledger_to_hapi"] = round(
            ours_docs["resources_per_s"] / theirs["resources_per_s"], 2
        )
        found["documents_as_transactions"]["cpu_ratio_medledger_to_hapi"] = round(
            ours_docs["cpu_ms_per_resource"] / theirs["cpu_ms_per_resource"], 2
        )
    return found


# --------------------------------------------------------------------------- profiles


def _kept_profile(path: Path) -> Path:
    """The raw profile, copied out of the run's temporary folder for a closer look."""
    out_dir = Path(tempfile.gettempdir()) / "medledger-bench-profiles"
    out_dir.mkdir(exist_ok=True)
    kept = out_dir / f"{time.strftime('%H%M%S')}-{path.name}"
    shutil.copyfile(path, kept)
    return kept


@contextmanager
def _py_spy(profile_dir: Path | None, label: str) -> Iterator[dict[str, Any]]:
    """py-spy on this process and its validation workers while the block runs."""
    found: dict[str, Any] = {}
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if profile_dir is None or not os.access(spy, os.X_OK):
        yield found
        return
    out = profile_dir / f"medledger-{label}.txt"
    spying = subprocess.Popen(
        [spy, "record", "-p", str(os.getpid()), "--subprocesses", "-r", "100"]
        + ["--nonblocking", "-f", "raw", "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1)  # py-spy attaches
    try:
        yield found
    finally:
        spying.send_signal(signal.SIGINT)
        try:
            spying.wait(timeout=60)
        except subprocess.TimeoutExpired:
            spying.kill()
            spying.wait()
    if out.exists():
        found.update(_collapsed_top(out, os.getpid()), file=str(_kept_profile(out)))


def _collapsed_top(path: Path, storing_pid: int) -> dict[str, Any]:
    """Self and inclusive share of samples per function, from py-spy's collapsed stacks, for
    the storing process and for the validation workers apart."""
    groups: dict[str, list[tuple[list[str], int]]] = {"storing_process": [], "workers": []}
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit() or not stack.startswith("process "):
            continue
        parts = stack.split(";")  # a child's stack hangs below its parent's `process` frames
        last = max(i for i, f in enumerate(parts) if f.startswith("process "))
        mine = parts[last].startswith(f"process {storing_pid}:")
        frames = [f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0] + ")" for f in parts]
        kept = frames[last + 1 :] or ["(idle)"]
        groups["storing_process" if mine else "workers"].append((kept[::-1], int(count)))
    return {name: _top(stacks, PY_PLUMBING) for name, stacks in groups.items()}


def _jfr_top(path: Path, since: str = "") -> dict[str, Any]:
    """Self and inclusive share of the JVM's execution samples per method, and per layer.

    `since` (HH:MM:SS.mmm): samples before it are left out. A recording's dump holds every
    event of the chunks it spans, the boot recording's (`_hapi`) from the JVM's start too."""
    jfr = shutil.which("jfr") or "jfr"
    printed = subprocess.run(
        [jfr, "print", "--events", "jdk.ExecutionSample", "--stack-depth", "200", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    stacks = []
    for event in printed.split("jdk.ExecutionSample")[1:]:
        when = re.search(r"startTime = (\d\d:\d\d:\d\d\.\d+)", event)
        if since and when is not None and when.group(1) < since:
            continue
        body = event.split("stackTrace = [", 1)[-1].split("\n  ]", 1)[0]
        frames = [
            re.sub(r"\s+line:.*$", "", line.strip())
            for line in body.splitlines()
            if line.strip() and line.strip() != "..."
        ]
        if frames:
            stacks.append((frames, 1))
    found: dict[str, Any] = _top(stacks, JAVA_PLUMBING)
    total = max(1, len(stacks))
    found["layers"] = {}
    for layer, prefixes in HAPI_LAYERS.items():
        hits = sum(1 for frames, _ in stacks if any(f.startswith(prefixes) for f in frames))
        found["layers"][layer] = f"{100 * hits / total:.1f}%"
    return found


def _top(stacks: list[tuple[list[str], int]], plumbing: tuple[str, ...] = ()) -> dict[str, Any]:
    """`stacks`: each sample's frames, innermost first, and its count. Inclusive shares leave
    out the trunk every request goes through (frames in 85 % of the samples or more) and the
    plumbing (frames starting with one of `plumbing`: reflection, proxies, the CLI)."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for frames, n in stacks:
        total += n
        own[frames[0]] = own.get(frames[0], 0) + n
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + n
    below_trunk = {
        f: n for f, n in inclusive.items() if n < 0.85 * total and not f.startswith(plumbing)
    }

    def ranked(counts: dict[str, int]) -> list[str]:
        best = sorted(counts.items(), key=lambda kv: kv[1], reverse=True)[:PROFILE_TOP]
        return [f"{100 * n / max(1, total):5.1f}% {name}" for name, n in best]

    return {"samples": total, "self": ranked(own), "inclusive": ranked(below_trunk)}


if __name__ == "__main__":
    print(run())
