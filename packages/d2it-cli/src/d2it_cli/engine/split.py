"""How one optimizer step's global batch is cut into micro-batches over the ranks, evenly or not.

A step of global batch G on W ranks runs A micro-steps; micro-step m on rank r takes `sizes[m][r]`
samples at offset `offset(m, r)` of the global batch (slices ordered m*W + r, as the data order and
the per-sample draws expect). When W divides G every slice has the same size; otherwise the ranks
take G // W or G // W + 1 samples each and every micro-batch's loss is weighted by its share of
the global batch (`weight`), so a step's gradient is still the mean over the whole global batch.
"""

import math

import attrs

from d2it.errors import ConfigError


def batch_lr_factor(rule: str, old: int, new: int) -> float:
    """The learning-rate factor of a global batch changed from `old` to `new`: none 1, linear new/old, sqrt its root."""
    ratio = new / old
    return {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[rule]


@attrs.frozen
class BatchSplit:
    """The global batch of a step as `sizes[micro][rank]` samples."""

    sizes: tuple[tuple[int, ...], ...]

    @classmethod
    def even(cls, batch: int, accum: int, world: int) -> "BatchSplit":
        """`accum` micro-batches of `batch` samples on each of `world` ranks."""
        return cls(tuple(tuple([batch] * world) for _ in range(accum)))

    @classmethod
    def of(cls, global_batch: int, world: int, max_batch: int) -> "BatchSplit":
        """The global batch on `world` ranks with micro-batches of at most `max_batch` samples.

        Even when `world` divides it (the largest micro-batch dividing each rank's share); else uneven.
        """
        if global_batch % world == 0:
            share = global_batch // world
            micro = max(d for d in range(1, min(max_batch, share) + 1) if share % d == 0)
            return cls.even(micro, share // micro, world)
        if global_batch < world:
            raise ConfigError(f"a global batch of {global_batch} cannot give each of {world} processes a sample")
        shares = [global_batch // world + (1 if r < global_batch % world else 0) for r in range(world)]
        accum = math.ceil(max(shares) / max_batch)
        if min(shares) < accum:
            raise ConfigError(
                f"a global batch of {global_batch} on {world} processes in micro-batches of at most {max_batch} "
                "leaves some micro-batch empty; pass a larger --batch"
            )
        sizes = [[s // accum + (1 if m < s % accum else 0) for s in shares] for m in range(accum)]
        return cls(tuple(tuple(row) for row in sizes))

    @property
    def accum(self) -> int:
        """Micro-steps per optimizer step."""
        return len(self.sizes)

    @property
    def world(self) -> int:
        """Ranks."""
        return len(self.sizes[0])

    @property
    def global_batch(self) -> int:
        """Samples per optimizer step over all ranks."""
        return sum(map(sum, self.sizes))

    @property
    def max_batch(self) -> int:
        """The largest micro-batch."""
        return max(map(max, self.sizes))

    @property
    def is_even(self) -> bool:
        """Every micro-batch has the same size."""
        return len({s for row in self.sizes for s in row}) == 1

    def offset(self, micro: int, rank: int) -> int:
        """Offset in the global batch of micro-batch `micro` of rank `rank`."""
        before = sum(map(sum, self.sizes[:micro]))
        return before + sum(self.sizes[micro][:rank])

    def micro_total(self, micro: int) -> int:
        """Samples of micro-step `micro` over all ranks."""
        return sum(self.sizes[micro])

    def weight(self, micro: int, rank: int) -> float:
        """The weight of a micro-batch's mean loss: its share of the global batch times the ranks DDP averages over."""
        return self.sizes[micro][rank] * self.world / self.global_batch

    def describe(self) -> str:
        """`--batch 4 --grad-accum 2`, or the per-rank samples of an uneven split."""
        if self.is_even:
            return f"--batch {self.max_batch} --grad-accum {self.accum}"
        shares = [sum(row[r] for row in self.sizes) for r in range(self.world)]
        return (
            f"{' + '.join(map(str, shares))} samples per step on the {self.world} processes, in {self.accum} "
            "micro-batch(es) each (uneven: each micro-batch's loss is weighted by its samples, so a step is the "
            "mean over the global batch)"
        )


def plan_split(config, world: int, before: int | None = None) -> tuple[BatchSplit, float, list[str]]:
    """(split, learning-rate factor, notes) of a run's global batch on `world` ranks.

    `before`: the global batch of the checkpoint resumed (kept unless `config.global_batch` changes it, in which
    case the factor is `config.lr_scale`'s); the notes say what the options alone do not tell.
    """
    configured = BatchSplit.even(config.batch, config.grad_accum, world)
    if before is None and config.global_batch is None:
        return configured, 1.0, []
    wanted = config.global_batch or before
    split = BatchSplit.of(wanted, world, config.batch)
    factor = batch_lr_factor(config.lr_scale, before, wanted) if before else 1.0
    notes = []
    if before is not None and wanted != before:
        notes.append(
            f"global batch {before} -> {wanted} (--global-batch): learning rate x {factor:.4g} "
            f"(--lr-scale {config.lr_scale})"
        )
    if split != configured:
        what = "resuming a run" if before is not None else "a run"
        notes.append(f"{what} of global batch {wanted} on {world} process(es): {split.describe()}")
    return split, factor, notes
