"""Streaming datasets: an endless, seeded stream of samples split over (rank, data-loader worker) slots.

A stream is a list of *units* (tar shards, dataset files ...) read in order. Each epoch the units
are permuted with (seed, epoch); with at least as many units as slots, slot s reads units
s, s + slots, ... of that order, otherwise every slot reads every unit and keeps every slots-th
sample. A shuffle buffer (seeded per slot) mixes samples; the random flip of the n-th raw sample of
a slot is seeded by (seed, slot, n), so it does not depend on where a run was resumed.

Resume with the same ranks, batch and workers: the trainer counts micro-batches per rank. A
DataLoader over an IterableDataset hands out batches from its workers in strict rotation, so each
worker's consumed sample count follows from that count, and so does whose turn is next (the resumed
loader's first worker stands in for it). On resume each slot skips that many *raw* samples (without
decoding them) and refills its shuffle buffer.

Resume with another ranks x workers layout: the trainer also counts what it consumed of each unit in
each epoch (every sample carries its (epoch, unit) when `StreamSetup.track` is on, and a unit's last
sample its size), gathered over ranks into the checkpoint. The new slots split the units afresh and
each unit continues at its own count (a finished unit of known size is not opened again).

Either way nothing is repeated or skipped beyond the samples that sat in the shuffle buffers at the
checkpoint: at most one buffer per reader of the interrupted run (none without shuffling), plus any
corrupt samples (re-read and skipped again) and, when units are shared sample-wise (fewer units
than slots), one micro-batch per reader. A checkpoint remembers where the current layout's readers
began (`origin`), so a later resume on that layout replays their streams exactly.
"""

import itertools
import logging
import random
from collections.abc import Iterator

import attrs
import torch
from PIL import Image

from d2it.errors import DataError
from d2it_cli.data.folder import random_flip

log = logging.getLogger("d2it.data")

MAX_LEADING_FAILURES = 1000  # undecodable samples before the first good one that mean the data is wrong


@attrs.define
class StreamSetup:
    """Where a stream starts: the run's seed, this rank among `world`, and how much was already consumed."""

    seed: int = 0
    rank: int = 0
    world: int = 1
    endless: bool = True
    shuffle: bool = True
    batch: int = 1  # the per-rank micro-batch of the run being resumed
    consumed_batches: int = 0  # micro-batches this rank already consumed (same world, batch and workers)
    skip_samples: int | None = None  # per-slot raw samples to skip first (a checkpoint without unit counts)
    unit_offsets: dict | None = None  # {(epoch, unit): samples consumed} to continue at (a changed layout)
    unit_sizes: dict | None = None  # {unit: samples}, where known
    track: bool = False  # yield (image, label, (epoch, unit, size or -1)): what the trainer counts


def worker_consumed(consumed_batches: int, batch: int, worker: int, workers: int) -> int:
    """Samples worker `worker` of `workers` produced for the first `consumed_batches` batches (strict rotation)."""
    whole, rest = divmod(consumed_batches, workers)
    return (whole + (1 if worker < rest else 0)) * batch


