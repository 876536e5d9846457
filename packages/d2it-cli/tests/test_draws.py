"""Training randomness keyed by sample: a global batch's draws do not depend on how ranks and micro-batches split it."""

import pytest
import torch

from d2it.errors import D2itError
from d2it_cli.engine.draws import SampleDraws, accepts, label_drop

G = 8


def split_draws(world, batch, accum, draw):
    """`draw(draws, n)` for every micro-batch of one step on `world` ranks, stitched in global-batch order."""
    rows = {}
    for rank in range(world):
        draws = SampleDraws(seed=5, global_batch=G, device="cpu")  # each rank has its own object
        for micro in range(accum):
            start = (micro * world + rank) * batch
            draws.focus(3, start)
            rows[start] = draw(draws, batch)
    return torch.cat([rows[k] for k in sorted(rows)])


DRAWS = {
    "rand": lambda d, n: d.rand("u", n, 3),
    "randn": lambda d, n: d.randn("z", n, 2, 2),
    "randint": lambda d, n: d.randint("t", 1000, n),
    "through": lambda d, n: d.through(
        "x", lambda x, generator: x + torch.randn(x.shape, generator=generator), torch.ones(n, 2)
    ),
}


@pytest.mark.parametrize("kind", sorted(DRAWS))
def test_a_global_batch_gets_the_same_draws_however_it_is_split(kind):
    whole = split_draws(1, G, 1, DRAWS[kind])
    assert whole.shape[0] == G
    for world, batch, accum in [(2, 4, 1), (2, 2, 2), (4, 1, 2), (1, 2, 4)]:
        assert torch.equal(split_draws(world, batch, accum, DRAWS[kind]), whole), (world, batch, accum)


def test_draws_depend_on_step_purpose_and_seed_only():
    a = SampleDraws(seed=1, global_batch=G, device="cpu")
    a.focus(0, 0)
    first = a.randn("noise", G)
    assert torch.equal(first, a.randn("noise", G))  # cached within the step
    assert not torch.equal(first, a.randn("other", G))
    a.focus(1, 0)
    assert not torch.equal(first, a.randn("noise", G))
    b = SampleDraws(seed=2, global_batch=G, device="cpu")
    b.focus(0, 0)
    assert not torch.equal(first, b.randn("noise", G))
    a.focus(0, 6)
    with pytest.raises(D2itError, match="outside the global batch of 8"):
        a.randn("noise", 4)


class Dropper(torch.nn.Module):
    label_dropout = 0.5

    def forward(self, y, force_drop_ids=None):
        return y


def test_label_drop_is_keyed_only_where_the_model_takes_it():
    d = SampleDraws(seed=0, global_batch=G, device="cpu")
    d.focus(0, 0)
    model = Dropper()
    drop = label_drop(d, model, model.forward, G)["force_drop_ids"]
    assert drop.dtype == torch.long and set(drop.tolist()) <= {0, 1}
    assert torch.equal(drop, (d.rand("label-drop", G) < 0.5).long())
    assert label_drop(d, model, lambda y: y, G) == {}  # a third-party forward without the keyword
    model.label_dropout = 0.0
    assert label_drop(d, model, model.forward, G) == {}
    assert accepts(model.forward, "force_drop_ids") and not accepts(len, "force_drop_ids")
