"""The training scripts' data streams, sharded over processes and resumable: tensors held in memory (the tiny
world) and an ImageFolder directory (ImageNet's layout), with the official FeatInv augmentation for the latter.

Both follow one order, :class:`EpochOrder`: each epoch is a permutation of the items drawn from ``(seed, epoch)``
alone, cut into *global* batches of ``batch_size x processes`` items (the last, incomplete one is dropped, so a
global batch never straddles two epochs); process ``rank`` takes the ``rank``-th slice of ``batch_size`` items of
each global batch. So the processes of one step see disjoint items that together make the global batch, every
process knows the whole order, and a stream's position is two numbers, ``(epoch, offset)``, which the main process
saves in the checkpoint for all of them. The order does not depend on the number of processes, so a run may resume
under another one: it continues from the same item of the same epoch.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Iterator

import torch

from ..errors import ArgumentValueError


def derived_seed(*parts: Any) -> int:
    """A 63-bit seed drawn from ``parts`` (``derived_seed(seed, "epoch", 3)``): distinct parts give unrelated
    streams, unlike ``seed + k``, where seed 0's stream 1 is seed 1's stream 0."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class EpochOrder:
    """Which items each process reads in each step: shuffled epochs over ``n`` items, cut into global batches of
    ``batch_size * world`` items, of which process ``rank`` takes the ``rank``-th ``batch_size``.

    Args:
        n: items in the data set.
        batch_size: items per process and step.
        seed: the run's seed (the permutation of epoch ``e`` is drawn from ``(seed, e)`` only).
        rank: this process's index; world: the number of processes.

    Example:
        >>> order = EpochOrder(10, batch_size=2, seed=0, rank=1, world=2)
        >>> order.next()                  # this process's items of the first global batch, tensor([i, j])
        >>> order.state_dict()            # {'epoch': 0, 'offset': 4}
    """

    def __init__(self, n: int, *, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        if batch_size * world > n:
            raise ArgumentValueError(f"a global batch of {batch_size} x {world} process(es) = {batch_size * world} "
                                     f"items does not fit in the {n} items of the data; lower --batch-size or add "
                                     "data")
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.epoch, self.offset = 0, 0
        self._perm: tuple[int, torch.Tensor] | None = None

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world

    def permutation(self, epoch: int) -> torch.Tensor:
        """The item order of ``epoch`` (the same in every process)."""
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(derived_seed(self.seed, "epoch", epoch))
            self._perm = (epoch, torch.randperm(self.n, generator=g))
        return self._perm[1]

    def global_indices(self, epoch: int, offset: int) -> torch.Tensor:
        """The items of the global batch that starts at ``offset`` of ``epoch``: ``[batch_size * world]``."""
        return self.permutation(epoch)[offset:offset + self.global_batch]

    def next(self) -> torch.Tensor:
        """This process's items of the next step, ``[batch_size]``; moves the position on."""
        if self.offset + self.global_batch > self.n:  # the incomplete last global batch is dropped
            self.epoch, self.offset = self.epoch + 1, 0
        idx = self.global_indices(self.epoch, self.offset)
        self.offset += self.global_batch
        return idx[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]

    def keys(self) -> list[tuple[int, int]]:
        """Like :meth:`next`, as ``(epoch, item)`` pairs (what an augmentation is seeded with)."""
        idx = self.next()
        return [(self.epoch, int(i)) for i in idx]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "epoch" not in state:  # a checkpoint of the sampler before epochs (it kept a generator state)
            print("the checkpoint's data position predates epoch order; the data restarts at epoch 0", flush=True)
            state = {"epoch": 0, "offset": 0}
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])


