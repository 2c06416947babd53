"""Sealed metadata on the chain: its length tells nothing about the record it describes."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import cbor2
import orjson
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from medledger.contracts.records import META_BUCKETS, META_CT_SIZES
from medledger.interop.synth import generate
from medledger.node import Node
from medledger.node.indexing import (
    MetadataError,
    category_key,
    category_keys,
    epoch_of,
    open_meta,
    pad,
    seal_meta,
    unpad,
)
from medledger.node.ingest import Ingestor
from medledger.vault import Vault


def test_over_a_synthetic_population_every_meta_ct_has_one_length(consortium: list[Path]) -> None:
    """Issue 11 item 2: 28 distinct lengths, 19 of them naming one diagnosis, before padding."""
    lengths: dict[tuple[str, str], set[int]] = defaultdict(set)
    with Node.open(consortium[0]) as node, Vault.open(node.config.vault_config()) as vault:
        ingestor = Ingestor(node, vault)
        for bundle in generate(12, ["chu-lyon", "aphp-paris"], seed=11)["chu-lyon"]:
            assert ingestor.ingest_bytes(orjson.dumps(bundle), "p.json").rejections == []
        pids = vault.patients()
        assert len(pids) >= 10
        for pid in pids:
            key = vault.metadata_key(pid)
            for entry in node.engine.query("records/of_patient", {"pid": pid}):
                meta = open_meta(key, entry["rid"], entry["version"], entry["meta_ct"])
                lengths[(meta["type"], meta.get("code") or "")].add(len(entry["meta_ct"]))
    assert len(lengths) > 20  # many kinds of record, titles and codes ...
    seen = set().union(*lengths.values())
    assert seen <= set(META_CT_SIZES)
    assert seen == {META_CT_SIZES[0]}  # ... and one length for all of them


def test_padding_is_unambiguous_and_a_long_title_is_shortened_to_fit() -> None:
    for plain in (b"", b"\x80", b"abc\x00", b"x" * (META_BUCKETS[0] - 1)):
        padded = pad(plain)
        assert len(padded) == META_BUCKETS[0] and unpad(padded) == plain
    assert len(pad(b"x" * META_BUCKETS[0])) == META_BUCKETS[1]
    with pytest.raises(ValueError, match="marker"):
        unpad(bytes(META_BUCKETS[0]))
    key = os.urandom(32)
    sealed = seal_meta(key, "r1", 1, {"type": "DocumentReference", "title": "é" * 2000})
    assert len(sealed) == META_CT_SIZES[-1]
    title = open_meta(key, "r1", 1, sealed)["title"]
    assert title.endswith("…") and set(title[:-1]) == {"é"}
    with pytest.raises(MetadataError, match="record r2"):
        seal_meta(key, "r2", 1, {"type": "Observation", "code": "x" * 2000})


def test_a_category_key_of_an_epoch_opens_only_its_category_and_epoch() -> None:
    """Issue 11 review, item 3: one key per (custodian, patient) opened every category."""
    root = os.urandom(32)
    labs = {"type": "Observation", "category": "labs", "code": "4548-4"}
    meds = {"type": "MedicationRequest", "category": "medications", "title": "insulin glargine"}
    sealed_labs = seal_meta(root, "r1", 1, labs, epoch=2)
    sealed_meds = seal_meta(root, "r2", 1, meds, epoch=2)
    assert len(sealed_labs) == len(sealed_meds) and epoch_of(sealed_labs) == 2
    # The custodian (the patient's metadata key) opens both.
    assert open_meta(root, "r2", 1, sealed_meds)["title"] == "insulin glargine"
    # A holder of the labs key of epoch 2 opens the labs entry only.
    holder = category_keys(root, ["labs"], [2])
    assert open_meta(holder, "r1", 1, sealed_labs)["code"] == "4548-4"
    with pytest.raises(MetadataError):
        open_meta(holder, "r2", 1, sealed_meds)
    # ... and nothing of another epoch, before or after.
    with pytest.raises(MetadataError):
        open_meta(category_keys(root, ["labs"], [1]), "r1", 1, sealed_labs)
    later = seal_meta(root, "r3", 1, labs, epoch=3)
    with pytest.raises(MetadataError):
        open_meta(holder, "r3", 1, later)
    # An entry sealed under the medications key whose inside says "labs" is refused as
    # tampered: the category inside must be the one of the key that opened it.
    nonce = (2).to_bytes(4, "big") + os.urandom(8)
    inside = pad(cbor2.dumps({**meds, "category": "labs"}, canonical=True))
    aead = AESGCM(category_key(root, "medications", 2))
    lying = nonce + aead.encrypt(nonce, inside, b"medledger/meta/v2/r4/1")
    with pytest.raises(MetadataError):
        open_meta(root, "r4", 1, lying)