class StreamDataset(torch.utils.data.IterableDataset):
    """Base of streaming datasets; subclasses give `units()`, `read(unit)` and `decode(raw)`."""

    streaming = True

    def __init__(self, image_size: int, train: bool = True, shuffle_buffer: int = 0, strict: bool = False):
        self.image_size = int(image_size)
        self.train = train
        self.shuffle_buffer = int(shuffle_buffer)
        self.strict = strict
        self.setup = StreamSetup()
        self.skipped = 0  # corrupt samples met by this process

    # -- what a subclass provides -------------------------------------------------------------------
    def units(self) -> list:
        """The stream's units (shards, files) in their stored order."""
        raise NotImplementedError

    def read(self, unit) -> Iterator:
        """Raw, undecoded samples of one unit."""
        raise NotImplementedError

    def decode(self, raw) -> tuple[torch.Tensor, int]:
        """(image CHW in [-1, 1], label) of a raw sample; raise ValueError/OSError for a corrupt one."""
        raise NotImplementedError

    def describe(self, raw) -> str:
        """A name for a raw sample in warnings."""
        return "sample"

    # -- the stream ---------------------------------------------------------------------------------
    def configure(self, setup: StreamSetup) -> "StreamDataset":
        """Set where the stream of every slot starts (call before building a DataLoader)."""
        self.setup = setup
        return self

    def _slot(self) -> tuple[int, int, int, int]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        s = self.setup
        # a resumed DataLoader starts its rotation at worker 0 again: that worker plays the one whose turn it was
        worker = (worker + s.consumed_batches) % workers
        return s.rank * workers + worker, s.world * workers, worker, workers

    def _unit(self, units: list, epoch: int, index: int) -> Iterator:
        """(epoch, unit, size or -1, raw) of unit `index` past its consumed offset; its last sample tells its size."""
        offsets, sizes = self.setup.unit_offsets or {}, self.setup.unit_sizes or {}
        start = offsets.get((epoch, index), 0)
        if start and start >= sizes.get(index, start + 1):
            return  # consumed to its end: not opened again
        previous, size = None, start
        for raw in itertools.islice(self.read(units[index]), start, None):
            if previous is not None:
                yield epoch, index, -1, previous
            previous, size = raw, size + 1
        if previous is not None:
            yield epoch, index, size, previous

    def raw_stream(self, slot: int, slots: int) -> Iterator:
        """This slot's (epoch, unit, size or -1, raw sample), epoch after epoch (one epoch unless endless)."""
        units = list(self.units())
        offsets = self.setup.unit_offsets or {}
        first = min((e for e, _ in offsets), default=0)
        for epoch in itertools.count(first) if self.setup.endless else [first]:
            order = list(range(len(units)))
            if self.setup.shuffle:
                random.Random(self.setup.seed * 7919 + epoch).shuffle(order)
            if len(order) >= slots:
                share = order[slot::slots]
                mine = itertools.chain.from_iterable(self._unit(units, epoch, i) for i in share)
            else:
                share = order
                shared = itertools.chain.from_iterable(self._unit(units, epoch, i) for i in order)
                mine = itertools.islice(shared, slot, None, slots)
            count = 0
            for item in mine:
                count += 1
                yield item
            resumed = any(offsets.get((epoch, i)) for i in share)
            if count == 0 and self.setup.endless and not resumed:  # an endless stream of nothing would hang
                raise DataError(f"reader {slot} of {slots} found no samples in its shards of {self.describe_units()}")

    def describe_units(self) -> str:
        """The units in words for errors."""
        return f"{len(self.units())} unit(s)"

    def __iter__(self):
        slot, slots, worker, workers = self._slot()
        s = self.setup
        skip = (s.skip_samples or 0) + worker_consumed(s.consumed_batches, s.batch, worker, workers)
        numbered = itertools.islice(enumerate(self.raw_stream(slot, slots)), skip, None)
        if s.shuffle and self.shuffle_buffer > 1:
            numbered = _shuffled(numbered, self.shuffle_buffer, random.Random(s.seed * 1_000_003 + slot * 7 + skip))
        decoded, seen, last = 0, 0, None
        for serial, (epoch, unit, size, raw) in numbered:
            seen += 1
            try:
                x, label = self.decode(raw)
            except (OSError, ValueError, SyntaxError, KeyError, Image.DecompressionBombError) as exc:
                last = exc
                if self.strict:
                    raise DataError(f"{self.describe(raw)} cannot be decoded ({exc})") from None
                if decoded == 0 and self.skipped >= MAX_LEADING_FAILURES:  # nothing readable: do not spin forever
                    raise DataError(
                        f"reader {slot} of {slots} could not decode any of the first {self.skipped} samples of "
                        f"{self.describe_units()} (the last: {exc})"
                    ) from None
                self.skipped += 1
                log.warning(
                    "skipped corrupt %s (%s); %d skipped so far in this process", self.describe(raw), exc, self.skipped
                )
                continue
            decoded += 1
            if self.train:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed((s.seed * 1_000_003 + slot) * 1_000_033 + serial)
                    x = random_flip(x)
            yield (x, label, (epoch, unit, size)) if s.track else (x, label)
        if decoded == 0 and slots == 1 and not skip:  # one reader saw the whole stream and got nothing from it
            if seen == 0:
                raise DataError(
                    f"{self.describe_units()} holds no samples: its shards are empty, unreadable or not tar files"
                )
            raise DataError(f"none of the {seen} samples of {self.describe_units()} can be decoded (the last: {last})")


def _shuffled(items, size: int, rng: random.Random):
    """A shuffle buffer of `size` items (webdataset's scheme: emit a random buffered item per new one)."""
    buffer = []
    for item in items:
        buffer.append(item)
        if len(buffer) >= size:
            k = rng.randrange(len(buffer))
            buffer[k], buffer[-1] = buffer[-1], buffer[k]
            yield buffer.pop()
    rng.shuffle(buffer)
    yield from buffer


def is_streaming(dataset) -> bool:
    """True for a dataset read as a stream (no random access, maybe no length)."""
    return isinstance(dataset, torch.utils.data.IterableDataset)
