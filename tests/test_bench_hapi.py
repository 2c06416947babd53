"""The harness of `medledger bench hapi` (HAPI FHIR's JPA server side by side), without HAPI:
the jar is a Maven build that `make hapi` does and `make test` does not."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import pytest

from medledger.interop.synth import as_document, generate

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_hapi.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_hapi", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class _Recorder(BaseHTTPRequestHandler):
    """A stand-in FHIR server: keeps every body POSTed, refuses the body `bad`."""

    received: list[bytes] = []
    lock = threading.Lock()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.lock:
            self.received.append(body)
        status = 400 if body == b"bad" else 200
        answer = b'{"resourceType": "OperationOutcome"}'
        self.send_response(status)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[ThreadingHTTPServer]:
    _Recorder.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_the_peer_refuses_to_run_without_its_jar(
    bench: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(bench, "JAR", tmp_path / "hapi-peer.jar")
    with pytest.raises(SystemExit, match="make hapi"):
        bench.run(patients=1, documents=1, rounds=1)


def test_a_document_becomes_a_transaction_of_its_entries(bench: ModuleType) -> None:
    """What medledger does with a document (each entry stored as a resource of its own, the
    references between them resolved), as a FHIR transaction HAPI can run."""
    document = as_document(generate(1, ["chu-lyon"], seed=5)["chu-lyon"][0])
    tx = bench._as_transaction(document)
    assert tx["type"] == "transaction"
    assert [e["fullUrl"] for e in tx["entry"]] == [e["fullUrl"] for e in document["entry"]]
    kinds = {e["resource"]["resourceType"] for e in tx["entry"]}
    assert {"Composition", "Patient", "Practitioner", "Organization"} <= kinds
    for entry in tx["entry"]:
        assert entry["request"] == {"method": "POST", "url": entry["resource"]["resourceType"]}


def test_every_bundle_is_posted_once_by_concurrent_clients(
    bench: ModuleType, recorder: ThreadingHTTPServer
) -> None:
    payloads = [f'{{"n": {i}}}'.encode() for i in range(40)]
    bench._post_all(recorder.server_address[1], "/fhir", payloads, 3)
    assert sorted(_Recorder.received) == sorted(payloads)


def test_a_refused_bundle_stops_the_run_with_the_servers_answer(
    bench: ModuleType, recorder: ThreadingHTTPServer
) -> None:
    with pytest.raises(RuntimeError, match="HAPI answered 400 to POST /fhir.*OperationOutcome"):
        bench._post_all(recorder.server_address[1], "/fhir", [b"{}", b"bad", b"{}"], 1)


def test_cpu_of_a_process_tree_counts_children_and_leaves_out_the_excluded(
    bench: ModuleType,
) -> None:
    """A side's CPU is its processes' from /proc: here a child that spins for 0.5 s of CPU."""
    spin = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.5: pass\n"
    spin += "import sys\nsys.stdin.read()"
    child = subprocess.Popen([sys.executable, "-c", spin], stdin=subprocess.PIPE)
    try:
        me = os.getpid()
        while bench._tree_cpu(me) - bench._tree_cpu(me, frozenset({child.pid})) < 0.45:
            assert child.poll() is None
        assert child.pid in bench._descendants(me, bench._proc_table())
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait()


def test_medians_compare_each_phase_and_documents_as_the_same_work(bench: ModuleType) -> None:
    def side(name: str, rate: int, cpu: float) -> dict[str, object]:
        figures = {"resources_per_s": rate, "cpu_ms_per_resource": cpu}
        found: dict[str, object] = {"side": name, "transactions": figures, "documents": figures}
        if name == "hapi":
            found["documents_as_transactions"] = {
                "resources_per_s": rate // 2,
                "cpu_ms_per_resource": cpu * 2,
            }
        return found

    runs = [side("medledger", 1000, 1.0), side("hapi", 500, 2.0), side("medledger", 1200, 1.2)]
    medians = bench._medians(runs)
    assert medians["transactions"]["medledger"]["resources_per_s"] == 1100
    assert medians["transactions"]["rate_ratio_medledger_to_hapi"] == 2.2
    assert medians["transactions"]["cpu_ratio_medledger_to_hapi"] == 0.55
    same_work = medians["documents_as_transactions"]
    assert same_work["hapi"]["resources_per_s"] == 250
    assert same_work["rate_ratio_medledger_to_hapi"] == 4.4


def test_profile_summary_ranks_self_and_inclusive_samples(bench: ModuleType) -> None:
    stacks = [(["parse", "handle", "main"], 3), (["insert", "handle", "main"], 1)]
    top = bench._top(stacks)
    assert top["samples"] == 4
    assert top["self"] == [" 75.0% parse", " 25.0% insert"]
    assert top["inclusive"] == [" 75.0% parse", " 25.0% insert"]  # the trunk left out


def test_py_spy_samples_are_split_between_the_storing_process_and_its_workers(
    bench: ModuleType, tmp_path: Path
) -> None:
    """py-spy's raw output hangs a child's stack below its parents' `process` frames."""
    main = 'process 10:"python medledger bench hapi"'
    worker = f'{main};process 11:"python -c forkserver";process 12:"python -c forkserver"'
    raw = tmp_path / "raw.txt"
    raw.write_text(
        f"{main};main (medledger/cli/__init__.py:40);commit (medledger/ledger/store.py:9) 3\n"
        f"{worker};_serve_one (multiprocessing/forkserver.py:313);"
        "validate_resource (medledger/interop/validate.py:80) 5\n"
    )
    found = bench._collapsed_top(raw, 10)
    assert found["storing_process"]["samples"] == 3
    assert found["storing_process"]["self"] == ["100.0% commit (medledger/ledger/store.py)"]
    assert found["workers"]["self"] == ["100.0% validate_resource (medledger/interop/validate.py)"]


def test_warm_up_ends_after_two_batches_without_a_gain(bench: ModuleType) -> None:
    assert not bench._settled([40.0, 12.0])
    assert not bench._settled([40.0, 12.0, 9.0])  # still falling
    assert not bench._settled([40.0, 12.0, 9.0, 12.5])  # noise: one batch is not enough
    assert bench._settled([40.0, 12.0, 9.0, 12.5, 8.5])
