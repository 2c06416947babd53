"""A strict reader of the Prometheus text exposition format (version 0.0.4), for tests.

Strict where Prometheus is: every family has one `# HELP` and one `# TYPE` before its
samples, names and label names are valid, label values are quoted with only `\\\\`, `\\"`,
`\\n` escaped, a series appears once, values are numbers, the text ends with a newline."""

from __future__ import annotations

import math
import re

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
SAMPLE = re.compile(
    rf"^(?P<name>{NAME})(?:\{{(?P<labels>{LABEL}(?:,{LABEL})*)?,?\}})? "
    r"(?P<value>[^ ]+)(?: (?P<ts>-?\d+))?$"
)
TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}

Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> tuple[Series, dict[str, str]]:
    """(value of each series keyed by (name, labels)), (type of each family); AssertionError
    naming the line at the first departure from the format."""
    assert text.endswith("\n"), "the exposition must end with a newline"
    series: Series = {}
    types: dict[str, str] = {}
    helps: set[str] = set()
    sampled: set[str] = set()
    for n, line in enumerate(text[:-1].split("\n"), 1):
        assert line, f"line {n}: empty"
        if line.startswith("#"):
            parts = line.split(" ", 3)
            assert len(parts) >= 3 and parts[0] == "#", f"line {n}: bad comment {line!r}"
            kind, name = parts[1], parts[2]
            assert re.fullmatch(NAME, name), f"line {n}: bad metric name {name!r}"
            assert name not in sampled, f"line {n}: {kind} of {name} after its samples"
            if kind == "HELP":
                assert name not in helps, f"line {n}: second HELP for {name}"
                helps.add(name)
            elif kind == "TYPE":
                assert name not in types, f"line {n}: second TYPE for {name}"
                assert len(parts) == 4 and parts[3] in TYPES, f"line {n}: bad type {line!r}"
                types[name] = parts[3]
            continue
        m = SAMPLE.match(line)
        assert m, f"line {n}: not a sample {line!r}"
        name = m["name"]
        assert name in types and name in helps, f"line {n}: {name} has no TYPE/HELP before it"
        sampled.add(name)
        labels = tuple(
            sorted(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m["labels"] or ""))
        )
        assert len({k for k, _ in labels}) == len(labels), f"line {n}: a label twice"
        value = float(m["value"])  # ValueError on anything but a number, NaN or +-Inf
        assert not math.isnan(value) or m["value"] == "NaN", f"line {n}: bad value"
        key = (name, labels)
        assert key not in series, f"line {n}: series {key} twice"
        series[key] = value
    return series, types
