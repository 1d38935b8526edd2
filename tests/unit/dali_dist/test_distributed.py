"""Replica fingerprints: equal weights agree, a single changed weight is caught."""

import torch
from torch import nn

from dali_dist.distributed import fingerprint, replicas_agree


class FakeAccelerator:
    """Two 'ranks': rank 1's fingerprint comes from a second set of modules."""

    num_processes = 2
    device = torch.device("cpu")

    def __init__(self, other):
        self.other = other

    def gather(self, local):
        theirs = torch.stack([fingerprint(m) for m in self.other.values()])
        return torch.cat([local, theirs[None]])


def test_fingerprint_detects_a_swapped_pair_of_weights():
    torch.manual_seed(0)
    mine = {"G": nn.Linear(4, 3), "D": nn.Linear(3, 1)}
    same = {k: nn.Linear(m.in_features, m.out_features) for k, m in mine.items()}
    for k in mine:
        same[k].load_state_dict(mine[k].state_dict())
    assert replicas_agree(FakeAccelerator(same), mine) == []
    with torch.no_grad():  # swapping two weights keeps the plain sum: the weighted sum catches it
        w = same["D"].weight
        w[0, 0], w[0, 1] = w[0, 1].clone(), w[0, 0].clone()
    assert replicas_agree(FakeAccelerator(same), mine) == ["D"]