class TensorStream:
    """Endless mini-batches from tensors held in memory, in :class:`EpochOrder`, resumable through
    ``state_dict``.

    Args:
        tensors: tensors sharing their first dimension (e.g. images ``uint8 [N, 3, H, W]`` and labels ``[N]``).
        batch_size: items per batch (per process).
        seed: seed of the order.
        rank, world: this process and the number of processes (each takes its own slice of every global batch).

    Example:
        >>> stream = TensorStream(images, labels, batch_size=8, seed=0, rank=acc.process_index,
        ...                       world=acc.num_processes)
        >>> x, y = next(iter(stream))
    """

    def __init__(self, *tensors: torch.Tensor, batch_size: int, seed: int = 0, rank: int = 0, world: int = 1):
        self.tensors = tensors
        self.n = tensors[0].shape[0]
        self.batch_size = batch_size
        self.order = EpochOrder(self.n, batch_size=batch_size, seed=seed, rank=rank, world=world)

    def __len__(self) -> int:
        return self.n

    def _take(self, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(t[idx.to(t.device)] for t in self.tensors)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        while True:
            yield self._take(self.order.next())

    def probe(self) -> tuple[torch.Tensor, ...]:
        """The first ``batch_size`` items of epoch 0, the same in every process (not a step: the position stays)."""
        return self._take(self.order.permutation(0)[:self.batch_size])

    def state_dict(self) -> dict[str, Any]:
        return self.order.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.order.load_state_dict(state)


class _FolderItems(torch.utils.data.Dataset):
    """An ImageFolder's images, read by ``(epoch, item)`` keys: with ``augment``, the official FeatInv training's
    ``RandomResizedCrop`` and random horizontal and vertical flips, drawn from ``(seed, epoch, item)`` alone (so
    any worker, and a resumed run, gives the same crop); without, a resize of the short side and a centre crop."""

    def __init__(self, samples: list[tuple[str, int]], *, image_size: int, augment: bool, seed: int):
        from torchvision import transforms

        self.samples, self.augment, self.seed = samples, augment, seed
        if augment:
            self.tf = transforms.Compose([transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip(),
                                          transforms.RandomVerticalFlip(), transforms.ToTensor()])
        else:
            self.tf = transforms.Compose([transforms.Resize(image_size), transforms.CenterCrop(image_size),
                                          transforms.ToTensor()])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        from torchvision.datasets.folder import pil_loader

        epoch, item = key
        path, label = self.samples[item]
        image = pil_loader(path)
        if not self.augment:
            return self.tf(image), label
        with torch.random.fork_rng(devices=[]):  # torchvision's transforms draw from the global RNG
            torch.manual_seed(derived_seed(self.seed, "augment", epoch, item))
            return self.tf(image), label


class ImageFolderStream:
    """Endless batches from an ImageFolder-style directory (ImageNet's layout): ``(x [B, 3, S, S] in [0, 1],
    labels [B])``, in :class:`EpochOrder` (each process its own slice), read by ``num_workers`` loader processes.

    The position is counted in batches handed out, not in batches the loader has read ahead, so
    ``state_dict`` is where a resumed run must continue.

    Args:
        path: the folder (one sub-folder per class).
        image_size: side ``S`` of the square images.
        batch_size: images per batch (per process).
        seed: seeds the order and the augmentation.
        rank, world: this process and the number of processes.
        augment: ``RandomResizedCrop(S)`` (scale 0.08-1, aspect 3/4-4/3) and random horizontal and vertical flips,
            as the official FeatInv training; without it, resize the short side to ``S`` and centre-crop.
        num_workers: loader processes (0: read in this process).
    """

    def __init__(self, path: str | Path, *, image_size: int, batch_size: int, seed: int = 0, rank: int = 0,
                 world: int = 1, augment: bool = True, num_workers: int = 4):
        from torchvision import datasets

        root = Path(path)
        if not root.is_dir():
            raise FileNotFoundError(f"--data {path!r} is neither 'tinyworld' nor an existing ImageFolder directory")
        samples = datasets.ImageFolder(str(root), loader=lambda p: None).samples
        self.items = _FolderItems(samples, image_size=image_size, augment=augment, seed=seed)
        self.order = EpochOrder(len(samples), batch_size=batch_size, seed=seed, rank=rank, world=world)
        self.batch_size, self.num_workers = batch_size, num_workers

    def __len__(self) -> int:
        return len(self.items)

    def _batches(self) -> Iterator[list[tuple[int, int]]]:
        ahead = EpochOrder(self.order.n, batch_size=self.order.batch_size, seed=self.order.seed,
                           rank=self.order.rank, world=self.order.world)
        ahead.load_state_dict(self.order.state_dict())
        while True:
            yield ahead.keys()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        loader = torch.utils.data.DataLoader(self.items, batch_sampler=self._batches(), num_workers=self.num_workers)
        for batch in loader:
            self.order.next()  # the loader reads ahead on a copy; this is the batch handed out
            yield batch

    def probe(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``batch_size`` images of epoch 0, the same in every process (not a step: the position stays)."""
        keys = [(0, int(i)) for i in self.order.permutation(0)[:self.batch_size]]
        images, labels = zip(*(self.items[k] for k in keys))
        return torch.stack(images), torch.tensor(labels)

    def state_dict(self) -> dict[str, Any]:
        return self.order.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.order.load_state_dict(state)
