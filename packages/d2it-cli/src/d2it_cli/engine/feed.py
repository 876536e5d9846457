"""What the trainer eats: micro-batches from a map-style or a streaming dataset, and the data position in samples.

Map-style datasets follow one global order per epoch, a seeded permutation independent of the
number of ranks: optimizer step s of an epoch uses samples [s*G, (s+1)*G) of it (G = the global
batch), and within a micro-batch rank r takes its own slice (`split.BatchSplit`: equal slices, or
G // W and G // W + 1 samples when W ranks cannot share G evenly). So a run resumed on another
number of ranks (same G) trains on exactly the same samples at every step. An epoch holds the
largest multiple of G that fits. Streaming datasets (`IterableDataset`) need no length: each rank reads
its share of the stream (see `d2it_cli.data.stream`), and the feed counts what the trainer consumed
of each unit (shard) so that a run resumed on another ranks x workers layout continues every unit
where it stopped. One DataLoader serves the whole run, so worker processes start once.
"""

import multiprocessing
import multiprocessing.util
import os
import random
import signal
import threading
import weakref
from collections import Counter

import numpy as np
import torch

from d2it import dist
from d2it.errors import ConfigError, DataError
from d2it_cli.data.stream import StreamSetup, is_streaming
from d2it_cli.engine.split import BatchSplit


def default_workers() -> int:
    """Data-loading processes per rank: usable CPUs shared by the local ranks, less one; at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return max(0, min(8, cpus // max(1, local) - 1))


def item_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one item's augmentation in one epoch."""
    return ((seed * 1_000_003 + epoch) * 1_000_033 + index) % (2**63 - 1)


class SeededItems(torch.utils.data.Dataset):
    """Wraps a dataset so that item (index, seed) is drawn with torch/numpy/python seeded by `seed`."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed = key
        np_state, py_state = np.random.get_state(), random.getstate()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            np.random.seed(seed % 2**32)
            random.seed(seed)
            try:
                return self.dataset[index]
            finally:
                np.random.set_state(np_state)
                random.setstate(py_state)


class GlobalOrder:
    """Each rank's micro-batches of (index, item seed) along the run's global, rank-independent sample order."""

    def __init__(self, size: int, split: BatchSplit, seed: int, rank: int = 0):
        self.size, self.split, self.seed, self.rank = size, split, seed, rank
        self.global_batch = split.global_batch
        self.epoch_size = (size // self.global_batch) * self.global_batch
        if self.epoch_size < 1:
            raise DataError(f"the dataset has {size} items, fewer than one global batch of {self.global_batch}")
        self._perm: tuple[int, list[int]] | None = None

    def permutation(self, epoch: int) -> list[int]:
        """The order of epoch `epoch`."""
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed((self.seed * 7919 + epoch) % 2**64)
            self._perm = (epoch, torch.randperm(self.size, generator=g).tolist())
        return self._perm[1]

    def step_start(self, position: int) -> int:
        """Where a step starting at sample `position` begins: there, or at the next epoch when a whole global batch
        no longer fits in this one (only after the global batch changed on resume)."""
        epoch, offset = divmod(position, self.epoch_size)
        return position if offset + self.global_batch <= self.epoch_size else (epoch + 1) * self.epoch_size

    def items(self, position: int, count: int) -> list[tuple[int, int]]:
        """`count` samples of the run's order from sample `position` (within one epoch)."""
        epoch, offset = divmod(position, self.epoch_size)
        return [(i, item_seed(self.seed, epoch, i)) for i in self.permutation(epoch)[offset : offset + count]]

    def plan(self, position: int):
        """This rank's micro-batches of every step from sample `position` on, endlessly."""
        while True:
            position = self.step_start(position)
            for micro in range(self.split.accum):
                yield self.items(position + self.split.offset(micro, self.rank), self.split.sizes[micro][self.rank])
            position += self.global_batch


class IgnoreSignals:
    """A DataLoader worker's start: ignore the signals the trainer handles (a cluster signals every process of a job;
    the trainer decides when to stop, and a worker ends with it: its loader's shutdown, or `end_workers_at_exit`)."""

    def __init__(self, signals=()):
        self.signals = tuple(int(s) for s in signals)

    def __call__(self, worker_id: int):
        for sig in self.signals:
            signal.signal(sig, signal.SIG_IGN)


_IGNORING_WORKERS = weakref.WeakSet()  # the worker processes of our loaders (they ignore the trainer's signals)


def end_workers_at_exit():
    """Kill the data-loader workers still alive that ignore the trainer's signals (a worker holds nothing to flush).

    multiprocessing's exit ends worker processes with SIGTERM and then waits for them; a loader still alive then
    (say, held by a traceback) would make it wait forever.
    """
    alive = [process for process in _IGNORING_WORKERS if process.is_alive()]
    if alive and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # torch's handler would report the kill as a worker failure
    for process in alive:
        process.kill()


# a finalizer that multiprocessing's own exit function runs before it terminates and joins the workers (an atexit
# hook may run after it: multiprocessing re-registers its exit function to run first)
multiprocessing.util.Finalize(None, end_workers_at_exit, exitpriority=100)


def _batches(loader):
    """`iter(loader)`, its workers killed at interpreter exit if nothing else ended them."""
    batches = iter(loader)
    _IGNORING_WORKERS.update(getattr(batches, "_workers", ()))  # torch keeps them there; none without workers
    return batches


class TrackedCollate:
    """Collates a stream's (image, label, (epoch, unit, size)) items into (batch, (B, 3) positions)."""

    def __init__(self, collate_fn=None):
        self.collate_fn = collate_fn or torch.utils.data.default_collate

    def __call__(self, items):
        return self.collate_fn([item[:-1] for item in items]), torch.tensor([item[-1] for item in items])


def merge_units(states: list[dict], n_units: int | None = None) -> dict:
    """Per-unit consumption of several ranks (`units`: [epoch, unit, count] rows, `unit_sizes`: [unit, size]) in one,
    without the epochs before the latest that are complete (all `n_units` units consumed to their known sizes)."""
    counts, sizes = Counter(), {}
    for state in states:
        counts.update({(int(e), int(u)): int(c) for e, u, c in state.get("units", [])})
        sizes.update({int(u): int(n) for u, n in state.get("unit_sizes", [])})
    epochs = sorted({e for e, _ in counts})
    units = range(n_units or 0)
    for epoch in epochs[:-1]:
        if n_units and all(counts.get((epoch, u), 0) >= sizes.get(u, float("inf")) for u in units):
            for u in units:
                counts.pop((epoch, u), None)
        else:
            break
    return {
        "units": [[e, u, c] for (e, u), c in sorted(counts.items())],
        "unit_sizes": [[u, n] for u, n in sorted(sizes.items())],
    }


class Feed:
    """Micro-batches for the trainer and the data position (`samples`: consumed by all ranks since the start)."""

    def __init__(self, dataset, *, split: BatchSplit, seed, rank, workers, collate_fn=None, pin=False, signals=()):
        self.dataset, self.split, self.seed, self.rank, self.world = dataset, split, seed, rank, split.world
        self.signals = tuple(signals)  # what the data-loader workers ignore (the trainer's preemption signals)
        self.batch, self.global_batch = split.max_batch, split.global_batch
        self.workers, self.collate_fn, self.pin = workers, collate_fn, pin
        self.streaming = is_streaming(dataset)
        self.samples = 0
        self.start: dict | None = None  # the data position to start from (a checkpoint's), None: the run's start
        self.unit_counts: Counter = Counter()  # a stream's {(epoch, unit): samples consumed by this rank}
        self.unit_sizes: dict[int, int] = {}
        self.origin: dict | None = None  # where this layout's readers started, when not at the run's start
        if self.streaming:
            if not split.is_even:
                raise ConfigError(
                    f"a streamed dataset needs micro-batches of one size, and a global batch of {self.global_batch} "
                    f"on {self.world} processes has none; pass --global-batch with a multiple of {self.world}"
                )
            self.order = None
            length = getattr(dataset, "length", None)
            self.epoch_size = (int(length) // self.global_batch) * self.global_batch if length else None
        else:
            self.order = GlobalOrder(len(dataset), split, seed, rank)
            self.epoch_size = self.order.epoch_size

    def steps_per_epoch(self) -> int | None:
        """Optimizer steps per epoch, None for a stream of unknown length."""
        return self.epoch_size // self.global_batch if self.epoch_size else None

    def require_epochs(self, what: str) -> int:
        """Steps per epoch, or a ConfigError naming the option that needs it."""
        steps = self.steps_per_epoch()
        if steps is None:
            raise ConfigError(f"{what} needs a dataset of known size; this stream has none, so give --steps")
        return max(1, steps)

    @property
    def epoch(self) -> float | None:
        """Epochs consumed (fractional), None for a stream of unknown length."""
        return self.samples / self.epoch_size if self.epoch_size else None

    def state_dict(self) -> dict:
        """The data position as it goes into a checkpoint (a collective for streams: every rank calls it)."""
        state = {"samples": self.samples, "world": self.world, "batch": self.batch, "workers": self.workers}
        if self.streaming:
            mine = {
                "units": [[e, u, c] for (e, u), c in self.unit_counts.items()],
                "unit_sizes": [[u, n] for u, n in self.unit_sizes.items()],
            }
            state.update(merge_units(dist.all_gather_object(mine), self._n_units()))
            if self.origin is not None:
                state["origin"] = self.origin
        return state

    def _n_units(self) -> int | None:
        units = getattr(self.dataset, "units", None)
        return len(units()) if callable(units) else None

    def _count(self, where: torch.Tensor):
        """Count the consumed samples of a stream's micro-batch by (epoch, unit); learn unit sizes."""
        for epoch, unit, size in where.tolist():
            self.unit_counts[(epoch, unit)] += 1
            if size > 0:
                self.unit_sizes[unit] = size

    def load_state_dict(self, state: dict):
        """Start from a checkpoint's data position (`batches` continues there)."""
        self.start = dict(state)
        self.samples = int(state["samples"])

    def batches(self):
        """Endless micro-batches from the loaded data position or the start."""
        state = self.start
        self.samples = int(state["samples"]) if state else 0
        step = self.batch * self.world
        # a private generator: worker seeds must not consume the global RNG that resume restores
        common = dict(
            num_workers=self.workers, collate_fn=self.collate_fn, pin_memory=self.pin, generator=torch.Generator()
        )
        if self.workers:
            common["worker_init_fn"] = IgnoreSignals(self.signals)
        if self.streaming:
            setup = StreamSetup(seed=self.seed, rank=self.rank, world=self.world, batch=self.batch, track=True)
            self._resume_stream(setup, state)
            self.dataset.configure(setup)
            common["collate_fn"] = TrackedCollate(self.collate_fn)
            loader = torch.utils.data.DataLoader(self.dataset, batch_size=self.batch, **common)
            for batch, where in _batches(loader):
                self._count(where)
                self.samples += step
                yield batch
            return
        loader = torch.utils.data.DataLoader(
            SeededItems(self.dataset), batch_sampler=self.order.plan(self.samples), **common
        )
        for i, batch in enumerate(_batches(loader)):  # position: each micro-step's samples, all ranks
            micro = i % self.split.accum
            if micro == 0:
                self.samples = self.order.step_start(self.samples)
            self.samples += self.split.micro_total(micro)
            yield batch

    def _resume_stream(self, setup: StreamSetup, state: dict | None):
        """Where each reader of a stream starts: exactly where it stopped (same layout) or at each unit's count."""
        self.unit_counts, self.unit_sizes, self.origin = Counter(), {}, None
        if not state:
            return
        units = merge_units([state], self._n_units()) if "units" in state else None
        if units is not None:
            self.unit_sizes = {u: n for u, n in units["unit_sizes"]}
            if self.rank == 0:  # the run's counts so far live on rank 0 once (the checkpoint sums the ranks)
                self.unit_counts = Counter({(e, u): c for e, u, c in units["units"]})
        layout = (state.get("world"), state.get("batch"), state.get("workers"))
        if layout == (self.world, self.batch, self.workers):
            # the readers replay their streams from where this layout's began: the run's start or `origin`
            self.origin = state.get("origin")
            origin = self.origin or {}
            setup.consumed_batches = (self.samples - int(origin.get("samples", 0))) // (self.batch * self.world)
            if "units" in origin:
                setup.unit_offsets = {(e, u): c for e, u, c in origin["units"]}
                setup.unit_sizes = {u: n for u, n in origin["unit_sizes"]}
            elif "skip_samples" in origin:
                setup.skip_samples = int(origin["skip_samples"])
        elif units is not None:  # another layout: every unit continues at what was consumed of it
            setup.unit_offsets = {(e, u): c for e, u, c in units["units"]}
            setup.unit_sizes = dict(self.unit_sizes)
            self.origin = {"samples": self.samples, **units}
        else:
            setup.skip_samples = self.samples // (self.world * max(1, self.workers))
            self.origin = {"samples": self.samples, "skip_samples": setup.skip_samples}
            if self.rank == 0:
                print(
                    "warning: this checkpoint predates per-shard stream positions, and it was written with "
                    f"{state.get('world')} rank(s) x {state.get('workers')} worker(s); each reader now skips an "
                    "even share of the samples consumed, so some samples may repeat or be skipped",
                    flush=True,
                )
